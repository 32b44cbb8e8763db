"""Build rules and events for the detection tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vigil.detect import Rule, RuleSet

SIGMA_LINUX = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sigma" / "rules" / "linux"
)

PROCESS_LOGSOURCE = {"product": "linux", "category": "process_creation"}


def rule_text(
    detection: dict[str, Any], logsource: dict[str, str] | None = None, **extra: Any
) -> str:
    """A minimal valid Sigma rule around a detection section."""
    document = {
        "title": "test rule",
        "id": "5b0bd0a8-61b1-4a5f-9c5e-8a0f0e0c2f11",
        "status": "test",
        "logsource": logsource or PROCESS_LOGSOURCE,
        "detection": detection,
        "level": "high",
        **extra,
    }
    return yaml.safe_dump(document, sort_keys=False)


def one_rule(detection: dict[str, Any], logsource: dict[str, str] | None = None) -> Rule:
    """Compile a single rule, failing the test with the load error if it does not load."""
    ruleset = RuleSet.from_yaml(rule_text(detection, logsource))
    assert not ruleset.errors, [str(e) for e in ruleset.errors]
    assert len(ruleset.rules) == 1
    return ruleset.rules[0]


def process_event(executable: str, command_line: str, **fields: Any) -> dict[str, Any]:
    """A flat ECS process-start event as the agent sends it."""
    event: dict[str, Any] = {
        "event.kind": "event",
        "event.category": ["process"],
        "event.type": ["start"],
        "host.os.type": "linux",
        "process.executable": executable,
        "process.name": executable.rsplit("/", 1)[-1],
        "process.command_line": command_line,
        "process.args": command_line.split(),
        "user.name": "alice",
    }
    event.update(fields)
    return event


def network_event(**fields: Any) -> dict[str, Any]:
    """A flat ECS outbound connection event."""
    event: dict[str, Any] = {
        "event.category": ["network"],
        "event.type": ["connection", "start"],
        "process.executable": "/usr/bin/curl",
        "network.direction": "egress",
    }
    event.update(fields)
    return event
