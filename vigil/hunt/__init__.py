"""Hunting: analyst queries over the fleet's stored telemetry."""

from __future__ import annotations
