"""Errors of the server."""

from __future__ import annotations

from vigil.errors import VigilError


class ServerError(VigilError):
    """The server could not start or serve; the message says what to change."""
