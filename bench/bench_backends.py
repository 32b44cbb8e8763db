"""Vigil's Sigma engine against pySigma's SQLite and DuckDB backends, same events, same rules.

One run, in one process (memory in child processes):

- events: every record of the shared EVTX-ATTACK-SAMPLES and of the ``.evtx`` files of Sigma's
  regression data, read once with Vigil's EVTX reader into flat events (``--repeat N`` repeats
  them); every approach starts from these same events in memory;
- rules: all SigmaHQ Windows rules;
- Vigil: ``RuleSet.from_paths`` and ``RuleSet.match`` on each event;
- SQLite, the way Zircolite and most Python tools work today: each rule converted by
  pySigma's SQLite backend with the Sysmon and Windows log-source pipelines (which restrict a
  rule to its log source by adding ``Channel``/``EventID`` conditions to the query), the events
  inserted into one in-memory table whose columns are the raw field names (``Image``,
  ``CommandLine``, ``EventID``, ``Channel``...) declared ``TEXT COLLATE NOCASE``, one query per
  rule, ``REGEXP`` as Python's ``re.search``, keywords searched in a column of all the event's
  values;
- DuckDB: the same with pysigma-backend-duckdb over an in-memory DuckDB table (a column is
  BIGINT when all its values are integers, else VARCHAR).

Rule conversion is timed apart from matching. Detections are (rule id, event index) pairs;
for the rules that every approach ran, the bench reports agreement, ours-only and theirs-only,
per rule, and writes every disagreement to ``--dump`` for review. Peak memory (``VmHWM``) is
measured in a fresh process per approach and input size (``--memory 1,2,4``).

    python -m bench.bench_backends [--repeat N] [--memory 1,2,4] [--memory-of vigil,sqlite]
                                   [--limit-rules N] [--dump F]

Needs pysigma-backend-sqlite, pysigma-backend-duckdb (installed with ``--no-deps``: it declares
pySigma < 2 but converts with pySigma 2), pysigma-pipeline-sysmon, pysigma-pipeline-windows.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SAMPLES = DATA / "evtx-attack-samples"
REGRESSION = DATA / "sigma" / "regression_data"
WINDOWS_RULES = DATA / "sigma" / "rules" / "windows"

KEYWORDS = "_keywords"  # column of all an event's values, for keyword (field-less) rules
INDEX = "_idx"  # column of the event's position in the input

Pairs = set[tuple[str, int]]


# ----------------------------------------------------------------------------- events


def evtx_files() -> list[Path]:
    """The .evtx inputs: all attack samples, then Sigma's regression files."""
    return sorted(SAMPLES.rglob("*.evtx")) + sorted(REGRESSION.rglob("*.evtx"))


def stream_events(repeat: int) -> Iterator[dict[str, Any]]:
    """Every record of every input file, as Vigil's flat events, ``repeat`` times over."""
    from vigil.logsources.evtxlog import EvtxReader

    files = evtx_files()
    for _ in range(repeat):
        for path in files:
            yield from EvtxReader().read(path)


def raw_fields(event: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """The record's own fields (EventData and System names), without Vigil's ECS copies."""
    for key, value in event.items():
        if key.startswith("winlog.event_data."):
            yield key[len("winlog.event_data.") :], value
        elif "." not in key and not key.startswith("@"):
            yield key, value


def cell(value: Any) -> Any:
    """A value as a table cell: lists one element a line, booleans as Sigma writes them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        # Not JSON: its escaping would double every backslash of a Windows path.
        return "\n".join(str(cell(item)) for item in value)
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        return str(value)  # past a 64-bit integer column
    return value


def keyword_text(event: dict[str, Any]) -> str:
    """All of the record's values joined, what keyword rules search."""
    return "\n".join(str(cell(value)) for _, value in raw_fields(event))


# ----------------------------------------------------------------------------- rules


def rule_texts(limit: int | None) -> list[tuple[Path, str]]:
    files = sorted(p for p in WINDOWS_RULES.rglob("*") if p.suffix in (".yml", ".yaml"))
    if limit is not None:
        files = files[:limit]
    return [(path, path.read_text(encoding="utf-8")) for path in files]


def pipeline() -> Any:
    from sigma.pipelines.sysmon import sysmon_pipeline
    from sigma.pipelines.windows import windows_logsource_pipeline

    return sysmon_pipeline() + windows_logsource_pipeline()


def make_sqlite_backend() -> Any:
    from sigma.backends.sqlite import sqliteBackend

    return sqliteBackend(pipeline(), fulltext_field=KEYWORDS)


def make_duckdb_backend() -> Any:
    from sigma_backend_duckdb import DuckDBBackend

    return DuckDBBackend(pipeline())


def convert(
    make_backend: Callable[[], Any], texts: Sequence[tuple[Path, str]]
) -> tuple[dict[str, list[str]], Counter[str], set[str], float, float]:
    """Parse and convert every rule with one backend.

    Returns:
        Queries by rule id, failures by reason, the fields the converted rules use, parse
        seconds and conversion seconds.
    """
    from sigma.collection import SigmaCollection
    from sigma.rule import SigmaRule

    backend = make_backend()
    started = time.perf_counter()
    parsed = []
    failures: Counter[str] = Counter()
    for path, text in texts:
        try:
            collection = SigmaCollection.from_yaml(text, collect_errors=True)
        except Exception as exc:  # noqa: BLE001 - a bench counts every failure
            failures[f"parse: {type(exc).__name__}"] += 1
            continue
        for index, rule in enumerate(collection.rules):
            if not isinstance(rule, SigmaRule):
                failures["correlation rule"] += 1
            elif rule.errors:
                failures["invalid rule"] += 1
            else:
                parsed.append((str(rule.id) if rule.id else f"{path}#{index}", rule))
    parse = time.perf_counter() - started

    started = time.perf_counter()
    queries: dict[str, list[str]] = {}
    fields: set[str] = set()
    for ident, rule in parsed:
        try:
            converted = backend.convert_rule(rule)
        except Exception as exc:  # noqa: BLE001
            failures[reason(exc)] += 1
            continue
        queries[ident] = [str(query) for query in converted]
        for condition in rule.detection.parsed_condition:
            fields.update(condition_fields(condition.parsed))
    return queries, failures, fields, parse, time.perf_counter() - started


def reason(exc: Exception) -> str:
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    text = re.sub(r"'[^']*'", "'...'", text.split("\n")[0])
    return f"{type(exc).__name__}: {text[:90]}"


def condition_fields(node: Any) -> Iterator[str]:
    field = getattr(node, "field", None)
    if isinstance(field, str) and field:
        yield field
    value = getattr(node, "value", None)
    if hasattr(value, "field") and isinstance(value.field, str):
        yield value.field  # |fieldref
    for arg in getattr(node, "args", ()) or ():
        yield from condition_fields(arg)


def table_columns(events: Sequence[dict[str, Any]], rule_fields: set[str]) -> list[str]:
    """Column names: every raw field of the events and every field a rule uses, once each."""
    seen: dict[str, str] = {}
    for event in events:
        for name, _ in raw_fields(event):
            seen.setdefault(name.lower(), name)
    for name in sorted(rule_fields):
        seen.setdefault(name.lower(), name)
    for name in (INDEX, KEYWORDS):
        seen.pop(name, None)
    return [INDEX, KEYWORDS, *seen.values()]


def rows(events: Sequence[dict[str, Any]], columns: Sequence[str], start: int = 0) -> list[tuple]:
    position = {name.lower(): i for i, name in enumerate(columns)}
    out = []
    for offset, event in enumerate(events):
        row: list[Any] = [None] * len(columns)
        row[0] = start + offset
        row[1] = keyword_text(event)
        for name, value in raw_fields(event):
            where = position.get(name.lower())
            if where is not None and row[where] is None:
                row[where] = cell(value)
        out.append(tuple(row))
    return out


# ----------------------------------------------------------------------------- SQL engines


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@lru_cache(maxsize=4096)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _regexp(pattern: str, value: Any) -> bool:
    return value is not None and _regex(pattern).search(str(value)) is not None


def sqlite_table(columns: Sequence[str]) -> sqlite3.Connection:
    connection = sqlite3.connect(":memory:")
    connection.create_function("regexp", 2, _regexp, deterministic=True)
    body = ", ".join(
        [f"{INDEX} INTEGER"] + [f"{quote(c)} TEXT COLLATE NOCASE" for c in columns[1:]]
    )
    connection.execute(f"CREATE TABLE logs ({body})")
    return connection


def sqlite_load(connection: sqlite3.Connection, batch: list[tuple]) -> None:
    marks = ", ".join("?" * len(batch[0]))
    connection.executemany(f"INSERT INTO logs VALUES ({marks})", batch)


def duckdb_types(columns: Sequence[str], batch: Sequence[tuple]) -> list[str]:
    types = []
    for i, _ in enumerate(columns):
        values = [row[i] for row in batch if row[i] is not None]
        integer = values and all(type(v) is int for v in values)
        types.append("BIGINT" if integer else "VARCHAR")
    return types


def duckdb_table(columns: Sequence[str], types: Sequence[str]) -> Any:
    import duckdb

    connection = duckdb.connect(":memory:")
    body = ", ".join(f"{quote(c)} {t}" for c, t in zip(columns, types, strict=True))
    connection.execute(f"CREATE TABLE logs ({body})")
    return connection


def duckdb_load(connection: Any, columns: Sequence[str], types: Sequence[str], batch: list) -> None:
    # executemany is far too slow in DuckDB; bulk-load through an NDJSON file instead.
    spec = "{" + ", ".join(f"'{c.replace(chr(39), chr(39) * 2)}': '{t}'" for c, t in
                           zip(columns, types, strict=True)) + "}"  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".ndjson", delete=True) as handle:
        for row in batch:
            record = {
                c: (str(v) if t == "VARCHAR" and v is not None else v)
                for c, t, v in zip(columns, types, row, strict=True)
            }
            handle.write(json.dumps(record))
            handle.write("\n")
        handle.flush()
        connection.execute(
            f"INSERT INTO logs SELECT * FROM read_json('{handle.name}', "
            f"format='newline_delimited', columns={spec})"
        )


def run_queries(
    connection: Any, queries: dict[str, list[str]]
) -> tuple[Pairs, Counter[str], set[str]]:
    """Run every rule's queries; the first column of the table is the event index."""
    found: Pairs = set()
    errors: Counter[str] = Counter()
    failed: set[str] = set()
    for ident, texts in queries.items():
        for text in texts:
            try:
                for row in connection.execute(text).fetchall():
                    found.add((ident, row[0]))
            except Exception as exc:  # noqa: BLE001
                errors[reason(exc)] += 1
                failed.add(ident)
    return found, errors, failed


# ----------------------------------------------------------------------------- Vigil


def vigil_rules() -> Any:
    from vigil.detect import RuleSet

    return RuleSet.from_paths([WINDOWS_RULES])


def vigil_match(rules: Any, events: Sequence[dict[str, Any]]) -> tuple[Pairs, float, float]:
    """Detections, wall seconds and CPU seconds of this process."""
    started, cpu = time.perf_counter(), time.process_time()
    found: Pairs = set()
    for index, event in enumerate(events):
        for rule in rules.match(event):
            found.add((rule.id, index))
    return found, time.perf_counter() - started, time.process_time() - cpu


# ----------------------------------------------------------------------------- memory


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(kind: str, repeat: int, queries_file: str | None) -> None:
    """Stream the input ``repeat`` times through one approach; print peak and baseline RSS."""
    if kind == "vigil":
        rules = vigil_rules()
        baseline = peak_rss_mb()
        found = 0
        for event in stream_events(repeat):
            found += len(rules.match(event))
        print(json.dumps({"baseline": baseline, "peak": peak_rss_mb(), "detections": found}))
        return

    assert queries_file is not None
    spec = json.loads(Path(queries_file).read_text())
    columns, types, queries = spec["columns"], spec["types"], spec["queries"][kind]
    connection = sqlite_table(columns) if kind == "sqlite" else duckdb_table(columns, types)
    baseline = peak_rss_mb()
    batch: list[dict[str, Any]] = []
    start = 0

    def flush() -> None:
        nonlocal start, batch
        if not batch:
            return
        table = rows(batch, columns, start)
        if kind == "sqlite":
            sqlite_load(connection, table)
        else:
            duckdb_load(connection, columns, types, table)
        start += len(batch)
        batch = []

    # Tools load the whole input first, then run the queries: the events live in the table.
    for event in stream_events(repeat):
        batch.append(event)
        if len(batch) >= 5000:
            flush()
    flush()
    found, _, _ = run_queries(connection, queries)
    print(json.dumps({"baseline": baseline, "peak": peak_rss_mb(), "detections": len(found)}))


def measure_memory(kind: str, repeat: int, queries_file: str) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.bench_backends", "--memory-child", kind]
    command += ["--repeat", str(repeat), "--queries-file", queries_file]
    cwd = Path(__file__).resolve().parents[1]
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- comparison


def compare(name: str, ours: Pairs, theirs: Pairs, rules: set[str], dump: dict[str, Any]) -> None:
    mine = {pair for pair in ours if pair[0] in rules}
    other = {pair for pair in theirs if pair[0] in rules}
    both, only_ours, only_theirs = mine & other, mine - other, other - mine
    print(f"  {name}: {len(rules)} rules compared")
    print(f"    agree {len(both)}, Vigil only {len(only_ours)}, {name} only {len(only_theirs)}")
    print(
        f"    rules firing: Vigil {len({r for r, _ in mine})}, {name} {len({r for r, _ in other})}"
    )
    for label, pairs in (("Vigil only", only_ours), (f"{name} only", only_theirs)):
        by_rule = Counter(rule for rule, _ in pairs)
        top = ", ".join(f"{rule[:8]}x{count}" for rule, count in by_rule.most_common(8))
        print(f"    {label} by rule ({len(by_rule)} rules): {top}")
    dump[name] = {
        "agree": len(both),
        "vigil_only": sorted(only_ours),
        "backend_only": sorted(only_theirs),
    }


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="repeat the events N times")
    parser.add_argument("--memory", default="1,2,4", help="input sizes for peak RSS ('' skips)")
    parser.add_argument(
        "--memory-of", default="vigil,sqlite", help="approaches to measure (vigil,sqlite,duckdb)"
    )
    parser.add_argument("--limit-rules", type=int, help="only the first N rule files")
    parser.add_argument("--dump", type=Path, help="write disagreements and events here (JSON)")
    parser.add_argument(
        "--memory-child", choices=("vigil", "sqlite", "duckdb"), help=argparse.SUPPRESS
    )
    parser.add_argument("--queries-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.repeat, args.queries_file)
        return

    # Events, read once; every approach starts from this list.
    started = time.perf_counter()
    events = list(stream_events(args.repeat))
    print(f"events: {len(events)} from {len(evtx_files())} .evtx files x{args.repeat} "
          f"(read in {time.perf_counter() - started:.1f} s)")  # fmt: skip

    # Vigil.
    started = time.perf_counter()
    ruleset = vigil_rules()
    if args.limit_rules is not None:
        from vigil.detect import RuleSet

        keep = {str(path) for path, _ in rule_texts(args.limit_rules)}
        ruleset = RuleSet([r for r in ruleset.rules if r.path in keep], ruleset.errors)
    vigil_load = time.perf_counter() - started
    ours, vigil_seconds, vigil_cpu = vigil_match(ruleset, events)
    vigil_ids = {rule.id for rule in ruleset.rules}
    print(f"Vigil: {len(ruleset)} rules loaded, {len(ruleset.errors)} not, in {vigil_load:.1f} s")

    # The backends: conversion, then load and query.
    texts = rule_texts(args.limit_rules)
    results: dict[str, dict[str, Any]] = {}
    converted: dict[str, dict[str, list[str]]] = {}
    fields: set[str] = set()
    for kind, make in (("sqlite", make_sqlite_backend), ("duckdb", make_duckdb_backend)):
        queries, failures, used, parse, conversion = convert(make, texts)
        converted[kind] = queries
        fields |= used
        results[kind] = {"parse": parse, "convert": conversion, "failures": failures}
        print(f"{kind}: {len(queries)} rules converted, {sum(failures.values())} not "
              f"(parse {parse:.1f} s, convert {conversion:.1f} s)")  # fmt: skip
        for why, count in failures.most_common(6):
            print(f"    {count:5d} {why}")
    columns = table_columns(events, fields)
    table = rows(events, columns)
    types = duckdb_types(columns, table)

    for kind in ("sqlite", "duckdb"):
        started = time.perf_counter()
        if kind == "sqlite":
            connection: Any = sqlite_table(columns)
            sqlite_load(connection, table)
        else:
            connection = duckdb_table(columns, types)
            duckdb_load(connection, columns, types, table)
        load = time.perf_counter() - started
        started, cpu = time.perf_counter(), time.process_time()
        found, errors, failed = run_queries(connection, converted[kind])
        query = time.perf_counter() - started
        query_cpu = time.process_time() - cpu
        results[kind].update(
            load=load, query=query, query_cpu=query_cpu, found=found, failed=failed
        )
        print(f"{kind}: table of {len(columns)} columns loaded in {load:.2f} s, "
              f"queries run in {query:.2f} s, {len(failed)} rules failed to run")  # fmt: skip
        for why, count in errors.most_common(6):
            print(f"    {count:5d} {why}")
        connection.close()

    # Speed.
    count = len(events)
    ours_rate = rate(count, vigil_seconds)
    print()
    print(f"{'':<30}{'events/s':>12}{'Vigil / it':>12}")
    print(f"{'Vigil RuleSet.match':<30}{ours_rate:12,.0f}")
    for kind in ("sqlite", "duckdb"):
        result = results[kind]
        for label, seconds in (
            ("queries", result["query"]),
            ("load + queries", result["load"] + result["query"]),
        ):
            theirs = rate(count, seconds)
            print(f"{kind + ' ' + label:<30}{theirs:12,.0f}{ours_rate / theirs:11.1f}x")
    # SQLite and Vigil run on this one thread, so their CPU time is what each costs whatever
    # else the machine does; DuckDB runs queries on several threads, so only wall time is fair.
    ours_cpu_rate, sqlite_cpu_rate = (
        rate(count, vigil_cpu),
        rate(count, results["sqlite"]["query_cpu"]),
    )
    print(f"{'Vigil, CPU time':<30}{ours_cpu_rate:12,.0f}")
    print(
        f"{'sqlite queries, CPU time':<30}{sqlite_cpu_rate:12,.0f}"
        f"{ours_cpu_rate / sqlite_cpu_rate:11.1f}x"
    )

    # Detections, on the rules every approach ran.
    print()
    common = vigil_ids.copy()
    for kind in ("sqlite", "duckdb"):
        common &= set(converted[kind]) - results[kind]["failed"]
    print(f"detections: Vigil {len(ours)} on all its rules; rules run by all three: {len(common)}")
    dump: dict[str, Any] = {}
    for kind in ("sqlite", "duckdb"):
        ran = (set(converted[kind]) - results[kind]["failed"]) & vigil_ids
        compare(kind, ours, results[kind]["found"], ran, dump)
    if args.dump:
        wanted = {i for part in dump.values() for key in ("vigil_only", "backend_only")
                  for _, i in part[key]}  # fmt: skip
        dump["events"] = {i: {k: cell(v) for k, v in events[i].items()} for i in sorted(wanted)}
        dump["queries"] = converted
        args.dump.write_text(json.dumps(dump, indent=1, default=str))

    # Memory, each approach and size in a fresh process.
    sizes = [int(n) for n in args.memory.split(",") if n.strip()]
    if sizes:
        print()
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=True) as handle:
            json.dump({"columns": columns, "types": types, "queries": converted}, handle)
            handle.flush()
            print(f"{'peak RSS, MB':<16}" + "".join(f"{f'x{n}':>16}" for n in sizes))
            for kind in [k.strip() for k in args.memory_of.split(",") if k.strip()]:
                cells = []
                for n in sizes:
                    measured = measure_memory(kind, n, handle.name)
                    cells.append(
                        f"{measured['peak']:.0f} (+{measured['peak'] - measured['baseline']:.0f})"
                    )
                print(f"{kind:<16}" + "".join(f"{c:>16}" for c in cells))
            print(
                "(in brackets: growth over the process after loading rules or creating the table)"
            )


if __name__ == "__main__":
    main()
