"""Telemetry storage: deduplication per spool epoch, and databases made by older versions."""

from __future__ import annotations

from pathlib import Path

import duckdb

from vigil.hunt.sql import run_hunt
from vigil.store.telemetry import TelemetryStore


def event(seq: int, path: str) -> dict[str, object]:
    return {"@timestamp": "2026-12-01T10:00:00+02:00", "event.sequence": seq, "file.path": path}


def test_a_new_spool_epoch_starts_its_own_sequence(tmp_path: Path) -> None:
    store = TelemetryStore(tmp_path / "t.duckdb")
    store.commit_batch("default", "agent", "first", [event(1, "/a"), event(2, "/b")])
    fresh, committed = store.commit_batch("default", "agent", "second", [event(1, "/c")])
    assert [e["file.path"] for e in fresh] == ["/c"] and committed == 1
    rows = run_hunt(store, "default", 'SELECT "file.path" p, "@timestamp" t FROM events ORDER BY p')
    assert [r["p"] for r in rows["rows"]] == ["/a", "/b", "/c"]
    # The offset is kept as an instant: 10:00+02:00 is 08:00 UTC.
    assert rows["rows"][0]["t"] == "2026-12-01T08:00:00Z"


def test_tenants_see_only_their_own_events(tmp_path: Path) -> None:
    store = TelemetryStore(tmp_path / "t.duckdb")
    store.commit_batch("acme", "agent-a", "e", [event(1, "/acme")])
    store.commit_batch("globex", "agent-g", "e", [event(1, "/globex")])
    rows = run_hunt(store, "acme", 'SELECT "file.path" p FROM events')["rows"]
    assert rows == [{"p": "/acme"}]


def test_a_database_from_an_older_version_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    old = duckdb.connect(str(path))
    old.execute(
        'CREATE TABLE telemetry (tenant_id VARCHAR NOT NULL, "@timestamp" TIMESTAMPTZ, '
        '"event.sequence" BIGINT, "event.ingested" TIMESTAMPTZ DEFAULT current_timestamp, '
        "doc JSON)"
    )
    old.execute("INSERT INTO telemetry VALUES ('default', now(), 1, now(), '{}')")
    old.close()

    store = TelemetryStore(path)
    store.commit_batch("default", "agent", "e", [event(1, "/new")])
    rows = run_hunt(store, "default", 'SELECT "file.path" p FROM events ORDER BY p NULLS FIRST')
    assert [r["p"] for r in rows["rows"]] == [None, "/new"]


def test_the_hunting_guide_lists_every_column_of_the_events_view(tmp_path: Path) -> None:
    store = TelemetryStore(tmp_path / "t.duckdb")
    store.commit_batch("default", "agent", "e", [event(1, "/a")])
    columns = list(run_hunt(store, "default", "SELECT * FROM events")["rows"][0])
    guide = (Path(__file__).parents[2] / "docs" / "hunting.md").read_text()
    listed = guide[guide.index("The columns:") :].split(".\n\n", 1)[0]
    assert [name for name in columns if f"`{name}`" not in listed] == []
    assert len(columns) == listed.count("`") // 2
