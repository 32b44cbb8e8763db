"""The agent's on-disk spool: order, acknowledgement, the cap and its drop counter."""

from __future__ import annotations

import datetime
import json
import sqlite3
from pathlib import Path

from vigil.agent.spool import Spool


def docs(*numbers: int) -> list[dict[str, int]]:
    return [{"n": n} for n in numbers]


def test_past_its_cap_the_spool_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_events=5)
    spool.append(docs(1, 2, 3))
    spool.ack(spool.peek(2)[-1]["event"]["sequence"])  # the server took 1 and 2
    spool.append(docs(4, 5, 6, 7))
    assert [d["n"] for d in spool.peek(10)] == [3, 4, 5, 6, 7]
    assert spool.stats() == {"queued": 5, "dropped": 0}

    spool.append(docs(8, 9))
    assert [d["n"] for d in spool.peek(10)] == [5, 6, 7, 8, 9]
    assert spool.stats() == {"queued": 5, "dropped": 2}
    spool.close()

    # What was kept, and the count of what was lost, survive a restart.
    again = Spool(tmp_path / "spool.db", max_events=5)
    assert [d["n"] for d in again.peek(10)] == [5, 6, 7, 8, 9]
    assert again.stats()["dropped"] == 2
    again.close()


def test_whatever_a_sensor_hands_over_is_spooled_as_json(tmp_path: Path) -> None:
    # Fast JSON for the common case, the standard library for what it refuses: a lone
    # surrogate (an undecodable byte kept by surrogateescape) is written as an escape.
    spool = Spool(tmp_path / "spool.db")
    moment = datetime.datetime(2026, 12, 3, 20, 0, tzinfo=datetime.UTC)
    spool.append(
        [
            {"file": {"path": "/tmp/caf\udce9"}, "n": 1},
            {"at": moment, "counts": {7: "seven"}, "n": 2},
        ]
    )
    first, second = spool.peek(10)
    assert first["file"]["path"] == "/tmp/caf\udce9"
    assert second["at"] == str(moment) and second["counts"] == {"7": "seven"}
    spool.close()


def test_each_spooled_row_carries_its_sequence_for_the_batch(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    spool.append(docs(1, 2))
    spool.ack(2)
    spool.append(docs(3))
    batch = spool.peek_json(10)
    assert batch is not None and batch.last_sequence == 3
    # The rows go into the batch as they are; each already says which sequence it is.
    assert [json.loads(text) for text in batch.texts] == [{"n": 3, "event": {"sequence": 3}}]
    spool.ack(3)
    assert spool.peek_json(10) is None
    spool.close()


def test_a_spool_from_before_rows_carried_their_sequence_is_still_sent(tmp_path: Path) -> None:
    # An agent upgraded with events still spooled: its old rows lack event.sequence in JSON.
    path = tmp_path / "spool.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, doc TEXT)")
    old.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    old.execute("INSERT INTO meta VALUES ('epoch', 'e1')")
    old.executemany("INSERT INTO events (doc) VALUES (?)", [('{"n": 1}',), ('{"n": 2}',)])
    old.commit()
    old.close()

    spool = Spool(path)
    spool.append(docs(3))
    batch = spool.peek_json(10)
    assert batch is not None and spool.epoch == "e1"
    assert [json.loads(text)["event"]["sequence"] for text in batch.texts] == [1, 2, 3]
    assert [d["n"] for d in spool.peek(10)] == [1, 2, 3]
    spool.close()
