"""agent/respond."""

from __future__ import annotations
