"""Retro-hunts: the generated SQL runs as a tenant hunt over real stored telemetry."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.intel.data import FEODO, STIX_SCHEMAS, XORIST
from vigil.hunt.sql import run_hunt
from vigil.intel import AllowEntry, AllowList, Indicator, IntelStore, import_feed, retro_hunt
from vigil.intel import IndicatorType as T
from vigil.store.state import DEFAULT_TENANT
from vigil.store.telemetry import TelemetryStore

SHA = "ef537f25c895bfa782526529a9b63d97aa631564d5d789c2b765448c8635fb6c"
EVENTS: list[dict[str, Any]] = [
    {"destination.ip": "192.9.135.73", "process.name": "curl"},
    {"destination.ip": "58.247.3.3"},
    {"dns.question.name": "www.HugeSoft.org.", "dns.resolved_ip": ["192.0.2.10"]},
    {"file.hash.sha256": SHA, "file.name": "payload"},
    {"process.hash.md5": "0749bae92ca336a02c83d126e04ec628"},
    {"dns.resolved_ip": ["192.0.2.1", "112.65.1.1"]},
    {"destination.ip": "2001:db8:aa01::5"},
    {"url.full": "http://X4Z9ARB.cn/4712/"},
    {"process.name": "3Z4WNG9603IT23Y.EXE"},
    # Look-alikes that must not come back.
    {"destination.ip": "8.8.8.8", "dns.question.name": "nothugesoft.org"},
    {"destination.ip": "2001:db9::1", "process.name": "bash"},
]


@pytest.fixture
def telemetry(tmp_path: Path) -> Iterator[TelemetryStore]:
    store = TelemetryStore(tmp_path / "telemetry.duckdb")
    events = [
        {"@timestamp": f"2024-01-01T00:00:{n:02d}Z", "event.sequence": n + 1, **e}
        for n, e in enumerate(EVENTS)
    ]
    store.commit_batch(DEFAULT_TENANT, "agent", "epoch", events)
    yield store
    store.close()


def sightings(
    telemetry: TelemetryStore, indicators: list[Indicator], **kw: Any
) -> list[tuple[int, str]]:
    hunt = retro_hunt(indicators, **kw)
    rows = run_hunt(telemetry, DEFAULT_TENANT, hunt.sql)["rows"]
    return [
        (flat["event.sequence"], hit.indicator.value)
        for flat, hits in hunt.confirm(rows)
        for hit in hits
    ]


def test_retro_hunt_finds_past_sightings_of_imported_feeds(
    telemetry: TelemetryStore, tmp_path: Path
) -> None:
    store = IntelStore.open(tmp_path / "server")
    added: list[Indicator] = []
    for kind, path in [
        ("csv", FEODO),
        ("stix", STIX_SCHEMAS / "threat-reports" / "apt1.json"),
        ("misp", XORIST),
        ("stix", STIX_SCHEMAS / "indicators-for-C2-with-COA.json"),
    ]:
        added += import_feed(store, path, kind).added
    added += [
        Indicator(T.CIDR, "2001:db8:aa00::/40", "t"),
        Indicator(T.URL, "http://x4z9arb.cn/4712/", "t"),
    ]
    assert sightings(telemetry, added) == [
        (1, "192.9.135.73"),
        (2, "58.246.0.0/15"),
        (3, "hugesoft.org"),
        (4, SHA),
        (5, "0749bae92ca336a02c83d126e04ec628"),
        (6, "112.64.0.0/15"),
        (7, "2001:db8:aa00::/40"),
        (8, "http://x4z9arb.cn/4712/"),
        (9, "3Z4wnG9603it23y.exe"),
    ]
    store.close()


def test_retro_hunt_honours_since_and_allow_list(telemetry: TelemetryStore) -> None:
    indicators = [Indicator(T.IPV4, "192.9.135.73", "t"), Indicator(T.CIDR, "58.246.0.0/15", "t")]
    later = datetime(2024, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert sightings(telemetry, indicators, since=later) == [(2, "58.246.0.0/15")]
    allow = AllowList([AllowEntry(T.IPV4, "58.247.3.3")])
    assert sightings(telemetry, indicators, allow=allow) == [(1, "192.9.135.73")]


def test_nothing_to_hunt_gives_no_sql() -> None:
    assert retro_hunt([]).sql == ""
