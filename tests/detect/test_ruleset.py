"""Loading, log-source routing, field mapping, ATT&CK tags and load errors."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

import vigil.detect
from vigil.detect import LogSource, RuleSet, builtin_rules_dir, event_logsources
from vigil.detect.fieldmap import default_fieldmap
from vigil.detect.rules import attack_tags
from vigil.logsources.windows import windows_event

from .helpers import network_event, one_rule, process_event, rule_text

CURL = {"selection": {"Image|endswith": "/curl"}, "condition": "selection"}


def test_public_names_are_exported() -> None:
    public = {name for name in dir(vigil.detect) if not name.startswith("_")}
    exported = {name for name in public if name[0].isupper() or name.endswith(("_dir", "sources"))}
    assert exported <= set(vigil.detect.__all__)


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        pytest.param(process_event("/bin/ls", "ls"), [("linux", "process_creation")], id="proc"),
        pytest.param(
            {"event.category": "process", "event.type": "start"},
            [("linux", "process_creation")],
            id="scalars-no-os",
        ),
        pytest.param(
            {"event.category": ["file"], "event.type": ["creation"], "host.os.type": "linux"},
            [("linux", "file_event")],
            id="file",
        ),
        pytest.param(network_event(), [("linux", "network_connection")], id="network"),
        pytest.param(
            network_event(**{"dns.question.name": "x.org"}), [("linux", "dns_query")], id="dns"
        ),
        pytest.param({"event.category": ["host"]}, [("linux", None)], id="product-only"),
        pytest.param(
            {"event.category": ["process"], "event.type": ["start"], "host.os.type": "windows"},
            [("windows", "process_creation")],
            id="windows",
        ),
    ],
)
def test_event_logsources(event: dict[str, Any], expected: list[tuple[str, str | None]]) -> None:
    assert [(s.product, s.category) for s in event_logsources(event)] == expected


def test_service_from_event_module() -> None:
    sources = event_logsources({"event.module": "auditd", "event.category": ["process"]})
    assert sources == [LogSource("linux", None, "auditd")]


@pytest.mark.parametrize(
    ("logsource", "event", "expected"),
    [
        pytest.param(
            {"product": "linux", "category": "process_creation"},
            {"event.category": ["file"], "event.type": ["creation"], "Image": "/bin/curl"},
            False,
            id="other-category",
        ),
        pytest.param(
            {"product": "linux"}, process_event("/bin/curl", "curl"), True, id="product-only"
        ),
        pytest.param(
            {"category": "process_creation"},
            process_event("/bin/curl", "curl"),
            True,
            id="category-only",
        ),
        pytest.param(
            {"product": "windows", "category": "process_creation"},
            process_event("/bin/curl", "curl"),
            False,
            id="other-product",
        ),
        pytest.param(
            {"product": "linux", "service": "auditd"},
            process_event("/bin/curl", "curl"),
            False,
            id="service-missing",
        ),
        pytest.param(
            {"product": "linux", "service": "auditd"},
            process_event("/bin/curl", "curl", **{"event.module": "auditd"}),
            True,
            id="service",
        ),
    ],
)
def test_rule_applies_only_to_its_logsource(
    logsource: dict[str, str], event: dict[str, Any], expected: bool
) -> None:
    ruleset = RuleSet.from_yaml(rule_text(CURL, logsource))
    assert ruleset.rules[0].matches(event) is expected
    assert bool(ruleset.match(event)) is expected


def test_index_only_offers_rules_of_the_event_logsource() -> None:
    text = "\n---\n".join(
        rule_text(CURL, logsource, title=name, id=str(uuid.UUID(int=n)))
        for n, (name, logsource) in enumerate(
            [
                ("proc", {"product": "linux", "category": "process_creation"}),
                ("file", {"product": "linux", "category": "file_event"}),
                ("net", {"product": "linux", "category": "network_connection"}),
                ("any-linux", {"product": "linux"}),
            ],
            start=1,
        )
    )
    ruleset = RuleSet.from_yaml(text)
    assert len(ruleset) == 4
    titles = [r.title for r in ruleset.candidates(process_event("/bin/curl", "curl"))]
    assert sorted(titles) == ["any-linux", "proc"]


def test_rule_metadata_and_attack_tags() -> None:
    text = rule_text(
        CURL,
        tags=["attack.execution", "attack.t1059.004", "attack.T1027", "attack.g0032", "cve.2021"],
        description="curl ran",
    )
    rule = RuleSet.from_yaml(text, path="mem.yml").rules[0]
    assert rule.id == "5b0bd0a8-61b1-4a5f-9c5e-8a0f0e0c2f11"
    assert (rule.title, rule.level, rule.description, rule.path) == (
        "test rule",
        "high",
        "curl ran",
        "mem.yml",
    )
    assert rule.attack_techniques == ("T1059.004", "T1027")
    assert rule.attack_tactics == ("execution",)
    assert rule.logsource == {"product": "linux", "category": "process_creation"}


def test_attack_tags_new_tactics() -> None:
    assert attack_tags(("attack.stealth", "attack.defense-evasion", "attack.s0002")) == (
        (),
        ("stealth", "defense-evasion"),
    )


def test_hashes_are_rebuilt_from_ecs_hash_fields() -> None:
    rule = one_rule({"selection": {"Hashes|contains": "SHA256=ABCD"}, "condition": "selection"})
    event = process_event("/bin/x", "x", **{"process.hash.sha256": "abcd", "process.hash.md5": "1"})
    assert rule.matches(event)
    assert not rule.matches(process_event("/bin/x", "x"))


def test_mapped_field_falls_back_to_raw_sigma_name() -> None:
    rule = one_rule(CURL)
    raw_sysmon = {"event.category": ["process"], "event.type": ["start"], "Image": "/bin/curl"}
    assert rule.matches(raw_sysmon)


BROKEN = [
    pytest.param(
        {"selection": {"Image|nosuchmodifier": "x"}, "condition": "selection"},
        "Unknown modifier",
        id="unknown-modifier",
    ),
    pytest.param(
        {"selection": {"Image": "x"}, "condition": "selection and missing"},
        "missing",
        id="undefined-detection",
    ),
    pytest.param(
        {"selection": {"Image": "x"}, "condition": "1 of filter_*"},
        "filter_",
        id="selector-matches-nothing",
    ),
    pytest.param(
        {"selection": {"Image|expand": "%programs%"}, "condition": "selection"},
        "placeholder %programs%",
        id="placeholder",
    ),
    pytest.param(
        {"selection": {"Timestamp|hour": 3}, "condition": "selection"},
        "SigmaTimestampPart",
        id="timestamp-part",
    ),
    pytest.param(
        {"selection": {"Image": "x"}, "condition": "selection |count() > 5"},
        "pipe syntax",
        id="aggregation",
    ),
]


@pytest.mark.parametrize(("detection", "message"), BROKEN)
def test_uncompilable_rule_is_reported_and_others_load(
    tmp_path: Path, detection: dict[str, Any], message: str
) -> None:
    (tmp_path / "bad.yml").write_text(rule_text(detection), encoding="utf-8")
    (tmp_path / "good.yml").write_text(rule_text(CURL), encoding="utf-8")

    ruleset = RuleSet.from_paths([tmp_path])

    assert len(ruleset.rules) == 1 and ruleset.rules[0].path.endswith("good.yml")
    assert len(ruleset.errors) == 1
    error = ruleset.errors[0]
    assert error.path.endswith("bad.yml")
    assert error.rule_id == "5b0bd0a8-61b1-4a5f-9c5e-8a0f0e0c2f11"
    assert message in error.message


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("title: [unclosed\n", id="bad-yaml"),
        pytest.param("title: no detection\nlogsource: {product: linux}\n", id="no-detection"),
    ],
)
def test_unreadable_file_is_reported(tmp_path: Path, text: str) -> None:
    (tmp_path / "bad.yaml").write_text(text, encoding="utf-8")
    ruleset = RuleSet.from_paths([tmp_path / "bad.yaml"])
    assert ruleset.rules == []
    assert len(ruleset.errors) == 1 and ruleset.errors[0].path.endswith("bad.yaml")
    assert ruleset.errors[0].message


def test_correlation_rule_is_linked_across_files(tmp_path: Path) -> None:
    correlation = """
title: many curls
id: 0e2b5a32-7f41-4f6c-9b7e-3c6f3d3c9a01
correlation:
  type: event_count
  rules: [5b0bd0a8-61b1-4a5f-9c5e-8a0f0e0c2f11]
  group-by: [User]
  timespan: 5m
  condition: {gte: 10}
"""
    (tmp_path / "a.yml").write_text(correlation, encoding="utf-8")
    (tmp_path / "b.yml").write_text(rule_text(CURL), encoding="utf-8")
    ruleset = RuleSet.from_paths([tmp_path])
    assert not ruleset.errors
    assert [c.id for c in ruleset.correlations] == ["0e2b5a32-7f41-4f6c-9b7e-3c6f3d3c9a01"]
    assert ruleset.correlations[0].rules == ("5b0bd0a8-61b1-4a5f-9c5e-8a0f0e0c2f11",)
    assert [rule.generate for rule in ruleset.rules] == [False]


def test_correlation_of_a_missing_rule_is_reported(tmp_path: Path) -> None:
    correlation = """
title: many curls
id: 0e2b5a32-7f41-4f6c-9b7e-3c6f3d3c9a01
correlation:
  type: event_count
  rules: [no-such-rule]
  group-by: [User]
  timespan: 5m
  condition: {gte: 10}
"""
    (tmp_path / "c.yml").write_text(rule_text(CURL) + "---\n" + correlation, encoding="utf-8")
    ruleset = RuleSet.from_paths([tmp_path])
    assert len(ruleset.rules) == 1 and ruleset.rules[0].generate
    assert ruleset.correlations == []
    assert [e.rule_id for e in ruleset.errors] == ["0e2b5a32-7f41-4f6c-9b7e-3c6f3d3c9a01"]
    assert "'no-such-rule', which is not loaded" in ruleset.errors[0].message


def test_a_folder_given_twice_or_inside_another_loads_once(tmp_path: Path) -> None:
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "curl.yml").write_text(rule_text(CURL), encoding="utf-8")
    ruleset = RuleSet.from_paths([tmp_path, tmp_path / "nested", tmp_path / "nested/curl.yml"])
    assert not ruleset.errors
    assert len(ruleset.match(process_event("/usr/bin/curl", "curl x"))) == 1


def test_a_second_rule_with_the_same_id_is_reported_and_the_first_kept(tmp_path: Path) -> None:
    (tmp_path / "a.yml").write_text(rule_text(CURL, title="first"), encoding="utf-8")
    (tmp_path / "b.yml").write_text(rule_text(CURL, title="copy"), encoding="utf-8")
    ruleset = RuleSet.from_paths([tmp_path])
    assert [rule.title for rule in ruleset.rules] == ["first"]
    [error] = ruleset.errors
    assert error.path.endswith("b.yml") and error.rule_id == "5b0bd0a8-61b1-4a5f-9c5e-8a0f0e0c2f11"
    assert f"an earlier rule in {tmp_path / 'a.yml'} has this id" in error.message
    assert "give one of them a new id" in error.message

    same_file = RuleSet.from_yaml(rule_text(CURL) + "---\n" + rule_text(CURL), path="two.yml")
    assert len(same_file.rules) == 1
    assert [e.message.split(";")[0] for e in same_file.errors] == [
        "an earlier rule in this file has this id"
    ]


def test_builtin_rules_dir_is_the_repo_rules_folder() -> None:
    folder = builtin_rules_dir()
    assert folder.is_dir()
    assert any(folder.rglob("*.yml"))


def test_docs_list_every_mapped_field() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "rules.md").read_text(encoding="utf-8")
    for section, entries in default_fieldmap().table().items():
        for sigma_field in entries:
            assert f"`{sigma_field}`" in doc, f"docs/rules.md lacks {section}.{sigma_field}"


IMPHASH_RULE = {
    "selection": {"Hashes|contains": "IMPHASH=BCCA3C247B619DCD13C8CDFF5F123932"},
    "condition": "selection",
}
SYSMON_HASHES = "SHA1=AB12,MD5=CD34,SHA256=EF56,IMPHASH=BCCA3C247B619DCD13C8CDFF5F123932"


def test_hashes_rule_reads_sysmon_text_and_ecs_members_alike() -> None:
    rule = one_rule(IMPHASH_RULE, {"product": "windows", "category": "process_creation"})
    sysmon = windows_event(
        data={"Image": r"C:\t\PetitPotam.exe", "Hashes": SYSMON_HASHES},
        event_id=1,
        channel="Microsoft-Windows-Sysmon/Operational",
        provider="Microsoft-Windows-Sysmon",
        computer="pc",
        timestamp=None,
        path="x.evtx",
    )
    # The reader splits the text into ECS fields; the rule still sees Sysmon's whole text.
    assert sysmon["process.pe.imphash"] == "BCCA3C247B619DCD13C8CDFF5F123932"
    assert rule.matches(sysmon)
    # An event that only has the ECS members (Vigil's agent, Winlogbeat) is rebuilt from them.
    ecs_only = {k: v for k, v in sysmon.items() if k != "Hashes"}
    assert rule.matches(ecs_only)
    ecs_only["process.pe.imphash"] = "0" * 32
    assert not rule.matches(ecs_only)
