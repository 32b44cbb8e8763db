"""Telemetry in DuckDB: every event as columns named by their ECS dotted names plus its document.

Events of all tenants share one table, ``telemetry``; hunts never see it. A hunt runs on its own
cursor where ``events`` is a view of the caller's tenant only, and the query is parsed first so
that it can read nothing else (see ``vigil.hunt.sql``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from vigil.schema.ecs import EVENT_COLUMNS, unflatten

log = logging.getLogger(__name__)

TABLE = "telemetry"


def quote(name: str) -> str:
    """Quote an identifier for DuckDB."""
    return '"' + name.replace('"', '""') + '"'


class TelemetryStore:
    """Append-only event storage with per-agent deduplication by spool sequence."""

    def __init__(self, path: Path) -> None:
        # External access is off and locked: hunts run analyst SQL against this database, and
        # must not read or write files on the server.
        self._db = duckdb.connect(
            str(path), config={"enable_external_access": False, "lock_configuration": True}
        )
        self._lock = threading.Lock()
        columns = ", ".join(f"{quote(name)} {kind}" for name, kind in EVENT_COLUMNS)
        self._db.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (tenant_id VARCHAR NOT NULL, "
            f'{columns}, "event.sequence" BIGINT, '
            '"event.ingested" TIMESTAMPTZ DEFAULT current_timestamp, doc JSON)'
        )
        self._add_missing_columns()
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS spool_positions (agent_id VARCHAR, epoch VARCHAR, "
            "sequence BIGINT, PRIMARY KEY (agent_id, epoch))"
        )
        # One statement per batch: each column goes in as a list and is unnested, which DuckDB
        # runs as one vectorised insert (row-by-row executemany is two orders slower).
        typed = [
            ("tenant_id", "VARCHAR"),
            *EVENT_COLUMNS,
            ("event.sequence", "BIGINT"),
            ("doc", "JSON"),
        ]
        self._insert_sql = (
            f"INSERT INTO {TABLE} ({', '.join(quote(n) for n, _ in typed)}) SELECT "
            + ", ".join(f"unnest(?::{kind}[])" for _, kind in typed)
        )

    def _add_missing_columns(self) -> None:
        """Columns the event model gained since this database was made are added, empty."""
        existing = {
            row[0]
            for row in self._db.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ?",
                (TABLE,),
            ).fetchall()
        }
        for name, kind in EVENT_COLUMNS:
            if name not in existing:
                log.info("telemetry: adding column %s", name)
                self._db.execute(f"ALTER TABLE {TABLE} ADD COLUMN {quote(name)} {kind}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def commit_batch(
        self, tenant_id: str, agent_id: str, epoch: str, events: Sequence[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], int]:
        """Store the events not yet committed for (agent, epoch) in one transaction.

        Returns the newly stored events and the highest sequence now committed.
        """
        with self._lock:
            cur = self._db.cursor()
            try:
                cur.execute("BEGIN")
                row = cur.execute(
                    "SELECT sequence FROM spool_positions WHERE agent_id = ? AND epoch = ?",
                    (agent_id, epoch),
                ).fetchone()
                committed = int(row[0]) if row else 0
                fresh = [e for e in events if e["event.sequence"] > committed]
                if fresh:
                    cur.execute(self._insert_sql, self._columns(tenant_id, fresh))
                    committed = fresh[-1]["event.sequence"]
                    cur.execute(
                        "INSERT OR REPLACE INTO spool_positions VALUES (?, ?, ?)",
                        (agent_id, epoch, committed),
                    )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            finally:
                cur.close()
        return fresh, committed

    @staticmethod
    def _columns(tenant_id: str, events: Sequence[dict[str, Any]]) -> list[list[Any]]:
        columns: list[list[Any]] = [[tenant_id] * len(events)]
        columns += [[e.get(name) for e in events] for name, _ in EVENT_COLUMNS]
        columns.append([e["event.sequence"] for e in events])
        columns.append([json.dumps(unflatten(e), default=str) for e in events])
        return columns

    @contextmanager
    def tenant_cursor(self, tenant_id: str) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor on which ``events`` is the view of one tenant's telemetry."""
        cur = self._db.cursor()
        try:
            literal = tenant_id.replace("'", "''")
            cur.execute(
                "CREATE OR REPLACE TEMP VIEW events AS SELECT * EXCLUDE (tenant_id) "
                f"FROM main.{TABLE} WHERE tenant_id = '{literal}'"
            )
            yield cur
        finally:
            cur.close()

    def process_instances(self, tenant_id: str, entity_id: str) -> list[dict[str, Any]]:
        """Documents of the exec events of one process instance, oldest first."""
        with self.tenant_cursor(tenant_id) as cur:
            rows = cur.execute(
                'SELECT doc FROM events WHERE "process.entity_id" = ? '
                'AND list_contains("event.type", \'start\') ORDER BY "@timestamp"',
                (entity_id,),
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def latest_pid(self, tenant_id: str, host_id: str, entity_id: str) -> int | None:
        """The pid of a process instance on a host, from its telemetry."""
        with self.tenant_cursor(tenant_id) as cur:
            row = cur.execute(
                'SELECT "process.pid" FROM events WHERE "process.entity_id" = ? '
                'AND "host.id" = ? AND "process.pid" IS NOT NULL LIMIT 1',
                (entity_id, host_id),
            ).fetchone()
        return int(row[0]) if row else None
