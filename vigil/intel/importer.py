"""Importing a feed into the indicator store, with counts the operator can check."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vigil.intel.errors import FeedError
from vigil.intel.feeds import REGISTRY, Skipped
from vigil.intel.model import Indicator
from vigil.intel.store import IntelStore

log = logging.getLogger(__name__)


@dataclass
class ImportReport:
    """What one import did.

    Attributes:
        source: The feed name the indicators are stored under.
        added: Indicators new to the store (the ones to retro-hunt).
        updated: Indicators already stored whose details changed.
        unchanged: How many were already stored as they are.
        skipped: Items that gave no indicator, each with its reason
            (``unsupported``, ``invalid`` or ``filtered``).
    """

    source: str
    added: list[Indicator] = field(default_factory=list)
    updated: list[Indicator] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def unsupported(self) -> list[Skipped]:
        """The items skipped because they use something the matcher cannot match."""
        return [s for s in self.skipped if s.reason == "unsupported"]

    def counts(self) -> dict[str, int]:
        """Added, updated, unchanged, and skipped per reason, as numbers."""
        reasons = Counter(s.reason for s in self.skipped)
        return {
            "added": len(self.added),
            "updated": len(self.updated),
            "unchanged": self.unchanged,
            "unsupported": reasons["unsupported"],
            "invalid": reasons["invalid"],
            "filtered": reasons["filtered"],
        }


def import_feed(
    store: IntelStore,
    path_or_url: str | Path,
    kind: str,
    source: str | None = None,
    **options: Any,
) -> ImportReport:
    """Read a feed and store its indicators.

    Args:
        store: Where the indicators go.
        path_or_url: The feed: a file, a directory (MISP feed) or a URL.
        kind: The reader: one of ``vigil.intel.feeds.REGISTRY`` (stix, taxii, misp, csv, list).
        source: The feed name to store the indicators under; by default the file or URL name.
        **options: Reader options (for ``taxii``: user, password, verify, added_after).

    Returns:
        The counts, the new indicators (to retro-hunt) and every skipped item with its reason.

    Raises:
        FeedError: The kind is unknown or the feed as a whole cannot be read.
    """
    reader_class = REGISTRY.get(kind)
    if reader_class is None:
        raise FeedError(f"unknown feed kind {kind!r}; use one of {', '.join(sorted(REGISTRY))}")
    result = reader_class(source, **options).read(path_or_url)
    invalid = [s for s in result.skipped if s.reason == "invalid"]
    if invalid and len(invalid) == len(result.skipped) and not result.indicators:
        # Every entry failed: far more likely the wrong kind than a feed of nothing but typos.
        raise FeedError(
            f"none of the {len(invalid)} entries of {result.source} reads as a {kind} feed "
            f"(the first: {_shown(invalid[0].detail)}); is the kind right? "
            f"Kinds: {', '.join(sorted(REGISTRY))}"
        )
    added, updated, unchanged = store.add(result.indicators)
    report = ImportReport(result.source, added, updated, unchanged, result.skipped)
    log.info("imported %s feed %s: %s", kind, result.source, report.counts())
    return report


def _shown(detail: str, limit: int = 120) -> str:
    # A binary file given as a list makes one "entry" of kilobytes; its start tells enough.
    return detail if len(detail) <= limit else f"{detail[:limit]}... ({len(detail):,} characters)"
