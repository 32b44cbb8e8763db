"""agent."""

from __future__ import annotations
