"""SigmaHQ's regression cases: each rule fires exactly ``match_count`` times on its events.

For every ``regression_data/**/info.yml`` the rule with that id is loaded alone from
``sigma/rules*`` and run over the case's ``.evtx`` and ``.json`` through the readers; no other
rule is involved. Cases that cannot pass yet are listed below with the reason, never skipped.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.logsources.data import DATA, needs_data
from vigil.detect import RuleSet
from vigil.logsources.base import reader_for

SIGMA = DATA / "sigma"
_ID = re.compile(r"^id:\s*['\"]?([0-9a-fA-F-]{36})", re.MULTILINE)

# Cases that fail, each with the reason; empty since readers can declare Sigma categories.
# Strict: a case listed here that starts to pass fails the run until it is removed.
KNOWN_FAILURES: dict[str, str] = {}

# Cases whose info.yml count is stale: the true count, and the EventRecordIDs of the events that
# each fulfil the rule's detection (checked by hand against the rule).
TRUE_COUNTS: dict[str, tuple[int, tuple[int, ...]]] = {
    # procdump64.exe, procdump64a.exe and procdump.exe are all dropped; each ends with a listed
    # name. (The :Zone.Identifier streams do not match.)
    "file_event_win_cred_dump_tools_dropped_files": (3, (26359, 26366, 26373)),
    # Three ZoneMap\Domains values (https, http, *) set to DWORD 2, none filtered.
    "registry_set_change_security_zones": (3, (28344631, 28344632, 28344633)),
    # Both AutoShareServer and AutoShareWks set to DWORD 0.
    "registry_set_disable_administrative_share": (2, (28656599, 28656618)),
}


@cache
def rule_paths() -> dict[str, Path]:
    """Rule id -> rule file, over every SigmaHQ rule folder in the shared data."""
    paths: dict[str, Path] = {}
    for folder in sorted(SIGMA.glob("rules*")):
        for path in folder.rglob("*.yml"):
            match = _ID.search(path.read_text(encoding="utf-8"))
            if match:
                paths[match.group(1)] = path
    return paths


def cases() -> list[object]:
    params: list[object] = []
    for info in sorted(SIGMA.glob("regression_data/**/info.yml")):
        name = info.parent.name
        marks = []
        if name in KNOWN_FAILURES:
            marks.append(pytest.mark.xfail(reason=KNOWN_FAILURES[name], strict=True))
        for suffix in ("evtx", "json"):
            params.append(pytest.param(info, suffix, id=f"{name}-{suffix}", marks=marks))
    return params


@needs_data
@pytest.mark.parametrize(("info", "suffix"), cases())
def test_rule_fires_match_count_times(info: Path, suffix: str) -> None:
    case = yaml.safe_load(info.read_text(encoding="utf-8"))
    rule_id = case["rule_metadata"][0]["id"]
    rules = RuleSet.from_paths([rule_paths()[rule_id]])
    assert len(rules) == 1, f"rule {rule_id} did not load: {rules.errors}"
    (events_file,) = info.parent.glob(f"*.{suffix}")

    reader = reader_for(events_file)
    events = list(reader.read(events_file))
    fired = [event for event in events if rules.match(event)]

    assert not reader.warnings
    name = info.parent.name
    expected = case["regression_tests_info"][0].get("match_count")
    if name in TRUE_COUNTS:
        expected, record_ids = TRUE_COUNTS[name]
        assert sorted(event["winlog.record_id"] for event in fired) == list(record_ids)
    if expected is None:
        assert fired, f"{rule_id} fired on none of the {len(events)} events"
    else:
        assert len(fired) == expected
