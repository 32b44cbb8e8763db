"""Sensors: one module per telemetry source, each registered by name on import."""

from __future__ import annotations

from vigil.agent.sensors import process_audit, process_poll  # noqa: F401  (they register)
from vigil.agent.sensors.base import REGISTRY

__all__ = ["REGISTRY"]
