"""Errors of the server.

ServerError
 └── RequestRefused        a request the server will not carry out (answered with ``status``)
      ├── NotFound         404: no such object in the caller's tenant
      ├── Conflict         409: the object is not in a state that allows the request
      └── GuardrailRefused 403: a response guardrail (role, tenant policy, cap, approval) said no
"""

from __future__ import annotations

from typing import Any

from vigil.errors import VigilError


class ServerError(VigilError):
    """The server could not start or serve; the message says what to change."""


class RequestRefused(ServerError):
    """A request the server will not carry out; the message says why and what to do."""

    status = 400

    def details(self) -> dict[str, Any]:
        """What the HTTP answer carries besides ``detail``."""
        return {}


class NotFound(RequestRefused):
    status = 404


class Conflict(RequestRefused):
    status = 409


class GuardrailRefused(RequestRefused):
    """A response guardrail refused a task; ``guardrail`` names which one."""

    status = 403

    def __init__(self, guardrail: str, message: str) -> None:
        super().__init__(f"refused by guardrail {guardrail!r}: {message}")
        self.guardrail = guardrail

    def details(self) -> dict[str, Any]:
        return {"guardrail": self.guardrail}


class PlaybookError(ServerError):
    """A playbook cannot be read or is not valid; the message names the field and the problem."""


class PlaceholderError(PlaybookError):
    """A playbook's parameter names an event field the alert's event does not have."""
