"""EVTX-ATTACK-SAMPLES and OTRF's atomic datasets: every file parses, and how many files per
ATT&CK tactic folder raise a detection tagged with that tactic (a recall metric: see
docs/scan.md for the numbers).

Print the table with ``python -m pytest tests/scan/test_attack_samples.py -q -s``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.logsources.data import DATA, needs_data
from vigil.detect import RuleSet
from vigil.logsources.base import reader_for

pytestmark = needs_data

SAMPLES = DATA / "evtx-attack-samples"
WINDOWS_RULES = DATA / "sigma" / "rules" / "windows"
# Folder -> the tactic tags that count for it. ATT&CK v18 split Defense Evasion into Stealth
# and Defense Impairment; SigmaHQ's rules use the new names.
TACTICS: dict[str, frozenset[str]] = {
    "Command and Control": frozenset({"command-and-control"}),
    "Credential Access": frozenset({"credential-access"}),
    "Defense Evasion": frozenset({"defense-evasion", "stealth", "defense-impairment"}),
    "Discovery": frozenset({"discovery"}),
    "Execution": frozenset({"execution"}),
    "Lateral Movement": frozenset({"lateral-movement"}),
    "Persistence": frozenset({"persistence"}),
    "Privilege Escalation": frozenset({"privilege-escalation"}),
}


def evtx_files() -> list[Path]:
    return sorted(SAMPLES.rglob("*.evtx"))


def test_every_sample_parses() -> None:
    counts: Counter[str] = Counter()
    for path in evtx_files():
        reader = reader_for(path)
        events = sum(1 for _ in reader.read(path))
        assert reader.name == "evtx" and not reader.warnings, path
        assert events == reader.records > 0, path
        counts[path.parent.name] += events
    assert len(evtx_files()) == 194
    assert sum(counts.values()) == 5862


def recall(files: list[Path], rules: RuleSet, tactics: frozenset[str]) -> int:
    """How many of the files raise a detection tagged with one of the tactics."""
    hits = 0
    for path in files:
        events = reader_for(path).read(path)
        fired = {tactic for e in events for r in rules.match(e) for tactic in r.attack_tactics}
        hits += bool(fired & tactics)
    return hits


def print_table(table: dict[str, tuple[int, int]]) -> None:
    for folder, (hits, total) in table.items():
        print(f"{folder:30} {hits:3}/{total:<3} {100 * hits / total:5.1f}%")


def test_tactic_recall_per_folder() -> None:
    rules = RuleSet.from_paths([WINDOWS_RULES])
    table: dict[str, tuple[int, int]] = {}
    for folder, tactics in TACTICS.items():
        files = sorted((SAMPLES / folder).glob("*.evtx"))
        table[folder] = (recall(files, rules, tactics), len(files))
    print_table(table)
    assert all(hits for hits, _ in table.values())


OTRF_ATOMIC = DATA / "otrf-security-datasets" / "atomic"


def test_otrf_tactic_recall_per_folder() -> None:
    # OTRF's atomic datasets are whole hosts recorded while one technique ran, filed by tactic
    # (credential_access/...); each is read with the SigmaHQ rules of its platform.
    table: dict[str, tuple[int, int]] = {}
    for platform in ("windows", "linux"):
        rules = RuleSet.from_paths([DATA / "sigma" / "rules" / platform])
        for folder in sorted(p for p in (OTRF_ATOMIC / platform).iterdir() if p.is_dir()):
            tactics = TACTICS[folder.name.replace("_", " ").title()]  # "Credential Access"
            files = sorted(f for f in folder.rglob("*") if f.is_file())
            table[f"{platform}/{folder.name}"] = (recall(files, rules, tactics), len(files))
    print_table(table)
    assert sum(total for _, total in table.values()) == 17
    assert sum(hits for hits, _ in table.values()) >= 15
