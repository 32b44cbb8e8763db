"""The server's indicators and allow-list, in one SQLite file under the server data directory.

One row per (source, type, value): importing a feed again updates what changed and leaves the
rest. Expired indicators stay until :meth:`IntelStore.expire` removes them, and never match
meanwhile (the index skips them). :meth:`IntelStore.load_index` builds the matcher the ingest
path uses; rebuild it after an import or an allow-list change.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vigil.intel.index import AllowList, IntelIndex
from vigil.intel.model import AllowEntry, Indicator, IndicatorType, detect_type, normalize

log = logging.getLogger(__name__)

FILE_NAME = "intel.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS indicators (
    source TEXT NOT NULL, type TEXT NOT NULL, value TEXT NOT NULL,
    confidence INTEGER NOT NULL, first_seen TEXT, last_seen TEXT, valid_until TEXT,
    tags TEXT NOT NULL, reference TEXT NOT NULL, port INTEGER, description TEXT NOT NULL,
    added TEXT NOT NULL, updated TEXT NOT NULL,
    PRIMARY KEY (source, type, value)
);
CREATE INDEX IF NOT EXISTS indicators_value ON indicators (value);
CREATE TABLE IF NOT EXISTS allowlist (
    type TEXT NOT NULL, value TEXT NOT NULL, reason TEXT NOT NULL, added TEXT NOT NULL,
    PRIMARY KEY (type, value)
);
CREATE TABLE IF NOT EXISTS subscriptions (
    source TEXT PRIMARY KEY, kind TEXT NOT NULL, url TEXT NOT NULL,
    every_seconds REAL NOT NULL, last_run REAL, last_result TEXT
);
"""
_FIELDS = (
    "source, type, value, confidence, first_seen, last_seen, valid_until, tags, reference, "
    "port, description"
)


def _when(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment else None


def _row(indicator: Indicator) -> tuple[Any, ...]:
    i = indicator
    return (
        i.source,
        i.type.value,
        i.value,
        i.confidence,
        _when(i.first_seen),
        _when(i.last_seen),
        _when(i.valid_until),
        json.dumps(list(i.tags)),
        i.reference,
        i.port,
        i.description,
    )


def _indicator(row: sqlite3.Row | tuple[Any, ...]) -> Indicator:
    def moment(text: str | None) -> datetime | None:
        return datetime.fromisoformat(text) if text else None

    return Indicator(
        type=IndicatorType(row[1]),
        value=row[2],
        source=row[0],
        confidence=row[3],
        first_seen=moment(row[4]),
        last_seen=moment(row[5]),
        valid_until=moment(row[6]),
        tags=tuple(json.loads(row[7])),
        reference=row[8],
        port=row[9],
        description=row[10],
    )


class IntelStore:
    """Indicators and allow-list entries of one server, safe to use from several threads."""

    def __init__(self, path: Path) -> None:
        """Open (and create if needed) the store at ``path``."""
        self.path = path
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    @classmethod
    def open(cls, data_dir: Path) -> IntelStore:
        """The store of a server whose data lives in ``data_dir``."""
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls(data_dir / FILE_NAME)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def add(self, indicators: Iterable[Indicator]) -> tuple[list[Indicator], list[Indicator], int]:
        """Insert new indicators and update changed ones, in one transaction.

        Returns:
            The indicators added, those updated (their row differed), and how many were
            already stored unchanged. A feed naming one value twice counts it once.
        """
        now = datetime.now(UTC).isoformat()
        added: list[Indicator] = []
        updated: list[Indicator] = []
        unchanged = 0
        unique = {i.key: i for i in indicators}
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for indicator in unique.values():
                    row = _row(indicator)
                    stored = self._db.execute(
                        f"SELECT {_FIELDS} FROM indicators WHERE source=? AND type=? AND value=?",
                        row[:3],
                    ).fetchone()
                    if stored is None:
                        self._db.execute(
                            f"INSERT INTO indicators ({_FIELDS}, added, updated) "
                            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                            (*row, now, now),
                        )
                        added.append(indicator)
                    elif tuple(stored) != row:
                        self._db.execute(
                            "UPDATE indicators SET confidence=?, first_seen=?, last_seen=?, "
                            "valid_until=?, tags=?, reference=?, port=?, description=?, "
                            "updated=? WHERE source=? AND type=? AND value=?",
                            (*row[3:], now, *row[:3]),
                        )
                        updated.append(indicator)
                    else:
                        unchanged += 1
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return added, updated, unchanged

    def expire(self, now: datetime | None = None) -> int:
        """Delete indicators whose ``valid_until`` has passed; returns how many."""
        moment = (now or datetime.now(UTC)).astimezone(UTC).isoformat()
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM indicators WHERE valid_until IS NOT NULL AND valid_until <= ?",
                (moment,),
            )
        log.info("expired %d indicators", cursor.rowcount)
        return cursor.rowcount

    def remove_source(self, source: str) -> int:
        """Delete every indicator of one feed (to drop a feed); returns how many."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM indicators WHERE source=?", (source,))
        return cursor.rowcount

    def indicators(
        self,
        kind: IndicatorType | str | None = None,
        source: str | None = None,
        value: str | None = None,
        limit: int | None = None,
    ) -> list[Indicator]:
        """Stored indicators, optionally of one type, one feed or one canonical value."""
        where, args = [], []
        for column, wanted in (("type", kind), ("source", source), ("value", value)):
            if wanted is not None:
                where.append(f"{column}=?")
                args.append(str(wanted))
        sql = f"SELECT {_FIELDS} FROM indicators"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY source, type, value"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [_indicator(r) for r in rows]

    def count(self) -> dict[str, int]:
        """How many indicators are stored, per type."""
        with self._lock:
            rows = self._db.execute("SELECT type, count(*) FROM indicators GROUP BY type")
            return {kind: n for kind, n in rows}

    def count_by_source(self) -> dict[str, int]:
        """How many indicators each feed holds."""
        with self._lock:
            rows = self._db.execute("SELECT source, count(*) FROM indicators GROUP BY source")
            return {source: n for source, n in rows}

    def allow(
        self, value: str, kind: IndicatorType | str | None = None, reason: str = ""
    ) -> AllowEntry:
        """Add a value never to alert on: a hash, address, network, domain (and subdomains)...

        Args:
            value: The value; its type is detected when ``kind`` is not given.
            kind: Its type, needed for file names and registry keys.
            reason: Why, for the next analyst.

        Raises:
            InvalidIndicator: The value is not valid for its (detected) type.
        """
        detected = kind or detect_type(value) or IndicatorType.FILENAME
        found, canonical = normalize(detected, value)
        entry = AllowEntry(found, canonical, reason)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO allowlist VALUES (?,?,?,?)",
                (found.value, canonical, reason, entry.added.isoformat()),
            )
        log.info("allow-listed %s %s: %s", found, canonical, reason)
        return entry

    def disallow(self, value: str, kind: IndicatorType | str | None = None) -> bool:
        """Remove an allow-list entry; returns whether there was one."""
        detected = kind or detect_type(value) or IndicatorType.FILENAME
        found, canonical = normalize(detected, value)
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM allowlist WHERE type=? AND value=?", (found.value, canonical)
            )
        return cursor.rowcount > 0

    def allow_list(self) -> list[AllowEntry]:
        """Every allow-list entry."""
        with self._lock:
            rows = self._db.execute("SELECT type, value, reason, added FROM allowlist").fetchall()
        return [
            AllowEntry(IndicatorType(t), v, r, datetime.fromisoformat(a)) for t, v, r, a in rows
        ]

    def subscribe(self, source: str, kind: str, url: str, every_seconds: float) -> None:
        """Refresh the feed at ``url`` every ``every_seconds``, stored under ``source``."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO subscriptions (source, kind, url, every_seconds)"
                " VALUES (?,?,?,?)",
                (source, kind, url, every_seconds),
            )

    def unsubscribe(self, source: str) -> bool:
        with self._lock:
            cursor = self._db.execute("DELETE FROM subscriptions WHERE source = ?", (source,))
        return cursor.rowcount == 1

    def subscriptions(self) -> list[dict[str, Any]]:
        """Every subscribed feed with when it last ran and what that gave."""
        with self._lock:
            rows = self._db.execute(
                "SELECT source, kind, url, every_seconds, last_run, last_result"
                " FROM subscriptions ORDER BY source"
            ).fetchall()
        names = ("source", "kind", "url", "every_seconds", "last_run", "last_result")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def record_run(self, source: str, when: float, result: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE subscriptions SET last_run = ?, last_result = ? WHERE source = ?",
                (when, result, source),
            )

    def load_index(self, now: datetime | None = None) -> IntelIndex:
        """The matcher over every stored, unexpired, not allow-listed indicator."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_FIELDS} FROM indicators").fetchall()
        index = IntelIndex((_indicator(r) for r in rows), AllowList(self.allow_list()), now)
        log.info("intel index loaded: %d of %d stored indicators", len(index), len(rows))
        return index
