"""Errors of response actions."""

from __future__ import annotations

from vigil.errors import VigilError


class ResponseError(VigilError):
    """A response action failed or was refused; the message says why and what to do."""
