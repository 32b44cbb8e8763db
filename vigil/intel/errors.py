"""Errors of the threat-intelligence package."""

from __future__ import annotations

from vigil.errors import VigilError


class IntelError(VigilError):
    """A feed, an indicator or the indicator store could not be used; the message says why."""


class FeedError(IntelError):
    """A whole feed cannot be read (missing file, wrong format, server refused)."""


class InvalidIndicator(IntelError):
    """One value is not a valid indicator of the type it claims; feeds skip and count it."""


class UnsupportedPattern(IntelError):
    """A STIX pattern uses a construct the matcher cannot express; the message names it."""
