"""Placeholders (``field|expand: '%name%'``) resolved from configured value lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.detect import DetectError, RuleSet, load_placeholders

from .helpers import process_event, rule_text

EXPAND = {
    "selection": {"Image|expand": "%tools%", "User|expand": "%admins%"},
    "condition": "selection",
}


def test_placeholders_expand_to_any_of_their_values() -> None:
    values = {"tools": ["/usr/bin/nmap", "*/masscan"], "admins": ["root"]}
    ruleset = RuleSet.from_yaml(rule_text(EXPAND), placeholders=values)
    assert not ruleset.errors
    assert ruleset.match(process_event("/usr/bin/nmap", "nmap", **{"user.name": "root"}))
    assert ruleset.match(process_event("/opt/masscan", "masscan", **{"user.name": "ROOT"}))
    assert not ruleset.match(process_event("/usr/bin/nmap", "nmap", **{"user.name": "bob"}))
    assert not ruleset.match(process_event("/bin/ls", "ls", **{"user.name": "root"}))


def test_placeholder_inside_a_value_and_in_a_regex() -> None:
    detection = {
        "selection": {"CommandLine|expand": "* --target %hosts%", "Image|re|expand": "/%dirs%/"},
        "condition": "selection",
    }
    values = {"hosts": ["db1", "db2"], "dirs": ["tmp", "dev/shm"]}
    ruleset = RuleSet.from_yaml(rule_text(detection), placeholders=values)
    assert not ruleset.errors
    assert ruleset.match(process_event("/dev/shm/x", "/dev/shm/x --target db2"))
    assert not ruleset.match(process_event("/dev/shm/x", "/dev/shm/x --target db3"))
    assert not ruleset.match(process_event("/home/x", "/home/x --target db1"))


def test_unresolved_placeholder_names_it_and_how_to_give_it(tmp_path: Path) -> None:
    (tmp_path / "r.yml").write_text(rule_text(EXPAND), encoding="utf-8")
    ruleset = RuleSet.from_paths([tmp_path], placeholders={"tools": ["nmap"]})
    assert ruleset.rules == []
    [error] = ruleset.errors
    assert error.path.endswith("r.yml") and error.rule_id
    assert "placeholder %admins% has no values" in error.message
    assert "--placeholders FILE" in error.message and "placeholders=" in error.message


def test_placeholders_file(tmp_path: Path) -> None:
    path = tmp_path / "placeholders.yml"
    path.write_text("tools: [/usr/bin/nmap, /usr/bin/zmap]\nadmins: root\nports: [22, 80]\n")
    assert load_placeholders(path) == {
        "tools": ["/usr/bin/nmap", "/usr/bin/zmap"],
        "admins": ["root"],
        "ports": ["22", "80"],
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("- a\n- b\n", "must be a YAML mapping", id="list"),
        pytest.param("tools: [{a: 1}]\n", "plain values", id="nested"),
        pytest.param("tools: [a\n", "cannot read placeholders file", id="bad-yaml"),
    ],
)
def test_bad_placeholders_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "placeholders.yml"
    path.write_text(text)
    with pytest.raises(DetectError, match=message):
        load_placeholders(path)
