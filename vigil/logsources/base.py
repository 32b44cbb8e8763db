"""The reader plugin interface: one reader per log format, found by sniffing a file's first bytes.

A reader turns one file into flat ECS events (dotted keys) that
:meth:`vigil.detect.RuleSet.match` takes as they are. Every event carries ``log.file.path``
and, when the record has a time, ``@timestamp`` in UTC (ISO 8601 with ``Z``). A field the record
has but leaves empty is kept as ``""``; a field the record lacks is absent.

Problems with single records are counted as warnings (plaso's extraction warnings) and the
reader goes on with the next record; a file that cannot be read at all raises
:class:`~vigil.logsources.errors.CorruptFile`, naming the file and what to do, and the caller
goes on with the next file.

Readers register themselves when their class is defined (dissect's habit)::

    class MyReader(Reader):
        name = "my-format"
        reads = "My product's log files"

        @classmethod
        def detect(cls, path: Path) -> bool: ...

        def read(self, path: Path) -> Iterator[dict[str, Any]]: ...
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar

from vigil.logsources.errors import LogSourceError, NoReader
from vigil.schema.ecs import iso

logger = logging.getLogger(__name__)

Event = dict[str, Any]

#: Bytes a reader's :meth:`Reader.detect` may look at.
SNIFF_BYTES = 4096

_READERS: dict[str, type[Reader]] = {}

# ISO 8601 with any number of fraction digits (Windows writes 7, Sysmon for Linux 9).
_STAMP = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[T ](?P<clock>\d{2}:\d{2}:\d{2})(?:\.(?P<fraction>\d+))?"
    r"\s*(?P<zone>Z|UTC|[+-]\d{2}:?\d{2})?$"
)


class Reader(ABC):
    """A reader of one log format; subclasses with a ``name`` register themselves.

    Attributes:
        name: The reader's registry name (``evtx``, ``auditd``...).
        reads: What files it reads, for ``--help`` and the docs.
        priority: Readers are asked in ascending priority; a specific format goes before a
            general one that would also accept it.
        warnings: Per-record problems met so far, by kind (plaso's extraction warnings).
        first_warning: The first of those problems in words, for a file that fails outright.
        notes: Problems with the whole file that did not stop the reading (a copy cut short).
        records: Records read so far (events yielded plus records skipped with a warning).
    """

    name: ClassVar[str] = ""
    reads: ClassVar[str] = ""
    priority: ClassVar[int] = 50

    def __init__(self) -> None:
        """Start with no records and no warnings."""
        self.warnings: Counter[str] = Counter()
        self.first_warning = ""
        self.notes: list[str] = []
        self.records = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            if cls.name in _READERS and _READERS[cls.name] is not cls:
                raise TypeError(f"two log-source readers are named {cls.name!r}; rename one")
            _READERS[cls.name] = cls

    @classmethod
    @abstractmethod
    def detect(cls, path: Path) -> bool:
        """Whether the file looks like this reader's format, from its first bytes only."""

    @abstractmethod
    def read(self, path: Path) -> Iterator[Event]:
        """Yield the file's records as flat ECS events.

        Raises:
            CorruptFile: The file cannot be read as this format at all.
        """

    def warn(self, path: Path, kind: str, detail: str, count: int = 1) -> None:
        """Count a problem with ``count`` records and go on (logged at DEBUG; callers summarise)."""
        self.warnings[kind] += count
        self.first_warning = self.first_warning or detail
        logger.debug("%s: %s: %s", path, kind, detail)

    def note(self, path: Path, text: str) -> None:
        """Keep a problem with the whole file that did not stop the reading (callers show it)."""
        self.notes.append(text)
        logger.debug("%s: %s", path, text)


def registered_readers() -> list[type[Reader]]:
    """Every registered reader class, in the order files are offered to them."""
    _load_builtin_readers()
    return sorted(_READERS.values(), key=lambda cls: (cls.priority, cls.name))


def reader_for(path: Path) -> Reader:
    """A fresh instance of the first reader whose :meth:`Reader.detect` accepts the file.

    Raises:
        NoReader: No reader recognises the file.
        LogSourceError: The file cannot be opened.
    """
    for cls in registered_readers():
        try:
            if cls.detect(path):
                return cls()
        except OSError as exc:
            raise LogSourceError(
                f"{path}: cannot be read ({exc}); check the path and permissions"
            ) from exc
    if path.stat().st_size == 0:
        raise NoReader(f"{path}: the file is empty; check that the copy is complete")
    names = ", ".join(cls.name for cls in registered_readers())
    raise NoReader(f"{path}: no reader recognises this file (readers: {names})")


def sniff(path: Path, size: int = SNIFF_BYTES) -> bytes:
    """The first ``size`` bytes of a file."""
    with path.open("rb") as handle:
        return handle.read(size)


def first_line(path: Path, limit: int = 1 << 20) -> str:
    """The first non-empty line of a text file, read up to ``limit`` bytes."""
    with path.open("rb") as handle:
        for raw in handle:
            line = raw[:limit].decode("utf-8", errors="replace").strip()
            if line:
                return line
            if handle.tell() > limit:
                break
    return ""


def utc_timestamp(text: str | None) -> str | None:
    """An ISO 8601 / Windows / syslog-style time as ECS ``@timestamp`` (UTC, ``Z``).

    The instant is kept: ``2022-05-11T20:10:20+02:00`` becomes ``2022-05-11T18:10:20.000000Z``.
    A time without a zone is taken as UTC (Windows ``SystemTime`` and Sysmon ``UtcTime`` are
    UTC). Fractions past microseconds are cut. ``None`` when the text is not such a time.
    """
    if not text:
        return None
    if len(text) == 27 and text[19] == "." and text[26] == "Z" and text[10] == "T":
        return text  # already ECS-shaped (EVTX SystemTime): skip the parse
    match = _STAMP.match(text.strip())
    if match is None:
        return None
    fraction = (match["fraction"] or "0")[:6].ljust(6, "0")
    try:
        moment = datetime.fromisoformat(f"{match['date']}T{match['clock']}.{fraction}")
    except ValueError:
        return None
    zone = match["zone"]
    if zone is None or zone in ("Z", "UTC"):
        return iso(moment.replace(tzinfo=UTC))
    sign = -1 if zone[0] == "-" else 1
    hours, minutes = int(zone[1:3]), int(zone[-2:])
    offset = timezone(sign * timedelta(hours=hours, minutes=minutes))
    return iso(moment.replace(tzinfo=offset))


def _load_builtin_readers() -> None:
    # Importing the modules registers their readers.
    from vigil.logsources import auditd, authlog, evtxlog, ndjson, sigmajson  # noqa: F401
