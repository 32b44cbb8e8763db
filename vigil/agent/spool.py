"""The on-disk spool: every event is written here before it is sent.

A SQLite file in the agent's state dir holds events in arrival order; each row's id is the
event's ``event.sequence``, written into the row's JSON as it is spooled, so the sender can put
rows into a batch as they are, without decoding and encoding each event again. The sender reads
from the oldest unacknowledged row and deletes rows only once the server says it committed them,
so an agent killed at any moment resends, and the server drops what it already has. The spool
has a cap: past it the oldest events are dropped and counted, and the count goes to the server
with every heartbeat.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vigil.schema import jsonfast

log = logging.getLogger(__name__)

DEFAULT_MAX_EVENTS = 2_000_000
# The spool's file in the agent's state folder.
FILE_NAME = "spool.sqlite"
# Spools written before rows carried their sequence in their JSON are format 1.
FORMAT = "2"


@dataclass(frozen=True)
class SpooledBatch:
    """The oldest unacknowledged events as JSON texts, each with its ``event.sequence``."""

    texts: list[str]
    last_sequence: int


class Spool:
    """A durable FIFO of events with sequence numbers, an epoch and a drop counter."""

    def __init__(self, path: Path, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        self.max_events = max_events
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, doc TEXT)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self._lock = threading.Lock()
        self.epoch = self._meta("epoch") or self._set_meta("epoch", uuid.uuid4().hex)
        self._unsequenced_upto = self._upgrade()

    def _upgrade(self) -> int:
        """Up to which sequence rows lack ``event.sequence`` in their JSON (a format 1 spool)."""
        if self._meta("format") != FORMAT:
            newest = self._db.execute("SELECT max(seq) FROM events").fetchone()[0]
            self._set_meta("unsequenced_upto", str(newest or 0))
            self._set_meta("format", FORMAT)
        return int(self._meta("unsequenced_upto") or 0)

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def _set_meta(self, key: str, value: str) -> str:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        return value

    def append(self, docs: list[dict[str, Any]]) -> list[str]:
        """Write events durably in one transaction, dropping the oldest past the cap.

        Each event gets its ``event.sequence`` (the caller's dict is updated too).

        Returns:
            The events' JSON as written.
        """
        if not docs:
            return []
        with self._lock:
            self._db.execute("BEGIN")
            last = self._last_sequence()
            rows = []
            for seq, doc in enumerate(docs, start=last + 1):
                doc.setdefault("event", {})["sequence"] = seq
                rows.append((seq, jsonfast.dumps(doc).decode()))
            self._db.executemany("INSERT INTO events (seq, doc) VALUES (?, ?)", rows)
            over = self._span() - self.max_events
            if over > 0:
                over = self._count() - self.max_events  # the span was only an upper bound
            if over > 0:
                self._db.execute(
                    "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)",
                    (over,),
                )
                dropped = int(self._meta("dropped") or 0) + over
                self._set_meta("dropped", str(dropped))
                log.warning(
                    "spool is full (%d events): dropped the %d oldest", self.max_events, over
                )
            self._db.execute("COMMIT")
        return [text for _seq, text in rows]

    def _last_sequence(self) -> int:
        # AUTOINCREMENT keeps the highest sequence ever used, even once its row is deleted, so
        # a sequence is never given twice.
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return int(row[0]) if row else 0

    def _count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM events").fetchone()[0])

    def _span(self) -> int:
        """At least the number of rows, read off the two ends of the key instead of counting
        every row (count(*) walks the whole table: a cost per write that grows with the backlog
        while the server is away)."""
        low, high = self._db.execute("SELECT min(seq), max(seq) FROM events").fetchone()
        return 0 if low is None else int(high) - int(low) + 1

    def peek(self, limit: int) -> list[dict[str, Any]]:
        """The oldest unacknowledged events, each with its ``event.sequence`` set."""
        batch = self.peek_json(limit)
        return [] if batch is None else [jsonfast.loads(text) for text in batch.texts]

    def peek_json(self, limit: int) -> SpooledBatch | None:
        """The oldest unacknowledged events as JSON texts, or None when nothing waits."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, doc FROM events ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        if not rows:
            return None
        texts = [
            _with_sequence(text, seq) if seq <= self._unsequenced_upto else text
            for seq, text in rows
        ]
        return SpooledBatch(texts, rows[-1][0])

    def ack(self, sequence: int) -> None:
        """Forget every event up to ``sequence``: the server has committed them."""
        with self._lock:
            self._db.execute("DELETE FROM events WHERE seq <= ?", (sequence,))

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"queued": self._count(), "dropped": int(self._meta("dropped") or 0)}

    def close(self) -> None:
        with self._lock:
            self._db.close()


def newest_unsent(path: Path, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` events still in the spool at ``path``, oldest first, read-only.

    These are the events the server has not acknowledged yet; acknowledged ones are deleted.
    Opens its own read-only connection, so it may run beside the agent's writer.

    Raises:
        sqlite3.Error: the spool cannot be read (missing, locked or damaged).
    """
    if not path.exists():
        raise sqlite3.OperationalError(f"no spool at {path}")
    db = sqlite3.connect(path.as_uri() + "?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT seq, doc FROM events ORDER BY seq DESC LIMIT ?", (limit,)
        ).fetchall()
    finally:
        db.close()
    return [_decoded(text, seq) for seq, text in reversed(rows)]


def _decoded(text: str, seq: int) -> dict[str, Any]:
    """A row's event with its ``event.sequence`` (a format 1 row's JSON lacks it)."""
    doc: dict[str, Any] = jsonfast.loads(text)
    doc.setdefault("event", {})["sequence"] = seq
    return doc


def _with_sequence(text: str, seq: int) -> str:
    """A format 1 row's JSON with its ``event.sequence`` added."""
    return jsonfast.dumps(_decoded(text, seq)).decode()
