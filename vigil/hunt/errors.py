"""Errors of hunts."""

from __future__ import annotations

from vigil.errors import VigilError


class HuntError(VigilError):
    """A hunt query was refused or failed; the message says why and what to write instead."""
