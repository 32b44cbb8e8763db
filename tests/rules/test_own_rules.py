"""Vigil's own rules (rules/): each fires on its cases, misses its near misses, and is tagged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from vigil.detect import Rule, RuleSet, builtin_rules_dir

CASES_FILE = Path(__file__).with_name("cases.yml")
RULES_DIR = Path(__file__).resolve().parents[2] / "rules"

PROCESS_START = {
    "event.kind": "event",
    "event.category": ["process"],
    "event.type": ["start"],
    "host.os.type": "linux",
}


def load_cases() -> dict[str, dict[str, list[dict[str, Any]]]]:
    cases = yaml.safe_load(CASES_FILE.read_text(encoding="utf-8"))
    assert isinstance(cases, dict), f"{CASES_FILE} must map rule ids to cases"
    return cases


CASES = load_cases()
OWN = RuleSet.from_paths([RULES_DIR])
RULES_BY_ID: dict[str, Rule] = {rule.id: rule for rule in OWN.rules}


def as_event(fields: dict[str, Any]) -> dict[str, Any]:
    """A case's fields on top of a Linux process start; process.args derived if absent."""
    event = {**PROCESS_START, **fields}
    command_line = event.get("process.command_line")
    if isinstance(command_line, str):
        event.setdefault("process.args", command_line.split())
    return event


def params(kind: str) -> list[Any]:
    return [
        pytest.param(rule_id, as_event(fields), id=f"{rule_id[:8]}-{kind}-{n}")
        for rule_id, entry in CASES.items()
        for n, fields in enumerate(entry.get(kind) or [])
    ]


def test_all_own_rules_load() -> None:
    assert [str(error) for error in OWN.errors] == []
    assert len(OWN.rules) >= 15


def test_builtin_rules_dir_holds_the_same_rules() -> None:
    builtin = RuleSet.from_paths([builtin_rules_dir()])
    assert {rule.id for rule in builtin.rules} == set(RULES_BY_ID)


@pytest.mark.parametrize(("rule_id", "event"), params("fire"))
def test_rule_fires(rule_id: str, event: dict[str, Any]) -> None:
    assert rule_id in RULES_BY_ID, f"cases.yml names unknown rule {rule_id}"
    assert RULES_BY_ID[rule_id] in OWN.match(event)


@pytest.mark.parametrize(("rule_id", "event"), params("miss"))
def test_rule_misses_near_miss(rule_id: str, event: dict[str, Any]) -> None:
    assert rule_id in RULES_BY_ID, f"cases.yml names unknown rule {rule_id}"
    assert RULES_BY_ID[rule_id] not in OWN.match(event)


@pytest.mark.parametrize("rule", OWN.rules, ids=lambda rule: Path(rule.path).stem)
def test_rule_is_complete(rule: Rule) -> None:
    assert rule.attack_techniques, f"{rule.path}: add an attack.tXXXX tag"
    assert rule.attack_tactics, f"{rule.path}: add an ATT&CK tactic tag"
    assert rule.logsource.get("product") == "linux"
    assert rule.description and rule.level in ("low", "medium", "high", "critical")
    document = yaml.safe_load(Path(rule.path).read_text(encoding="utf-8"))
    assert document["author"] == "Vigil" and document["status"] and document["date"]
    entry = CASES.get(rule.id) or {}
    assert entry.get("fire"), f"{rule.path}: add an event that fires it to {CASES_FILE.name}"
    assert entry.get("miss"), f"{rule.path}: add a near miss to {CASES_FILE.name}"


def test_rule_ids_are_unique() -> None:
    assert len(RULES_BY_ID) == len(OWN.rules)


def test_docs_list_every_own_rule() -> None:
    doc = (RULES_DIR.parent / "docs" / "rules.md").read_text(encoding="utf-8")
    for rule in OWN.rules:
        assert Path(rule.path).name in doc, f"docs/rules.md lacks {rule.path}"


BENIGN = [
    ("/usr/bin/ls", "ls -la /home/alice"),
    ("/usr/bin/git", "git pull --rebase"),
    ("/usr/bin/apt-get", "apt-get install -y nginx"),
    ("/usr/bin/systemctl", "systemctl restart nginx"),
    ("/usr/bin/journalctl", "journalctl -u auditd --since today"),
    ("/usr/sbin/auditctl", "auditctl -s"),
    ("/usr/bin/chmod", "chmod 600 /home/alice/.ssh/authorized_keys"),
    ("/usr/bin/ssh-keygen", "ssh-keygen -t ed25519 -f /home/alice/.ssh/id_ed25519"),
    ("/usr/bin/crontab", "crontab -l"),
    ("/usr/bin/python3", "python3 manage.py runserver"),
    ("/usr/bin/curl", "curl -fsSL -o /tmp/get-docker.sh https://get.docker.com"),
    ("/usr/bin/tar", "tar xzf /tmp/release.tar.gz -C /opt/app"),
    ("/usr/sbin/useradd", "useradd -m -s /bin/bash deploy"),
    ("/usr/bin/bash", "bash -c 'history | tail -n 5'"),
]


@pytest.mark.parametrize(("executable", "command_line"), BENIGN, ids=[c for _, c in BENIGN])
def test_everyday_commands_fire_no_own_rule(executable: str, command_line: str) -> None:
    event = as_event({"process.executable": executable, "process.command_line": command_line})
    assert [rule.title for rule in OWN.match(event)] == []
