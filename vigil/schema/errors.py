"""Errors of the event model."""

from __future__ import annotations

from vigil.errors import VigilError


class SchemaError(VigilError):
    """An event or a batch does not fit the event model; the message names the field."""
