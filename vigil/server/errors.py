"""Errors of the server."""

from __future__ import annotations

from vigil.errors import VigilError


class ServerError(VigilError):
    """The server could not start or serve; the message says what to change."""


class PlaybookError(ServerError):
    """A playbook cannot be read or is not valid; the message names the field and the problem."""


class PlaceholderError(PlaybookError):
    """A playbook's parameter names an event field the alert's event does not have."""
