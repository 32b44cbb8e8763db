"""Correlation rules on the event stream: golden cases per type, windows, groups, generate."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from vigil.detect import RuleSet
from vigil.detect.correlation import CorrelationEngine, CorrelationHit, event_time
from vigil.logsources.authlog import AuthLogReader

OPENSSH = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "data"
    / "linux-logs"
    / "loghub"
    / "OpenSSH"
    / "OpenSSH_2k.log"
)
START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

BASE_RULES = """
title: SSH login failed
id: 1f3c1b52-8d0e-4f57-9a3c-0e5f7a1b2c01
name: ssh_failed
logsource: {product: linux, service: sshd}
detection:
  selection: {event.action: ssh_login, event.outcome: failure}
  condition: selection
level: low
---
title: Recon tool ran
id: 1f3c1b52-8d0e-4f57-9a3c-0e5f7a1b2c02
name: recon
logsource: {product: linux, category: process_creation}
detection:
  selection: {Image|endswith: /nmap}
  condition: selection
level: low
---
title: Archive tool ran
id: 1f3c1b52-8d0e-4f57-9a3c-0e5f7a1b2c03
name: archive
logsource: {product: linux, category: process_creation}
detection:
  selection: {Image|endswith: /tar}
  condition: selection
level: low
---
title: Unrelated rule
id: 1f3c1b52-8d0e-4f57-9a3c-0e5f7a1b2c04
logsource: {product: linux, category: process_creation}
detection:
  selection: {Image|endswith: /ls}
  condition: selection
level: low
"""


def correlation(kind: str, body: str) -> str:
    """A correlation rule document, to go after the base rules."""
    header = [
        "---",
        "title: test correlation",
        "id: 9a0e2f4c-1111-4c5e-8f00-0000000000aa",
        "level: high",
        "tags: [attack.credential-access, attack.t1110]",
        "correlation:",
        f"  type: {kind}",
    ]
    return "\n".join(header + ["  " + line for line in body.splitlines()])


def ssh_failure(ip: str, at: float, user: str = "root") -> dict[str, Any]:
    return {
        "@timestamp": (START + timedelta(seconds=at)).isoformat(),
        "event.category": ["authentication"],
        "event.action": "ssh_login",
        "event.outcome": "failure",
        "event.module": "sshd",
        "host.os.type": "linux",
        "source.ip": ip,
        "user.name": user,
        "event.id": f"{ip}-{at}",
    }


def process(executable: str, host: str, at: float) -> dict[str, Any]:
    return {
        "@timestamp": (START + timedelta(seconds=at)).isoformat(),
        "event.category": ["process"],
        "event.type": ["start"],
        "host.os.type": "linux",
        "host.name": host,
        "process.executable": executable,
        "process.command_line": executable,
    }


def run(ruleset: RuleSet, events: Iterable[dict[str, Any]]) -> list[CorrelationHit]:
    engine = ruleset.correlation_engine()
    hits: list[CorrelationHit] = []
    for event in events:
        hits.extend(engine.feed(event, ruleset.match(event)))
    hits.extend(engine.flush())
    return hits


def load(*documents: str) -> RuleSet:
    ruleset = RuleSet.from_yaml(BASE_RULES + "\n".join(documents))
    assert not ruleset.errors, [str(e) for e in ruleset.errors]
    return ruleset


EVENT_COUNT = """rules: [ssh_failed]
group-by: [source.ip]
timespan: 5m
condition: {gte: 5}"""


def test_event_count_fires_once_for_a_burst() -> None:
    ruleset = load(correlation("event_count", EVENT_COUNT))
    hits = run(ruleset, [ssh_failure("10.0.0.9", 30 * i) for i in range(7)])
    assert len(hits) == 1
    hit = hits[0]
    assert hit.correlation.title == "test correlation" and hit.correlation.level == "high"
    assert hit.correlation.attack_techniques == ("T1110",)
    assert hit.group == {"source.ip": "10.0.0.9"} and hit.value == 5
    assert hit.event_ids == tuple(f"10.0.0.9-{30 * i}" for i in range(5))
    assert hit.rules == ("1f3c1b52-8d0e-4f57-9a3c-0e5f7a1b2c01",)
    assert hit.last_seen - hit.first_seen == timedelta(minutes=2)


def test_event_count_window_slides_out() -> None:
    ruleset = load(correlation("event_count", EVENT_COUNT))
    # Four failures, then four more that each come after the earlier ones left the window.
    events = [ssh_failure("10.0.0.9", 100 * i) for i in range(4)]
    events += [ssh_failure("10.0.0.9", 1000 + 60 * i) for i in range(4)]
    assert run(ruleset, events) == []
    assert len(run(ruleset, [*events, ssh_failure("10.0.0.9", 1250)])) == 1


def test_event_count_groups_are_separate() -> None:
    ruleset = load(correlation("event_count", EVENT_COUNT))
    events = [ssh_failure(f"10.0.0.{i % 2}", 10 * i) for i in range(8)]
    assert run(ruleset, events) == []
    hits = run(ruleset, [*events, ssh_failure("10.0.0.1", 95)])
    assert [hit.group for hit in hits] == [{"source.ip": "10.0.0.1"}]


def test_value_count_of_distinct_users_per_source() -> None:
    body = """rules: [ssh_failed]
group-by: [source.ip]
timespan: 10m
condition: {gt: 3, field: user.name}"""
    ruleset = load(correlation("value_count", body))
    same_user = [ssh_failure("10.0.0.1", i, "root") for i in range(20)]
    spray = [ssh_failure("10.0.0.2", i, user) for i, user in enumerate("abcabcd")]
    hits = run(ruleset, same_user + spray)
    assert [(h.group, h.value, h.values) for h in hits] == [
        ({"source.ip": "10.0.0.2"}, 4, ("a", "b", "c", "d"))
    ]


@pytest.mark.parametrize(
    ("kind", "order", "fires"),
    [
        pytest.param("temporal", ["recon", "archive"], True, id="temporal-in-order"),
        pytest.param("temporal", ["archive", "recon"], True, id="temporal-reversed"),
        pytest.param("temporal_ordered", ["recon", "archive"], True, id="ordered-in-order"),
        pytest.param("temporal_ordered", ["archive", "recon"], False, id="ordered-reversed"),
    ],
)
def test_temporal(kind: str, order: Sequence[str], fires: bool) -> None:
    body = """rules: [recon, archive]
group-by: [host.name]
timespan: 10s"""
    ruleset = load(correlation(kind, body))
    tool = {"recon": "/usr/bin/nmap", "archive": "/bin/tar"}
    events = [process(tool[name], "web1", 3 * i) for i, name in enumerate(order)]
    hits = run(ruleset, events)
    assert len(hits) == (1 if fires else 0)
    if fires:
        assert hits[0].group == {"host.name": "web1"} and hits[0].value == 2


@pytest.mark.parametrize(
    "events",
    [
        pytest.param(
            [process("/usr/bin/nmap", "web1", 0), process("/bin/tar", "web1", 11)], id="too-late"
        ),
        pytest.param(
            [process("/usr/bin/nmap", "web1", 0), process("/bin/tar", "web2", 1)], id="other-host"
        ),
        pytest.param(
            [process("/usr/bin/nmap", "web1", 0), process("/usr/bin/nmap", "web1", 1)],
            id="same-rule-twice",
        ),
    ],
)
def test_temporal_near_misses(events: list[dict[str, Any]]) -> None:
    body = """rules: [recon, archive]
group-by: [host.name]
timespan: 10s"""
    assert run(load(correlation("temporal", body)), events) == []


def test_temporal_aliases_join_different_fields() -> None:
    body = """rules: [ssh_failed, recon]
group-by: [ip]
timespan: 1m
aliases:
  ip:
    ssh_failed: source.ip
    recon: host.ip"""
    ruleset = load(correlation("temporal", body))
    recon = process("/usr/bin/nmap", "web1", 5) | {"host.ip": "10.0.0.7"}
    hits = run(ruleset, [ssh_failure("10.0.0.7", 0), recon])
    assert [h.group for h in hits] == [{"ip": "10.0.0.7"}]
    other = process("/usr/bin/nmap", "web1", 5) | {"host.ip": "10.0.0.8"}
    assert run(ruleset, [ssh_failure("10.0.0.7", 0), other]) == []


@pytest.mark.parametrize(
    ("condition", "count", "fires"),
    [
        pytest.param("{lt: 3}", 2, True, id="lt-fewer"),
        pytest.param("{lt: 3}", 3, False, id="lt-as-many"),
        pytest.param("{lte: 3}", 3, True, id="lte"),
        pytest.param("{eq: 3}", 3, True, id="eq"),
        pytest.param("{eq: 3}", 4, False, id="eq-more"),
        pytest.param("{neq: 3}", 4, True, id="neq"),
        pytest.param("{gt: 3}", 3, False, id="gt-as-many"),
    ],
)
def test_conditions_decided_when_the_window_ends(condition: str, count: int, fires: bool) -> None:
    body = f"""rules: [ssh_failed]
group-by: [source.ip]
timespan: 1m
condition: {condition}"""
    ruleset = load(correlation("event_count", body))
    hits = run(ruleset, [ssh_failure("10.0.0.5", i) for i in range(count)])
    assert [h.value for h in hits] == ([count] if fires else [])


def test_window_closes_at_a_later_event() -> None:
    body = """rules: [ssh_failed]
group-by: [source.ip]
timespan: 1m
condition: {lt: 3}"""
    ruleset = load(correlation("event_count", body))
    engine = ruleset.correlation_engine()
    first = ssh_failure("10.0.0.5", 0)
    assert engine.feed(first, ruleset.match(first)) == []
    later = ssh_failure("10.0.0.5", 61)
    assert [h.value for h in engine.feed(later, ruleset.match(later))] == [1]


def test_generate_flag_marks_referenced_rules() -> None:
    ruleset = load(correlation("event_count", EVENT_COUNT))
    generate = {rule.name: rule.generate for rule in ruleset.rules}
    assert generate == {"ssh_failed": False, "recon": True, "archive": True, None: True}
    assert ruleset.correlations[0].generate is True
    with_generate = load(correlation("event_count", EVENT_COUNT + "\ngenerate: true"))
    assert all(rule.generate for rule in with_generate.rules)


def test_nested_correlation() -> None:
    outer = """---
title: brute force then recon
id: 9a0e2f4c-1111-4c5e-8f00-0000000000bb
correlation:
  type: temporal
  rules: [9a0e2f4c-1111-4c5e-8f00-0000000000aa, recon]
  group-by: [host.name]
  timespan: 10m"""
    ruleset = load(correlation("event_count", EVENT_COUNT.replace("source.ip", "host.name")), outer)
    assert ruleset.correlations[0].generate is False
    failures = [ssh_failure("10.0.0.9", i) | {"host.name": "web1"} for i in range(5)]
    hits = run(ruleset, [*failures, process("/usr/bin/nmap", "web1", 30)])
    assert [h.correlation.title for h in hits] == ["test correlation", "brute force then recon"]


def test_memory_is_bounded_and_drops_are_counted() -> None:
    ruleset = load(correlation("event_count", EVENT_COUNT.replace("gte: 5", "gte: 500")))
    engine = ruleset.correlation_engine(max_events_per_key=10, max_keys=3)
    for i in range(50):
        event = ssh_failure(f"10.0.0.{i % 5}", i)
        engine.feed(event, ruleset.match(event))
    assert len(engine) <= 3
    assert engine.dropped_keys > 0
    single = ruleset.correlation_engine(max_events_per_key=10)
    for i in range(30):
        event = ssh_failure("10.0.0.1", i)
        single.feed(event, ruleset.match(event))
    assert single.dropped_events == 20


def test_expired_windows_are_freed_by_flush() -> None:
    ruleset = load(correlation("event_count", EVENT_COUNT))
    engine = ruleset.correlation_engine()
    for i in range(3):
        event = ssh_failure(f"10.0.0.{i}", i)
        engine.feed(event, ruleset.match(event))
    assert len(engine) == 3
    assert engine.flush(START + timedelta(minutes=4)) == [] and len(engine) == 3
    assert engine.flush(START + timedelta(minutes=6)) == [] and len(engine) == 0


def test_no_correlations_costs_nothing() -> None:
    ruleset = load()
    engine = ruleset.correlation_engine()
    event = ssh_failure("10.0.0.1", 0)
    assert engine.feed(event, ruleset.match(event)) == [] and len(engine) == 0


def test_feed_is_thread_safe() -> None:
    ruleset = load(correlation("event_count", EVENT_COUNT))
    engine = ruleset.correlation_engine()
    hits: list[CorrelationHit] = []

    def worker(ip: str) -> None:
        for i in range(50):
            event = ssh_failure(ip, i)
            hits.extend(engine.feed(event, ruleset.match(event)))

    threads = [threading.Thread(target=worker, args=(f"10.0.1.{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(hits) == 4 * 10


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-03-01T12:00:00Z", START.timestamp()),
        ("2025-03-01T12:00:00", START.timestamp()),
        (START, START.timestamp()),
        (START.timestamp() * 1000, START.timestamp()),
        ("yesterday", None),
    ],
)
def test_event_time(value: Any, expected: float | None) -> None:
    assert event_time({"@timestamp": value}) == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(
            "rules: [recon, archive]\ngroup-by: [host.name]\ntimespan: 1m\n"
            "condition: recon and archive",
            "extended temporal conditions",
            id="extended-condition",
        ),
        pytest.param(
            "rules: [ssh_failed]\ngroup-by: [source.ip]\ntimespan: 5q\ncondition: {gte: 2}",
            "Timespan '5q' is invalid",
            id="bad-timespan",
        ),
    ],
)
def test_unsupported_or_invalid_correlation_is_reported(body: str, message: str) -> None:
    ruleset = RuleSet.from_yaml(BASE_RULES + correlation("temporal", body))
    assert len(ruleset.rules) == 4 and ruleset.correlations == []
    assert len(ruleset.errors) == 1 and message in ruleset.errors[0].message


def test_correlations_in_a_cycle_are_reported() -> None:
    def looped(ident: str, other: str) -> str:
        return f"""---
title: loop {ident}
id: {ident}
correlation:
  type: temporal
  rules: [{other}, recon]
  group-by: [host.name]
  timespan: 1m"""

    first, second = "9a0e2f4c-1111-4c5e-8f00-0000000000c1", "9a0e2f4c-1111-4c5e-8f00-0000000000c2"
    ruleset = RuleSet.from_yaml(BASE_RULES + looped(first, second) + "\n" + looped(second, first))
    assert ruleset.correlations == []
    assert sorted(e.rule_id or "" for e in ruleset.errors) == [first, second]
    assert all("cycle" in e.message for e in ruleset.errors)


def _brute_force_sources(events: list[dict[str, Any]], threshold: int, span: float) -> set[str]:
    """Sources with ``threshold`` failures within ``span`` seconds, counted the slow way."""
    times: dict[str, list[float]] = defaultdict(list)
    for event in events:
        moment = event_time(event)
        assert moment is not None
        times[event["source.ip"]].append(moment)
    return {
        ip
        for ip, seen in times.items()
        if any(sum(1 for t in seen if start <= t <= start + span) >= threshold for start in seen)
    }


@pytest.mark.skipif(not OPENSSH.is_file(), reason="shared loghub data not present")
def test_openssh_brute_force() -> None:
    body = """rules: [ssh_failed]
group-by: [source.ip]
timespan: 5m
condition: {gte: 10}"""
    ruleset = load(correlation("event_count", body))
    events = list(AuthLogReader().read(OPENSSH))
    engine: CorrelationEngine = ruleset.correlation_engine()
    hits: list[CorrelationHit] = []
    for event in events:
        hits.extend(engine.feed(event, ruleset.match(event)))
    flagged = {hit.group["source.ip"] for hit in hits}

    assert {"183.62.140.253", "187.141.143.180"} <= flagged
    failures = [e for e in events if ruleset.rules[0] in ruleset.match(e)]
    assert flagged == _brute_force_sources(failures, 10, 300)
    by_ip: dict[str, int] = defaultdict(int)
    for hit in hits:
        by_ip[hit.group["source.ip"]] += 1
    # 286 failures from 183.62.140.253: every hit uses up 10 of them.
    assert 1 <= by_ip["183.62.140.253"] <= 28
