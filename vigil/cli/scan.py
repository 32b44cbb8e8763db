"""``vigil scan``: run Sigma rules over log files offline, without a server.

Files and folders (searched recursively) are offered to the log-source readers
(:mod:`vigil.logsources`); each file goes to the first reader that recognises it, its events go
through :meth:`vigil.detect.RuleSet.match`, and every detection is written as JSON lines, CSV or
a table. A summary by rule and level closes the run (on stderr unless the format is ``table``).

Exit status: 0 when the scan ran, with detections or without; 2 for bad input (a path that does
not exist, a file no reader recognises when named on the command line, a corrupt file, an
option that cannot be honoured). Rules that do not load are reported once each and skipped.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from vigil.cli.output import table
from vigil.cli.rules import add_placeholders_option
from vigil.detect import CorrelationHit, DetectError, RuleSet, builtin_rules_dir, load_placeholders
from vigil.intel import IntelError, IntelHit, IntelIndex, IntelStore, import_feed, intel_alert
from vigil.logsources.base import Event, reader_for, sniff
from vigil.logsources.errors import LogSourceError, NoReader
from vigil.logsources.evtxlog import EVTX_MAGIC, native_reader_built
from vigil.schema.ecs import unflatten

logger = logging.getLogger(__name__)

LEVELS = ("informational", "low", "medium", "high", "critical")
FORMATS = ("jsonl", "csv", "table")
CSV_COLUMNS = ("@timestamp", "level", "rule.id", "rule.title", "attack", "host", "file", "what")
EXIT_OK = 0
EXIT_BAD_INPUT = 2
# Show a progress bar only once a run has taken this long (seconds), and redraw at most this often.
PROGRESS_AFTER = 1.0
PROGRESS_EVERY = 0.2
# Event fields that say in a word what a detection is about, for the csv and table formats.
_WHAT = (
    "process.command_line",
    "file.path",
    "registry.path",
    "dns.question.name",
    "destination.ip",
    "process.executable",
    "message",
)


def add_parser(sub: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Register the ``scan`` subcommand on the ``vigil`` command's subparsers."""
    scan = sub.add_parser(
        "scan",
        parents=list(parents),
        help="run Sigma rules over log files offline (EVTX, JSON, auditd, auth logs)",
        description=(
            "Run the built-in Sigma rules (and any --rules folders) over log files and folders, "
            "without a server. Formats are recognised by content."
        ),
    )
    scan.add_argument("paths", nargs="+", metavar="PATH", help="a log file or folder (recursive)")
    scan.add_argument(
        "--rules",
        action="append",
        default=[],
        metavar="DIR",
        help="a Sigma rule file or folder to load besides the built-in rules; repeatable",
    )
    add_placeholders_option(scan)
    scan.add_argument(
        "--intel",
        action="append",
        default=[],
        metavar="FILE",
        help="a threat-intelligence feed (STIX JSON, MISP feed folder or event, CSV, plain list) "
        "to match events against; repeatable",
    )
    scan.add_argument(
        "--format",
        choices=FORMATS,
        help="output format (default: table on a terminal, jsonl otherwise)",
    )
    scan.add_argument(
        "--min-level",
        type=str.lower,
        choices=LEVELS,
        default="informational",
        help="report this level or higher",
    )
    scan.add_argument("--output", type=Path, metavar="FILE", help="write detections here")


@dataclass
class ScanStats:
    """What a scan went through, for the closing summary."""

    files: int = 0
    events: int = 0
    warnings: int = 0
    failed_files: list[str] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)
    pure_python_noted: bool = False
    rules_not_loaded: int = 0
    by_rule: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    @property
    def detections(self) -> int:
        """How many detections were reported."""
        return sum(self.by_rule.values())


class Finding(Protocol):
    """What a detection reports about what fired: a Sigma rule, or an intelligence hit."""

    @property
    def id(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def level(self) -> str: ...
    @property
    def attack_techniques(self) -> tuple[str, ...]: ...
    @property
    def attack_tactics(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class IntelFinding:
    """An event that shows an indicator of a loaded feed, reported like a rule match."""

    id: str
    title: str
    level: str
    attack_techniques: tuple[str, ...] = ()
    attack_tactics: tuple[str, ...] = ()
    # Each hit: the event field, the value seen there, and the indicator with its feed.
    hits: tuple[dict[str, Any], ...] = ()

    @classmethod
    def of(cls, hits: Sequence[IntelHit], event: Event) -> IntelFinding:
        alert = intel_alert(hits, dict(event), str(event.get("host.name") or ""))
        rule = alert["rule"]
        return cls(rule["id"], rule["title"], rule["level"], hits=tuple(alert["intel"]))


def correlation_findings(hits: Sequence[CorrelationHit]) -> list[tuple[Finding, Event]]:
    """Each correlation that fired, reported with the newest event that made it."""
    return [
        (hit.correlation, dict(hit.events[-1]))
        for hit in hits
        if hit.correlation.generate and hit.events
    ]


def intel_kind(path: Path) -> str:
    """The feed kind of a file or folder, from its shape."""
    if path.is_dir():
        return "misp"
    if path.suffix.lower() == ".csv":
        return "csv"
    if path.suffix.lower() == ".json":
        head = path.read_text(errors="replace")[:4096]
        return "misp" if '"Event"' in head else "stix"
    return "list"


def load_intel(paths: Sequence[Path], err: TextIO) -> IntelIndex | None:
    """An index of every indicator in the feeds, or None when no feed was given."""
    if not paths:
        return None
    with tempfile.TemporaryDirectory(prefix="vigil-scan-intel-") as folder:
        store = IntelStore.open(Path(folder))
        try:
            for path in paths:
                if path.is_file() and sniff(path, len(EVTX_MAGIC)) == EVTX_MAGIC:
                    raise IntelError(
                        f"{path} is a Windows event log, not a feed: give it as a PATH to scan"
                    )
                report = import_feed(store, path, intel_kind(path))
                counts = ", ".join(f"{k} {v}" for k, v in report.counts().items() if v)
                # Which kind each value was taken for: a plain list's "run.sh" is a domain.
                kinds = Counter(i.type.value for i in [*report.added, *report.updated])
                if kinds:
                    counts += " (" + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) + ")"
                print(f"vigil scan: intel {path}: {counts or 'no indicators in it'}", file=err)
            return store.load_index()
        finally:
            store.close()


def detection(rule: Finding, event: Event) -> dict[str, Any]:
    """One detection as written to JSON lines: rule, ATT&CK, time, the nested event, file."""
    found: dict[str, Any] = {
        "rule": {"id": rule.id, "title": rule.title, "level": rule.level},
        "attack": {
            "techniques": list(rule.attack_techniques),
            "tactics": list(rule.attack_tactics),
        },
    }
    if "@timestamp" in event:
        found["@timestamp"] = event["@timestamp"]
    if isinstance(rule, IntelFinding):
        found["intel"] = list(rule.hits)
    found["event"] = unflatten(event)
    found["log"] = {"file": {"path": event.get("log.file.path")}}
    return found


def load_rules(
    paths: Sequence[str | Path], err: TextIO, placeholders: dict[str, list[str]] | None = None
) -> RuleSet:
    """Load the rules and correlations, reporting each rule that does not load once on ``err``."""
    rules = RuleSet.from_paths(list(paths), placeholders=placeholders)
    for error in rules.errors:
        print(f"vigil scan: rule not loaded: {error}", file=err)
    return rules


def scan_files(paths: Sequence[Path]) -> Iterator[tuple[Path, Path | None]]:
    """Every file to scan once, with the folder it was found in (None when named on the command
    line); folders recursively. A path given twice, or inside a folder given, is read once."""
    seen: set[Path] = set()
    for path in paths:
        found = (
            [(child, path) for child in sorted(path.rglob("*")) if child.is_file()]
            if path.is_dir()
            else [(path, None)]
        )
        for file, folder in found:
            real = file.resolve()
            if real not in seen:
                seen.add(real)
                yield file, folder


class _Progress:
    """A one-line progress bar on stderr, drawn only on a terminal and only for long runs."""

    def __init__(self, total: int, err: TextIO) -> None:
        self.total = total
        self.err = err
        self.enabled = err.isatty()
        self.started = time.monotonic()
        self.drawn = 0.0

    def update(self, done: int, events: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.started < PROGRESS_AFTER or (now - self.drawn < PROGRESS_EVERY and not force):
            return
        self.drawn = now
        width = 30
        filled = width * done // max(self.total, 1)
        bar = "#" * filled + "-" * (width - filled)
        self.err.write(f"\r[{bar}] {done}/{self.total} files  {events:,} events")
        self.err.flush()

    def close(self) -> None:
        if self.enabled and self.drawn:
            self.err.write("\r\033[K")
            self.err.flush()


class _Writer:
    """Writes detections in one format; the table format collects rows until the end."""

    def __init__(self, fmt: str, out: TextIO) -> None:
        self.fmt = fmt
        self.out = out
        self.rows: list[list[Any]] = []
        self.csv = csv.writer(out) if fmt == "csv" else None
        if self.csv is not None:
            self.csv.writerow(CSV_COLUMNS)

    def write(self, rule: Finding, event: Event) -> None:
        if self.fmt == "jsonl":
            line = json.dumps(detection(rule, event), ensure_ascii=False, default=str)
            self.out.write(line + "\n")
            return
        if isinstance(rule, IntelFinding) and rule.hits:
            what = rule.hits[0]["observed"]  # the value the feed named, not the command line
        else:
            what = next((event[key] for key in _WHAT if event.get(key) not in (None, "")), "")
        row = [
            event.get("@timestamp", ""),
            rule.level,
            rule.id,
            rule.title,
            " ".join(rule.attack_techniques),
            event.get("host.name", ""),
            event.get("log.file.path", ""),
            what,
        ]
        if self.csv is not None:
            self.csv.writerow(row)
        else:
            self.rows.append([row[0], row[1], row[3], row[4], Path(str(row[6])).name, row[7]])

    def close(self) -> None:
        if self.fmt == "table" and self.rows:
            # Files are read one after another; the analyst reads a table as a timeline.
            self.rows.sort(key=lambda row: str(row[0]))
            headers = ["TIME", "LEVEL", "RULE", "ATT&CK", "FILE", "WHAT"]
            self.out.write(table(headers, self.rows) + "\n\n")


def _rank(level: str) -> int:
    # A level outside Sigma's scale counts as medium, as the engine treats a missing level.
    return LEVELS.index(level) if level in LEVELS else LEVELS.index("medium")


PURE_PYTHON_EVTX = (
    "the native EVTX reader is not built, so EVTX files are read in pure Python, at about a "
    "third of the parser's speed instead of over half; install gcc and the Python headers "
    "(python3-dev) and reinstall Vigil to build it"
)


def _count(count: int, noun: str) -> str:
    return f"1 {noun}" if count == 1 else f"{count:,} {noun}s"


def _some(names: list[str], shown: int = 3) -> str:
    # Which files a folder held that no reader took, so a missing log is noticed.
    if not names:
        return ""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f": {', '.join(names[:shown])}{more}"


def summary(stats: ScanStats, seconds: float, loading: float) -> str:
    """The closing summary: detections by rule and level, then the totals and times."""
    ordered = sorted(stats.by_rule.items(), key=lambda item: (-_rank(item[0][1]), -item[1]))
    lines = []
    if ordered:
        rows = [[level, count, title, rule_id] for (rule_id, level, title), count in ordered]
        lines.append(table(["LEVEL", "COUNT", "RULE", "ID"], rows))
    not_loaded = stats.rules_not_loaded
    lines.append(
        f"{_count(stats.detections, 'detection')} from {_count(stats.files, 'file')}, "
        f"{_count(stats.events, 'event')} in {seconds:.1f}s after {loading:.1f}s loading rules "
        f"and feeds ({_count(stats.warnings, 'warning')}, {len(stats.failed_files)} failed, "
        f"{len(stats.skipped_files)} not recognised{_some(stats.skipped_files)}"
        + (f"; {_count(not_loaded, 'rule')} not loaded)" if not_loaded else ")")
    )
    return "\n".join(lines)


def scan(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run ``vigil scan`` with parsed arguments, writing detections to ``out``.

    Returns:
        The exit status: 0 when the scan ran, 2 for bad input.
    """
    paths = [Path(p) for p in args.paths]
    given = [(p, "") for p in paths]
    given += [(Path(p), " (--rules)") for p in args.rules]
    given += [(Path(p), " (--intel)") for p in args.intel]
    missing = [f"{path}{option}" for path, option in given if not path.exists()]
    if missing:
        print(f"vigil scan: no such file or folder: {', '.join(missing)}", file=err)
        return EXIT_BAD_INPUT

    loading = time.monotonic()
    try:
        placeholders = load_placeholders(args.placeholders)
    except DetectError as exc:
        print(f"vigil scan: {exc}", file=err)
        return EXIT_BAD_INPUT
    rules = load_rules([builtin_rules_dir(), *args.rules], err, placeholders)
    try:
        intel = load_intel([Path(p) for p in args.intel], err)
    except IntelError as exc:
        print(f"vigil scan: {exc}", file=err)
        return EXIT_BAD_INPUT
    correlations = rules.correlation_engine()
    fmt = args.format or ("table" if out.isatty() else "jsonl")
    minimum = LEVELS.index(args.min_level)
    status = EXIT_OK
    stats = ScanStats(rules_not_loaded=len(rules.errors))
    started = time.monotonic()
    loading = started - loading
    files = list(scan_files(paths))
    progress = _Progress(len(files), err)
    writer = _Writer(fmt, out)

    def report(found: list[tuple[Finding, Event]]) -> None:
        for rule, event in found:
            if _rank(rule.level) >= minimum:
                stats.by_rule[(rule.id, rule.level, rule.title)] += 1
                writer.write(rule, event)

    for done, (path, folder) in enumerate(files, start=1):
        progress.update(done - 1, stats.events)
        try:
            reader = reader_for(path)
        except NoReader as exc:
            # Named from the folder given, so that two folders' notes.txt are told apart.
            shown = path.relative_to(folder.parent) if folder else path
            stats.skipped_files.append(str(shown))
            if folder is None:
                print(f"vigil scan: {exc}", file=err)
                status = EXIT_BAD_INPUT
            logger.debug("%s", exc)
            continue
        except LogSourceError as exc:
            print(f"vigil scan: {exc}", file=err)
            stats.failed_files.append(str(path))
            status = EXIT_BAD_INPUT
            continue

        stats.files += 1
        try:
            for event in reader.read(path):
                stats.events += 1
                fired = rules.match(event)
                found: list[tuple[Finding, Event]] = [(r, event) for r in fired if r.generate]
                found += correlation_findings(correlations.feed(event, fired))
                if intel is not None and (hits := intel.match(event)):
                    found.append((IntelFinding.of(hits, event), event))
                report(found)
                if stats.events % 4096 == 0:
                    progress.update(done - 1, stats.events)
        except LogSourceError as exc:
            print(f"vigil scan: {exc}", file=err)
            stats.failed_files.append(str(path))
            status = EXIT_BAD_INPUT
            continue
        warned = sum(reader.warnings.values())
        if warned:
            stats.warnings += warned
            kinds = ", ".join(f"{kind} x{count}" for kind, count in reader.warnings.items())
            print(f"vigil scan: {path}: {_count(warned, 'record')} skipped ({kinds})", file=err)
        for note in reader.notes:
            stats.warnings += 1
            print(f"vigil scan: {path}: {note}", file=err)
        if reader.name == "evtx" and not native_reader_built() and not stats.pure_python_noted:
            stats.pure_python_noted = True
            print(f"vigil scan: {PURE_PYTHON_EVTX}", file=err)

    report(correlation_findings(correlations.flush(None)))
    progress.update(len(files), stats.events, force=True)
    progress.close()
    writer.close()
    closing = summary(stats, time.monotonic() - started, loading)
    print(closing, file=out if fmt == "table" else err)
    return status


def run(args: argparse.Namespace) -> int:
    """Entry point from ``vigil scan``: open ``--output`` if given and scan."""
    if args.output is None:
        return scan(args, sys.stdout, sys.stderr)
    try:
        handle: TextIO = args.output.open("w", encoding="utf-8", newline="")
    except OSError as exc:
        print(f"vigil scan: cannot write {args.output}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    with handle:
        return scan(args, handle, sys.stderr)
