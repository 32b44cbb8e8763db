"""The agent's HTTPS client: mTLS with its enrolled certificate, CA pinned at enrollment."""

from __future__ import annotations

import logging
import ssl
from typing import Any

import httpx

from vigil.agent.identity import Identity

log = logging.getLogger(__name__)


class ServerLink:
    """Calls to the server's agent endpoints; raises httpx errors for the caller to retry."""

    def __init__(self, identity: Identity, timeout: float = 30.0) -> None:
        context = ssl.create_default_context(cafile=str(identity.ca_path))
        context.load_cert_chain(str(identity.cert_path), str(identity.key_path))
        self._client = httpx.Client(
            base_url=identity.server_url + "/api/v1/agent", verify=context, timeout=timeout
        )

    def close(self) -> None:
        self._client.close()

    def post(self, path: str, payload: dict[str, Any]) -> httpx.Response:
        return self._client.post(path, json=payload)

    def poll_tasks(self, wait: float) -> list[dict[str, Any]]:
        response = self._client.get("/tasks", params={"wait": wait}, timeout=wait + 15)
        response.raise_for_status()
        tasks: list[dict[str, Any]] = response.json()
        return tasks
