"""The on-disk spool: every event is written here before it is sent.

A SQLite file in the agent's state dir holds events in arrival order; each row's id is the
event's ``event.sequence``. The sender reads from the oldest unacknowledged row and deletes rows
only once the server says it committed them, so an agent killed at any moment resends, and the
server drops what it already has. The spool has a cap: past it the oldest events are dropped and
counted, and the count goes to the server with every heartbeat.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

from vigil.schema import jsonfast

log = logging.getLogger(__name__)

DEFAULT_MAX_EVENTS = 2_000_000
# The spool's file in the agent's state folder.
FILE_NAME = "spool.sqlite"


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

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def _set_meta(self, key: str, value: str) -> str:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        return value

    def append(self, docs: list[dict[str, Any]]) -> None:
        """Write events durably in one transaction, dropping the oldest past the cap."""
        if not docs:
            return
        rows = [(jsonfast.dumps(doc).decode(),) for doc in docs]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO events (doc) VALUES (?)", rows)
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
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, doc FROM events ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        batch = []
        for seq, text in rows:
            doc = jsonfast.loads(text)
            doc.setdefault("event", {})["sequence"] = seq
            batch.append(doc)
        return batch

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
    events = []
    for seq, text in reversed(rows):
        doc = jsonfast.loads(text)
        doc.setdefault("event", {})["sequence"] = seq
        events.append(doc)
    return events
