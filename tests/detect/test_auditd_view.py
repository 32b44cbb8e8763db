"""SigmaHQ's auditd rules on the agent's exec events, through their EXECVE view."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.detect import RuleSet
from vigil.detect.auditd_view import execve_view, is_auditd_rule

AUDITD = Path(__file__).resolve().parents[2].parent / "shared/data/sigma/rules/linux/auditd"


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return RuleSet.from_paths([AUDITD])


def exec_event(*args: str) -> dict[str, object]:
    return {
        "@timestamp": "2026-12-03T10:00:00Z",
        "event.action": "exec",
        "event.category": ["process"],
        "event.type": ["start"],
        "process.args": list(args),
        "process.executable": f"/usr/bin/{args[0]}",
        "process.command_line": " ".join(args),
    }


@pytest.mark.parametrize(
    ("args", "title"),
    [
        pytest.param(
            ("dd", "if=/dev/zero", "bs=1", "count=1"), "Binary Padding - Linux", id="padding"
        ),
        pytest.param(
            ("touch", "-a", "-t", "197001010000.00", "/tmp/x"),
            "File Time Attribute Change - Linux",
            id="timestomp",
        ),
        pytest.param(
            ("chattr", "-i", "/tmp/x"), "Remove Immutable File Attribute - Auditd", id="chattr"
        ),
    ],
)
def test_auditd_rules_fire_on_the_view(rules: RuleSet, args: tuple[str, ...], title: str) -> None:
    view = execve_view(exec_event(*args))
    assert view is not None and view["type"] == "EXECVE" and view["a0"] == args[0]
    fired = [r for r in rules.match(view) if is_auditd_rule(r.logsource)]
    assert title in [r.title for r in fired]


def test_writing_the_padding_to_a_named_file_is_not_padding(rules: RuleSet) -> None:
    view = execve_view(exec_event("dd", "if=/dev/zero", "of=/tmp/disk.img", "bs=1M"))
    assert view is not None
    assert "Binary Padding - Linux" not in [r.title for r in rules.match(view)]


def test_only_exec_events_have_a_view() -> None:
    assert execve_view({"event.action": "exit", "process.args": ["x"]}) is None
    assert execve_view({"event.action": "exec"}) is None
