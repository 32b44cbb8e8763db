"""Feed readers: one module per format, each registered by its name (the import ``kind``).

Every module of this package is imported here, so a new reader needs no edit anywhere else.
"""

from __future__ import annotations

import importlib
import pkgutil

from vigil.intel.feeds.base import REGISTRY, FeedReader, FeedResult, Skipped

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "FeedReader", "FeedResult", "Skipped"]
