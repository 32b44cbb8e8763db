"""Feed readers on the real shared feeds: what each yields and what it skips, with reasons."""

from __future__ import annotations

import inspect
from collections import Counter
from pathlib import Path

import pytest

from tests.intel.data import FEODO, MISP_FEEDS, STIX_DOCS, STIX_SCHEMAS, THREAT_INTEL, XORIST
from vigil.intel import FeedError
from vigil.intel import IndicatorType as T
from vigil.intel.errors import UnsupportedPattern
from vigil.intel.feeds import REGISTRY, FeedResult
from vigil.intel.feeds.stix import observables


def read(kind: str, location: Path | str) -> FeedResult:
    return REGISTRY[kind]().read(location)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_reader_declarations(name: str) -> None:
    reader = REGISTRY[name]
    assert reader.name == name and reader.formats and reader.version
    assert inspect.getdoc(reader), f"feed reader {name} has no docstring"
    assert inspect.getdoc(reader.read), f"{name}.read has no docstring"


def test_the_readers_are_registered() -> None:
    assert {"stix", "taxii", "misp", "csv", "list"} <= set(REGISTRY)


def test_feodo_csv_gives_28_pikabot_ip_port_indicators() -> None:
    result = read("csv", FEODO)
    assert len(result.indicators) == 28 and not result.skipped
    assert {i.type for i in result.indicators} == {T.IPV4}
    assert all(i.tags == ("pikabot",) and i.description == "Pikabot" for i in result.indicators)
    assert all(i.port for i in result.indicators)
    first = result.indicators[0]
    assert (first.value, first.port, first.source) == (
        "192.9.135.73",
        1194,
        "feodotracker_ipblocklist_2024-04-04.csv",
    )
    assert (
        first.first_seen is not None and first.first_seen.isoformat() == "2023-05-23T17:51:44+00:00"
    )


def test_csv_header_in_a_comment_urlhaus_style(tmp_path: Path) -> None:
    feed = tmp_path / "urlhaus.csv"
    feed.write_text(
        "# URLhaus\n# id,dateadded,url,url_status,last_online,threat,tags,urlhaus_link,reporter\n"
        '"1","2024-04-04 07:00:00","http://EVIL.example/a.sh","online","","malware_download",'
        '"elf,mirai","https://urlhaus.abuse.ch/url/1/","x"\n'
        '"2","2024-04-04 07:00:00","not a url","online","","malware_download","","",""\n'
    )
    result = read("csv", feed)
    assert [(i.type, i.value) for i in result.indicators] == [(T.URL, "http://evil.example/a.sh")]
    assert set(result.indicators[0].tags) == {"elf", "mirai", "malware_download"}
    assert [s.reason for s in result.skipped] == ["invalid"]


def test_misp_xorist_event_gives_its_five_to_ids_indicators() -> None:
    result = read("misp", XORIST)
    got = {(i.type, i.value) for i in result.indicators}
    assert got == {
        (T.FILENAME, "3Z4wnG9603it23y.exe"),
        (T.MD5, "0749bae92ca336a02c83d126e04ec628"),
        (T.SHA1, "77b0c41b7d340b8a3d903f21347bbf06aa766b5b"),
        (T.SHA256, "b3c4ae251f8094fa15b510051835c657eaef2a6cea46075d3aec964b14a99f68"),
        (
            T.REGKEY,
            "software\\wow6432node\\microsoft\\windows\\currentversion\\run"
            "|%temp%\\3z4wng9603it23y.exe",
        ),
    }
    # Links, a comment and free text are to_ids: false.
    assert Counter(s.reason for s in result.skipped) == {"filtered": 4}
    assert all(i.reference == "57c4445b-c548-4654-af0b-4be3950d210f" for i in result.indicators)
    assert "tlp:white" in result.indicators[0].tags


def test_misp_feed_reads_the_manifest_and_its_events() -> None:
    result = read("misp", MISP_FEEDS / "misp")
    # The one event of MISP's test feed holds only a to_ids: false link.
    assert result.indicators == []
    assert [s.reason for s in result.skipped] == ["filtered"]
    assert read("misp", MISP_FEEDS / "misp" / "manifest.json").skipped == result.skipped


def test_misp_feed_without_manifest_says_so(tmp_path: Path) -> None:
    with pytest.raises(FeedError, match="manifest.json"):
        read("misp", tmp_path)


@pytest.mark.parametrize(
    ("kind", "path", "values"),
    [
        ("csv", MISP_FEEDS / "csv" / "feed.csv", ["1.1.1.1", "1.0.0.1"]),
        ("list", MISP_FEEDS / "freetext" / "feed.txt", ["8.8.8.8", "8.8.4.4"]),
    ],
)
def test_plain_lists(kind: str, path: Path, values: list[str]) -> None:
    result = read(kind, path)
    assert [(i.type, i.value) for i in result.indicators] == [(T.IPV4, v) for v in values]


def test_plain_list_detects_types_and_skips_comments(tmp_path: Path) -> None:
    feed = tmp_path / "iocs.txt"
    feed.write_text(
        "# a comment\n; another\nEVIL.example.com  # trailing comment\n"
        "10.0.0.0/8, d41d8cd98f00b204e9800998ecf8427e\nnonsense\n"
    )
    result = read("list", feed)
    assert [(i.type, i.value) for i in result.indicators] == [
        (T.DOMAIN, "evil.example.com"),
        (T.CIDR, "10.0.0.0/8"),
        (T.MD5, "d41d8cd98f00b204e9800998ecf8427e"),
    ]
    assert [(s.item, s.reason) for s in result.skipped] == [("nonsense", "invalid")]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            STIX_DOCS / "malware-indicator-for-file-hash.json",
            [(T.SHA256, "ef537f25c895bfa782526529a9b63d97aa631564d5d789c2b765448c8635fb6c")],
        ),
        (STIX_SCHEMAS / "indicator-for-c2-ip-address.json", [(T.IPV4, "10.0.0.0")]),
        (STIX_DOCS / "indicator-for-malicious-url.json", [(T.URL, "http://x4z9arb.cn/4712/")]),
        (STIX_DOCS / "sighting-of-an-indicator.json", [(T.URL, "http://paypa1.banking.com/")]),
        (STIX_SCHEMAS / "indicator-to-campaign-relationship.json", [(T.IPV4, "10.0.0.0")]),
    ],
    ids=lambda v: getattr(v, "name", ""),
)
def test_stix_examples(path: Path, expected: list[tuple[T, str]]) -> None:
    result = read("stix", path)
    assert [(i.type, i.value) for i in result.indicators] == expected
    assert all(i.reference.startswith("indicator--") for i in result.indicators)


def test_stix_malware_family_from_indicates_relationship() -> None:
    result = read("stix", STIX_DOCS / "malware-indicator-for-file-hash.json")
    assert "poison ivy" in result.indicators[0].tags


def test_stix_apt1_report() -> None:
    result = read("stix", STIX_SCHEMAS / "threat-reports" / "apt1.json")
    assert Counter(i.type for i in result.indicators) == {T.CIDR: 4, T.DOMAIN: 3, T.MD5: 3}
    # Two x509 certificate patterns AND issuer with serial number: reported, not guessed at.
    assert [s.reason for s in result.skipped] == ["unsupported", "unsupported"]
    assert all("x509-certificate" in s.item for s in result.skipped)


def test_stix_poisonivy_report_keeps_the_valid_half_of_an_or() -> None:
    result = read("stix", STIX_SCHEMAS / "threat-reports" / "poisonivy.json")
    assert Counter(i.type for i in result.indicators) == {T.IPV4: 40, T.DOMAIN: 24, T.FILENAME: 2}
    assert [(s.reason, s.detail) for s in result.skipped] == [
        ("invalid", "'domain autuo.xicp.net' is not a domain name")
    ]
    assert (T.IPV4, "60.10.1.115") in {(i.type, i.value) for i in result.indicators}


def test_every_shared_stix_example_reads() -> None:
    files = sorted((THREAT_INTEL / "stix21-examples").rglob("*.json"))
    assert len(files) == 17
    for path in files:
        result = read("stix", path)
        assert all(s.reason in ("unsupported", "invalid") for s in result.skipped), path


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("[ipv4-addr:value = '1.2.3.4'] FOLLOWEDBY [ipv4-addr:value = '5.6.7.8']", "FOLLOWEDBY"),
        ("[ipv4-addr:value = '1.2.3.4'] AND [domain-name:value = 'a.example']", "AND"),
        ("[ipv4-addr:value = '1.2.3.4'] REPEATS 5 TIMES", "qualifier"),
        ("[file:name = 'a' AND file:size = 3]", "AND"),
        ("[email-message:subject MATCHES '^x']", "MATCHES"),
        ("[ipv4-addr:value != '1.2.3.4']", "NOT ="),
        ("[process:name = 'x']", "process:name is not matched"),
        ("not a pattern", "does not parse"),
    ],
)
def test_unsupported_patterns_are_named(pattern: str, message: str) -> None:
    with pytest.raises(UnsupportedPattern, match=message):
        observables(pattern)


def test_or_of_observations_and_comparisons() -> None:
    pattern = (
        "[domain-name:value = 'a.example' OR ipv4-addr:value = '1.2.3.4'] OR "
        "[file:hashes.'SHA-1' = 'da39a3ee5e6b4b0d3255bfef95601890afd80709']"
    )
    assert observables(pattern) == [
        (T.DOMAIN, "a.example"),
        (T.IPV4, "1.2.3.4"),
        (T.SHA1, "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
    ]


def test_not_json_says_what_was_expected(tmp_path: Path) -> None:
    bad = tmp_path / "bundle.json"
    bad.write_text("<html>")
    with pytest.raises(FeedError, match="expected a STIX bundle"):
        read("stix", bad)
    with pytest.raises(FeedError, match="cannot read feed file"):
        read("csv", tmp_path / "missing.csv")
    # JSON, but not STIX: every STIX object and bundle has a type.
    for text in ("{}", '{"objects": []}', '{"type": 5}'):
        bad.write_text(text)
        with pytest.raises(FeedError, match=r"holds no STIX bundle or object \(no 'type'\)"):
            read("stix", bad)
