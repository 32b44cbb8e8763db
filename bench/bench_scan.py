"""EVTX to normalised events: Vigil's reader against the bare ``evtx`` parse, same process.

Both loops read every ``.evtx`` under a folder (default: the shared EVTX-ATTACK-SAMPLES) a few
times; the bare loop only iterates ``PyEvtxParser.records_json()``, the reader loop also turns
each record's JSON into the flat ECS event (natively where ``_evtxflat`` was built). The ratio
reader/bare is the share of the parser's speed Vigil keeps (goal: at least 0.5).

    python bench/bench_scan.py [FOLDER] [--rounds N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from evtx import PyEvtxParser

from vigil.logsources import evtxlog
from vigil.logsources.evtxlog import EvtxReader

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "evtx-attack-samples"


def bare(files: list[Path]) -> int:
    records = 0
    for path in files:
        for _record in PyEvtxParser(str(path)).records_json():
            records += 1
    return records


def normalised(files: list[Path]) -> int:
    events = 0
    for path in files:
        for _event in EvtxReader().read(path):
            events += 1
    return events


def best_rate(run: object, files: list[Path], rounds: int) -> tuple[float, int]:
    assert callable(run)
    best = 0.0
    count = 0
    for _ in range(rounds):
        started = time.perf_counter()
        count = run(files)
        best = max(best, count / (time.perf_counter() - started))
    return best, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    files = sorted(args.folder.rglob("*.evtx"))
    bare_rate, records = best_rate(bare, files, args.rounds)
    vigil_rate, events = best_rate(normalised, files, args.rounds)
    print(f"files {len(files)}, records {records}, events {events}")
    print(f"bare evtx records_json   {bare_rate:10,.0f} records/s")
    route = "native" if evtxlog.flatten is not None else "pure Python"
    print(f"vigil EVTX reader        {vigil_rate:10,.0f} events/s ({route})")
    print(f"ratio                    {vigil_rate / bare_rate:10.2f}")


if __name__ == "__main__":
    main()
