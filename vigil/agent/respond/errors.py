"""Errors of response actions."""

from __future__ import annotations

from typing import Any

from vigil.errors import VigilError


class ResponseError(VigilError):
    """A response action failed or was refused; the message says why and what to do.

    Attributes:
        result: What the action found out before it failed (e.g. isolation's reachability
            proof before a rollback); the agent reports it with the failure.
    """

    def __init__(self, message: str, result: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.result: dict[str, Any] = result or {}
