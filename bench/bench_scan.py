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


def best_rates(files: list[Path], rounds: int) -> tuple[float, float, int, int]:
    """The best rate of each loop; the loops take turns, so a slow spell of the machine falls on
    both rather than on one."""
    best_bare = best_vigil = 0.0
    records = events = 0
    for _ in range(rounds):
        started = time.perf_counter()
        records = bare(files)
        best_bare = max(best_bare, records / (time.perf_counter() - started))
        started = time.perf_counter()
        events = normalised(files)
        best_vigil = max(best_vigil, events / (time.perf_counter() - started))
    return best_bare, best_vigil, records, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    files = sorted(args.folder.rglob("*.evtx"))
    bare_rate, vigil_rate, records, events = best_rates(files, args.rounds)
    print(f"files {len(files)}, records {records}, events {events}")
    print(f"bare evtx records_json   {bare_rate:10,.0f} records/s")
    route = "native" if evtxlog.flatten is not None else "pure Python"
    print(f"vigil EVTX reader        {vigil_rate:10,.0f} events/s ({route})")
    print(f"ratio                    {vigil_rate / bare_rate:10.2f}")


if __name__ == "__main__":
    main()
