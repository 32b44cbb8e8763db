"""Errors raised on the endpoint."""

from __future__ import annotations

from vigil.errors import VigilError


class AgentError(VigilError):
    """A sensor, the spool or the transport failed; the message says what and what to do."""


class NotApplicable(AgentError):
    """A plugin cannot run on this host (wrong OS, no root, kernel feature missing).

    This is a fact about the host, not a fault: callers report it as the plugin's health and go
    on, and do not log it as an error.
    """


class TaskRejected(AgentError):
    """A task from the server failed its signature, expiry, replay or target check."""
