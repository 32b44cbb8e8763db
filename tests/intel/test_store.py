"""The indicator store: imports with counts, updates, expiry, allow-list, and the loaded index."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.intel.data import FEODO, MISP_FEEDS, STIX_SCHEMAS, XORIST
from vigil.intel import FeedError, Indicator, IntelStore, InvalidIndicator, import_feed
from vigil.intel import IndicatorType as T


@pytest.fixture
def store(tmp_path: Path) -> Iterator[IntelStore]:
    opened = IntelStore.open(tmp_path / "server")
    yield opened
    opened.close()


@pytest.mark.parametrize(
    ("kind", "path", "counts"),
    [
        ("csv", FEODO, {"added": 28}),
        ("misp", XORIST, {"added": 5, "filtered": 4}),
        ("misp", MISP_FEEDS / "misp", {"filtered": 1}),
        ("stix", STIX_SCHEMAS / "threat-reports" / "apt1.json", {"added": 10, "unsupported": 2}),
        ("stix", STIX_SCHEMAS / "threat-reports" / "poisonivy.json", {"added": 44, "invalid": 1}),
    ],
    ids=lambda v: getattr(v, "name", None),
)
def test_import_counts(store: IntelStore, kind: str, path: Path, counts: dict[str, int]) -> None:
    report = import_feed(store, path, kind)
    zero = dict.fromkeys(("added", "updated", "unchanged", "unsupported", "invalid", "filtered"), 0)
    assert report.counts() == {**zero, **counts}
    assert len(report.unsupported) == counts.get("unsupported", 0)


def test_poisonivy_names_some_values_in_several_indicators(store: IntelStore) -> None:
    # 66 values in 25 patterns, 44 distinct: shared C2 addresses are one row per feed.
    report = import_feed(store, STIX_SCHEMAS / "threat-reports" / "poisonivy.json", "stix")
    assert len(report.added) == 44 and sum(store.count().values()) == 44


def test_reimport_updates_only_what_changed(store: IntelStore, tmp_path: Path) -> None:
    import_feed(store, FEODO, "csv", source="feodo")
    again = import_feed(store, FEODO, "csv", source="feodo")
    assert again.counts()["unchanged"] == 28 and not again.added and not again.updated

    changed = tmp_path / "feodo.csv"
    changed.write_text(FEODO.read_text().replace('"1194","online"', '"443","online"'))
    third = import_feed(store, changed, "csv", source="feodo")
    assert [(i.value, i.port) for i in third.updated] == [("192.9.135.73", 443)]
    assert store.indicators(value="192.9.135.73")[0].port == 443


def test_round_trip_keeps_every_field(store: IntelStore) -> None:
    moment = datetime(2024, 4, 4, 7, 3, 3, tzinfo=UTC)
    original = Indicator(
        T.DOMAIN,
        "evil.example",
        "feed",
        90,
        moment,
        moment,
        moment + timedelta(days=30),
        ("a", "b"),
        "indicator--1",
        443,
        "C2",
    )
    store.add([original])
    assert store.indicators(kind=T.DOMAIN) == [original]
    assert store.indicators(source="other") == []


def test_expire_removes_what_is_past_valid_until(store: IntelStore) -> None:
    now = datetime.now(UTC)
    store.add(
        [
            Indicator(T.IPV4, "203.0.113.1", "f", valid_until=now - timedelta(days=1)),
            Indicator(T.IPV4, "203.0.113.2", "f", valid_until=now + timedelta(days=1)),
            Indicator(T.IPV4, "203.0.113.3", "f"),
        ]
    )
    assert len(store.load_index()) == 2
    assert store.expire(now) == 1
    assert [i.value for i in store.indicators()] == ["203.0.113.2", "203.0.113.3"]


def test_allow_list_and_loaded_index(store: IntelStore) -> None:
    import_feed(store, FEODO, "csv")
    store.allow("192.9.135.0/24", reason="our scanner")
    store.allow("Example.ORG", reason="test domain")
    store.add([Indicator(T.DOMAIN, "www.example.org", "f")])
    index = store.load_index()
    assert len(index) == 27
    assert index.match({"destination.ip": "192.9.135.73"}) == []
    assert index.match({"dns.question.name": "www.example.org"}) == []
    assert len(index.match({"destination.ip": "85.239.243.155"})) == 1
    assert {(e.type, e.value) for e in store.allow_list()} == {
        (T.CIDR, "192.9.135.0/24"),
        (T.DOMAIN, "example.org"),
    }
    assert store.disallow("192.9.135.0/24") and not store.disallow("192.9.135.0/24")
    assert len(store.load_index()) == 28


def test_allow_rejects_invalid_values(store: IntelStore) -> None:
    with pytest.raises(InvalidIndicator, match="not an IP address"):
        store.allow("300.1.1.1", kind=T.IPV4)


def test_remove_source(store: IntelStore) -> None:
    import_feed(store, FEODO, "csv", source="feodo")
    import_feed(store, XORIST, "misp", source="circl")
    assert store.remove_source("feodo") == 28
    assert store.count() == {"filename": 1, "md5": 1, "sha1": 1, "sha256": 1, "regkey": 1}


def test_unknown_kind_names_the_known_ones(store: IntelStore) -> None:
    with pytest.raises(FeedError, match="use one of csv, list, misp, stix, taxii"):
        import_feed(store, FEODO, "openioc")
