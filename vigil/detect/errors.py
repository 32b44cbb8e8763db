"""Errors of the detection engine."""

from __future__ import annotations

from vigil.errors import VigilError


class DetectError(VigilError):
    """A rule, a rule file or the field map cannot be loaded or compiled."""


class UnsupportedConstruct(DetectError):
    """A rule uses a Sigma construct the evaluator cannot compile; the message names it."""
