"""Helpers for the guardrail tests: analysts with roles, and enrolled hosts with a process."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import RunningServer
from tests.server.test_agent_protocol import process_event
from vigil.agent import identity
from vigil.agent.transport import ServerLink
from vigil.cli.client import ApiClient


def analyst(server: RunningServer, name: str, role: str) -> ApiClient:
    """An API client holding a new token of that name and role (made by the admin)."""
    made = server.api.call("POST", "/tokens", {"name": name, "role": role})
    assert made["role"] == role
    return ApiClient(server.url, made["token"], str(server.ctx.authority.ca_path))


def enroll_host(server: RunningServer, folder: Path) -> tuple[identity.Identity, ServerLink]:
    """An enrolled agent (and its link) that has reported one process, entity id ``e1``."""
    enrolled = identity.enroll(folder, server.url, server.enroll_token())
    link = ServerLink(enrolled)
    batch = {"spool_epoch": "e", "events": [process_event(1, "sleep 1000", "/usr/bin/sleep")]}
    assert link.post("/events", batch).status_code == 200
    return enrolled, link
