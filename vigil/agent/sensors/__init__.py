"""Sensors: one module per telemetry source, each registered by name when imported.

Every module of this package is imported here, so a new sensor needs no edit anywhere else.
"""

from __future__ import annotations

import importlib
import pkgutil

from vigil.agent.sensors.base import REGISTRY

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY"]
