"""Response tasks: audited, signed, queued for the agent and tracked to their outcome."""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from typing import Any

from vigil.schema import signing
from vigil.server.auth import Analyst
from vigil.server.context import ServerContext

log = logging.getLogger(__name__)

DEFAULT_TTL = 24 * 3600.0


def queue_task(
    ctx: ServerContext,
    analyst: Analyst,
    agent_id: str,
    action: str,
    params: dict[str, Any],
    reason: str,
    ttl: float = DEFAULT_TTL,
) -> dict[str, Any]:
    """Write the audit record, sign the task and wake the agent's poll."""
    now = time.time()
    task_id = str(uuid.uuid4())
    ctx.state.audit(
        analyst.tenant_id,
        analyst.name,
        f"task.{action}",
        agent_id,
        {"task_id": task_id, "params": params, "reason": reason},
        "queued",
    )
    body = {
        "task_id": task_id,
        "tenant_id": analyst.tenant_id,
        "agent_id": agent_id,
        "action": action,
        "params": params,
        "nonce": secrets.token_hex(16),
        "issued_at": now,
        "expires_at": now + ttl,
    }
    text, signature = signing.sign(ctx.authority.task_key, body)
    ctx.state.add_task(
        {
            "id": task_id,
            "tenant_id": analyst.tenant_id,
            "agent_id": agent_id,
            "action": action,
            "params": params,
            "requested_by": analyst.name,
            "reason": reason,
            "created": now,
            "expires": now + ttl,
            "body": text,
            "signature": signature,
        }
    )
    ctx.doorbells.ring(agent_id)
    log.info("queued %s for agent %s as task %s (by %s)", action, agent_id, task_id, analyst.name)
    task = ctx.state.task(analyst.tenant_id, task_id)
    assert task is not None
    return task


def record_result(
    ctx: ServerContext,
    agent: dict[str, Any],
    task_id: str,
    status: str,
    result: dict[str, Any],
    message: str,
) -> dict[str, Any] | None:
    """Store what the agent reported for one of its tasks, and its effect on the host's state."""
    task = ctx.state.task_for_agent(agent["id"], task_id)
    if task is None:
        return None
    ctx.state.set_task_status(task_id, status, result, message)
    if status == "done" and task["action"] in ("isolate", "release"):
        # The agent says whether the host is isolated now (a dry run leaves it as it was).
        ctx.state.set_isolated(
            agent["id"], bool(result.get("isolated", task["action"] == "isolate"))
        )
    ctx.state.audit(
        agent["tenant_id"],
        f"agent:{agent['id']}",
        f"task.{task['action']}.result",
        agent["id"],
        {"task_id": task_id, "result": result, "message": message},
        status,
    )
    log.info(
        "task %s (%s) on %s: %s %s", task_id, task["action"], agent["hostname"], status, message
    )
    return ctx.state.task_for_agent(agent["id"], task_id)
