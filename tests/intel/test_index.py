"""The matcher: each kind of value in the fields it belongs to, expiry and allow-lists."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.intel.data import FEODO, STIX_SCHEMAS, XORIST
from vigil.intel import AllowEntry, AllowList, Indicator, IntelIndex, intel_alert
from vigil.intel import IndicatorType as T
from vigil.intel.feeds import REGISTRY

SHA = "ef537f25c895bfa782526529a9b63d97aa631564d5d789c2b765448c8635fb6c"


def ind(kind: T, value: str, **context: Any) -> Indicator:
    return Indicator(kind, value, "test", **context)


INDEX = IntelIndex(
    [
        ind(T.SHA256, SHA),
        ind(T.MD5, "0749bae92ca336a02c83d126e04ec628"),
        ind(T.IPV4, "203.0.113.7"),
        ind(T.IPV6, "2001:db8::7"),
        ind(T.CIDR, "198.51.100.0/24"),
        ind(T.CIDR, "2001:db8:aa00::/40"),
        ind(T.DOMAIN, "evil.example"),
        ind(T.URL, "http://x4z9arb.cn/4712/"),
        ind(T.FILENAME, "3Z4wnG9603it23y.exe"),
    ]
)


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"process.hash.sha256": SHA}, [("process.hash.sha256", SHA)]),
        ({"file.hash.sha256": SHA.upper()}, [("file.hash.sha256", SHA)]),
        (
            {"process.hash.md5": "0749bae92ca336a02c83d126e04ec628"},
            [("process.hash.md5", "0749bae92ca336a02c83d126e04ec628")],
        ),
        ({"destination.ip": "203.0.113.7"}, [("destination.ip", "203.0.113.7")]),
        ({"source.ip": "::ffff:203.0.113.7"}, [("source.ip", "203.0.113.7")]),
        ({"destination.ip": "2001:DB8:0::7"}, [("destination.ip", "2001:db8::7")]),
        ({"destination.ip": "198.51.100.254"}, [("destination.ip", "198.51.100.0/24")]),
        ({"destination.ip": "2001:db8:aaff::1"}, [("destination.ip", "2001:db8:aa00::/40")]),
        (
            {"dns.resolved_ip": ["192.0.2.1", "198.51.100.1"]},
            [("dns.resolved_ip", "198.51.100.0/24")],
        ),
        ({"dns.question.name": "evil.example"}, [("dns.question.name", "evil.example")]),
        ({"dns.question.name": "A.B.Evil.Example."}, [("dns.question.name", "evil.example")]),
        ({"destination.domain": "cdn.evil.example"}, [("destination.domain", "evil.example")]),
        ({"url.full": "HTTP://x4z9arb.cn:80/4712/"}, [("url.full", "http://x4z9arb.cn/4712/")]),
        (
            {"url.original": "http://x4z9arb.cn/4712/"},
            [("url.original", "http://x4z9arb.cn/4712/")],
        ),
        ({"process.name": "3z4wng9603it23y.EXE"}, [("process.name", "3Z4wnG9603it23y.exe")]),
        ({"file.name": "3Z4wnG9603it23y.exe"}, [("file.name", "3Z4wnG9603it23y.exe")]),
    ],
    ids=lambda v: str(v)[:40] if isinstance(v, dict) else "",
)
def test_matches(event: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert [(h.field, h.indicator.value) for h in INDEX.match(event)] == expected


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"destination.ip": "203.0.113.8"},
        {"destination.ip": "198.51.101.1"},
        {"destination.ip": "2001:db8:ab00::1"},
        {"destination.ip": "not an ip"},
        {"dns.question.name": "notevil.example"},
        {"dns.question.name": "example"},
        {"dns.question.name": "evil.example.com"},
        {"url.full": "http://x4z9arb.cn/4712/other"},
        {"process.command_line": f"sha256sum {SHA}"},
        {"process.hash.sha256": None, "destination.ip": 42},
    ],
    ids=lambda v: str(v)[:40],
)
def test_does_not_match(event: dict[str, Any]) -> None:
    assert INDEX.match(event) == []


def test_empty_index_reads_no_field() -> None:
    assert len(IntelIndex([])) == 0 and IntelIndex([]).fields == ()


def test_only_fields_of_indexed_kinds_are_read() -> None:
    index = IntelIndex([ind(T.DOMAIN, "evil.example")])
    assert set(index.fields) == {
        "dns.question.name",
        "destination.domain",
        "url.domain",
        "server.domain",
    }


def test_expired_indicators_do_not_match() -> None:
    now = datetime.now(UTC)
    index = IntelIndex(
        [
            ind(T.IPV4, "203.0.113.1", valid_until=now - timedelta(seconds=1)),
            ind(T.IPV4, "203.0.113.2", valid_until=now + timedelta(days=1)),
        ]
    )
    assert len(index) == 1
    assert index.match({"destination.ip": "203.0.113.1"}) == []
    assert len(index.match({"destination.ip": "203.0.113.2"})) == 1
    # Expiry is checked again on each hit: an index built earlier stops matching.
    built_earlier = IntelIndex(
        [ind(T.IPV4, "203.0.113.3", valid_until=now - timedelta(seconds=1))],
        now=now - timedelta(hours=1),
    )
    assert len(built_earlier) == 1
    assert built_earlier.match({"destination.ip": "203.0.113.3"}) == []


def test_allow_list_suppresses_hits() -> None:
    allow = AllowList(
        [
            AllowEntry(T.CIDR, "198.51.100.128/25"),
            AllowEntry(T.DOMAIN, "good.evil.example"),
            AllowEntry(T.SHA256, SHA),
            AllowEntry(T.IPV4, "203.0.113.7"),
        ]
    )
    index = IntelIndex(
        [
            ind(T.CIDR, "198.51.100.0/24"),
            ind(T.DOMAIN, "evil.example"),
            ind(T.SHA256, SHA),
            ind(T.IPV4, "203.0.113.7"),
        ],
        allow,
    )
    # An allow-listed indicator is not indexed at all.
    assert len(index) == 2
    assert index.match({"destination.ip": "198.51.100.200"}) == []
    assert len(index.match({"destination.ip": "198.51.100.1"})) == 1
    assert index.match({"dns.question.name": "www.good.evil.example"}) == []
    assert len(index.match({"dns.question.name": "bad.evil.example"})) == 1
    assert index.match({"process.hash.sha256": SHA, "destination.ip": "203.0.113.7"}) == []


def test_regkey_needs_key_and_data_on_windows_registry_events() -> None:
    index = IntelIndex(REGISTRY["misp"]().read(XORIST).indicators)
    key = "HKLM\\SOFTWARE\\Wow6432Node\\Microsoft\\Windows\\CurrentVersion\\Run"
    written = {
        "registry.path": key + "\\xorist",
        "registry.data.strings": ["%TEMP%\\3Z4wnG9603it23y.exe"],
    }
    assert [h.indicator.type for h in index.match(written)] == [T.REGKEY]
    # The Run key alone is where every autostart lives: no alert without the data.
    assert index.match({"registry.path": key + "\\OneDrive", "registry.data.strings": ["x"]}) == []


def test_feodo_and_stix_c2_on_network_events() -> None:
    indicators = REGISTRY["csv"]().read(FEODO).indicators
    indicators += (
        REGISTRY["stix"]().read(STIX_SCHEMAS / "indicator-for-c2-ip-address.json").indicators
    )
    index = IntelIndex(indicators)
    hits = index.match({"destination.ip": "192.9.135.73", "destination.port": 1194})
    assert [(h.indicator.tags, h.indicator.port) for h in hits] == [(("pikabot",), 1194)]
    assert [h.indicator.source for h in index.match({"destination.ip": "10.0.0.0"})] == [
        "indicator-for-c2-ip-address.json"
    ]
    assert index.match({"destination.ip": "192.168.2.6", "source.ip": "10.0.0.5"}) == []


def test_intel_alert_has_the_shape_of_rule_alerts() -> None:
    event = {
        "@timestamp": "2024-04-04T00:00:00Z",
        "host.id": "h1",
        "process.entity_id": "e1",
        "destination.ip": "203.0.113.7",
    }
    alert = intel_alert(INDEX.match(event), event, "web-1")
    assert alert["rule"]["id"] == "intel:ipv4:203.0.113.7" and alert["rule"]["level"] == "medium"
    assert alert["host"] == {"id": "h1", "name": "web-1"} and alert["entity_id"] == "e1"
    assert alert["intel"][0]["field"] == "destination.ip"
    assert alert["event"]["destination"]["ip"] == "203.0.113.7"
