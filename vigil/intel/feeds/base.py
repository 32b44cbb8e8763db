"""The feed reader interface and its registry.

A feed reader turns one feed (a file, a directory or a URL) into indicators. Each declares its
name (the ``kind`` an import names), the formats it reads and a version; subclasses register
themselves by name when they are defined. Items a reader cannot use are not errors: each becomes
a :class:`Skipped` record with the reason, and the read goes on.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import httpx

from vigil.intel.errors import FeedError, InvalidIndicator
from vigil.intel.model import Indicator, IndicatorType, normalize

log = logging.getLogger(__name__)

REGISTRY: dict[str, type[FeedReader]] = {}

# Seconds to wait for a remote feed; feeds are fetched by an operator or a scheduled job.
FETCH_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Skipped:
    """An item of a feed that gave no indicator.

    Attributes:
        item: What was skipped, as the feed wrote it (a pattern, a CSV line, an attribute).
        reason: Why: ``unsupported`` (a construct we cannot match), ``invalid`` (a value that
            is not what it claims) or ``filtered`` (the feed says not to alert on it).
        detail: The explanation for the operator.
    """

    item: str
    reason: str
    detail: str


@dataclass
class FeedResult:
    """What one read of a feed gave: indicators, and every item skipped with its reason."""

    source: str
    indicators: list[Indicator] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def add(self, kind: IndicatorType | str, value: str, item: str, **context: Any) -> None:
        """Normalize one value and add it as an indicator, or record it as invalid.

        Args:
            kind: The indicator type the feed states.
            value: The value as written in the feed.
            item: The feed item it came from, named in the skip record if invalid.
            **context: Further :class:`Indicator` fields (confidence, tags, reference...).
        """
        try:
            found, canonical = normalize(kind, value)
        except InvalidIndicator as exc:
            self.skip(item, "invalid", str(exc))
            return
        self.indicators.append(Indicator(found, canonical, self.source, **context))

    def skip(self, item: str, reason: str, detail: str) -> None:
        """Record an item that gave no indicator."""
        log.debug("feed %s: skipped %s (%s): %s", self.source, item[:200], reason, detail)
        self.skipped.append(Skipped(item[:1000], reason, detail))


class FeedReader(abc.ABC):
    """Base class of every feed reader; subclasses set the class attributes and ``read``."""

    name: ClassVar[str]
    formats: ClassVar[str]
    version: ClassVar[str] = "1"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not getattr(cls, "__abstractmethods__", None):
            REGISTRY[cls.name] = cls

    def __init__(self, source: str | None = None) -> None:
        """Create a reader.

        Args:
            source: The feed name stored with each indicator; by default the file or URL name.
        """
        self.source = source

    @abc.abstractmethod
    def read(self, location: str | Path) -> FeedResult:
        """Read every indicator of a feed.

        Args:
            location: A local path or an ``http(s)://`` URL, as the reader documents.

        Raises:
            FeedError: The feed as a whole cannot be read.
        """

    def source_name(self, location: str | Path) -> str:
        """The feed name for indicators: the one given, else the last part of the location."""
        if self.source:
            return self.source
        text = str(location).rstrip("/")
        return text.rsplit("/", 1)[-1] or text


def is_url(location: str | Path) -> bool:
    """Whether a location is a remote ``http(s)`` URL rather than a path."""
    return isinstance(location, str) and location.startswith(("http://", "https://"))


def fetch_text(location: str | Path) -> str:
    """The text of a local file or of an ``http(s)`` URL.

    Raises:
        FeedError: The file cannot be read or the server does not answer 200.
    """
    if is_url(location):
        log.info("fetching feed %s", location)
        try:
            response = httpx.get(str(location), timeout=FETCH_TIMEOUT, follow_redirects=True)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise FeedError(f"cannot fetch feed {location}: {exc}; check the URL") from exc
        return response.text
    try:
        return Path(location).read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise FeedError(f"cannot read feed file {location}: {exc.strerror}") from exc


def parse_time(value: Any) -> datetime | None:
    """A feed's timestamp as an aware UTC datetime: ISO 8601, ``Y-m-d H:M:S``, a date or epoch.

    Returns None for empty or unreadable values (a feed's dates are context, not essential).
    """
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, int | float) or (isinstance(value, str) and value.isdigit()):
        moment = datetime.fromtimestamp(int(value), UTC)
    else:
        try:
            moment = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
