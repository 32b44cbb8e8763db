"""Checking and running tasks from the server.

A task is acted on only when its Ed25519 signature verifies against the key pinned at
enrollment, it names this agent, it has not expired and its nonce was never seen before. The
nonces of accepted tasks are kept on disk until they expire, so a replay after a restart is
refused too.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from vigil.agent.errors import TaskRejected
from vigil.agent.respond.base import REGISTRY, ActionContext
from vigil.agent.respond.errors import ResponseError
from vigil.schema import signing
from vigil.schema.errors import SchemaError
from vigil.schema.wire import TaskBody

log = logging.getLogger(__name__)


class TaskChecker:
    """Verifies task envelopes for one agent and remembers the nonces it accepted."""

    def __init__(self, agent_id: str, public_key_pem: str, nonce_file: Path) -> None:
        self.agent_id = agent_id
        self.public_key_pem = public_key_pem
        self.nonce_file = nonce_file
        self._lock = threading.Lock()
        self._nonces: dict[str, float] = (
            json.loads(nonce_file.read_text()) if nonce_file.exists() else {}
        )

    def check(self, body_text: str, signature: str) -> TaskBody:
        """Return the task body, or raise TaskRejected saying which check failed."""
        try:
            body = TaskBody.model_validate(
                signing.verify(self.public_key_pem, body_text, signature)
            )
        except (SchemaError, ValueError) as exc:
            raise TaskRejected(f"refused a task: {exc}") from exc
        if body.agent_id != self.agent_id:
            raise TaskRejected(
                f"refused task {body.task_id}: it is meant for agent {body.agent_id}"
            )
        now = time.time()
        if body.expires_at < now:
            raise TaskRejected(f"refused task {body.task_id}: it expired")
        with self._lock:
            if body.nonce in self._nonces:
                raise TaskRejected(f"refused task {body.task_id}: its nonce was already used")
            self._nonces = {n: exp for n, exp in self._nonces.items() if exp >= now}
            self._nonces[body.nonce] = body.expires_at
            self.nonce_file.write_text(json.dumps(self._nonces))
        return body


def run_action(body: TaskBody, context: ActionContext) -> tuple[str, dict[str, Any], str]:
    """Run the action a task names; every failure becomes a status and a message, never a crash."""
    action_cls = REGISTRY.get(body.action)
    if action_cls is None:
        return "failed", {}, f"this agent has no action {body.action!r}"
    try:
        params = dict(body.params)
        if action_cls.uploads_evidence:
            # The custody record names the task; the agent, not the analyst, says which.
            params["task_id"] = body.task_id
        result = action_cls(context).run(params)
    except ResponseError as exc:
        log.warning("task %s (%s) failed: %s", body.task_id, body.action, exc)
        return "failed", exc.result, str(exc)
    except Exception as exc:  # the boundary: report to the server, keep the agent alive
        log.warning("task %s (%s) failed: %s", body.task_id, body.action, exc)
        log.debug("task %s traceback", body.task_id, exc_info=True)
        return "failed", {}, str(exc)
    return "done", result, ""
