"""Vigil: open-source managed detection and response."""

from __future__ import annotations

__version__ = "0.1.0"
