"""Threat intelligence: indicators from feeds, matched against every event and past history.

Feeds (STIX 2.x bundles, TAXII 2.1 collections, MISP feeds, CSV and plain lists) are read by the
plugins of :mod:`vigil.intel.feeds` into :class:`Indicator` objects, stored in an
:class:`IntelStore`, and matched by an :class:`IntelIndex`. New indicators are also looked for
in stored telemetry with :func:`retro_hunt`. See docs/intelligence.md.
"""

from __future__ import annotations

from vigil.intel.alerts import intel_alert
from vigil.intel.errors import FeedError, IntelError, InvalidIndicator
from vigil.intel.importer import ImportReport, import_feed
from vigil.intel.index import AllowList, IntelHit, IntelIndex
from vigil.intel.model import AllowEntry, Indicator, IndicatorType, normalize
from vigil.intel.retro import RetroHunt, retro_hunt
from vigil.intel.store import IntelStore

__all__ = [
    "AllowEntry",
    "AllowList",
    "FeedError",
    "ImportReport",
    "Indicator",
    "IndicatorType",
    "IntelError",
    "IntelHit",
    "IntelIndex",
    "IntelStore",
    "InvalidIndicator",
    "RetroHunt",
    "import_feed",
    "intel_alert",
    "normalize",
    "retro_hunt",
]
