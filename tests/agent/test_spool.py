"""The agent's on-disk spool: order, acknowledgement, the cap and its drop counter."""

from __future__ import annotations

import datetime
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
