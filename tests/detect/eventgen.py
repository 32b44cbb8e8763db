"""Random events made of the literals of Sigma rule files, so that many rules fire.

The literals are read from the rule YAML directly, not from the engine's compiled rules, so that
the events do not inherit the engine's view of a rule (which the differential test checks).
"""

from __future__ import annotations

import base64
import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vigil.detect.fieldmap import default_fieldmap

# Sigma log source category to the ECS event fields that route an event there.
CATEGORY_FIELDS: dict[str, dict[str, Any]] = {
    "process_creation": {"event.category": ["process"], "event.type": ["start"]},
    "process_termination": {"event.category": ["process"], "event.type": ["end"]},
    "file_event": {"event.category": ["file"], "event.type": ["creation"]},
    "file_change": {"event.category": ["file"], "event.type": ["change"]},
    "file_delete": {"event.category": ["file"], "event.type": ["deletion"]},
    "network_connection": {"event.category": ["network"], "event.type": ["connection"]},
    "dns_query": {"event.category": ["network"], "dns.question.name": "example.org"},
}

BENIGN_LINUX = [
    ("/usr/bin/ls", "ls -la /home/alice"),
    ("/usr/bin/git", "git status --short"),
    ("/usr/bin/python3", "python3 -m pytest -q"),
    ("/usr/bin/bash", "bash -c 'echo ok'"),
]
BENIGN_WINDOWS = [
    ("C:\\Windows\\System32\\cmd.exe", "cmd.exe /c dir"),
    ("C:\\Windows\\explorer.exe", "explorer.exe"),
    ("C:\\Program Files\\Git\\bin\\git.exe", "git status"),
]


@dataclass(frozen=True)
class Literal:
    """One value of one detection item: the field (None for a keyword) and event text for it."""

    sigma_field: str | None
    text: Any


@dataclass(frozen=True)
class RuleLiterals:
    """The log source and the literals of one rule file."""

    logsource: dict[str, str]
    literals: tuple[Literal, ...]


def _filler(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase + " /-._") for _ in range(rng.randint(0, 6)))


def _concrete(value: str, modifiers: list[str], rng: random.Random) -> str:
    text = "".join(
        _filler(rng) if char == "*" else rng.choice("aZ9-") if char == "?" else char
        for char in value
    )
    if "windash" in modifiers and rng.random() < 0.5:
        text = text.replace(" -", " /")
    if "base64" in modifiers or "base64offset" in modifiers:
        text = base64.b64encode(text.encode()).decode()
        if "base64offset" in modifiers:
            text = text[rng.randint(0, 2) :]
    if "contains" in modifiers or "base64offset" in modifiers:
        return _filler(rng) + text + _filler(rng)
    if "startswith" in modifiers:
        return text + _filler(rng)
    if "endswith" in modifiers:
        return _filler(rng) + text
    return text


def _item_literals(key: str | None, values: Any, rng: random.Random) -> list[Literal]:
    sigma_field, *modifiers = key.split("|") if key else (None,)
    if any(m in ("re", "cidr", "exists", "fieldref", "expand") for m in modifiers):
        return []
    items = values if isinstance(values, list) else [values]
    found: list[Literal] = []
    for value in items:
        if isinstance(value, str):
            found.append(Literal(sigma_field, _concrete(value, modifiers, rng)))
        elif isinstance(value, bool | int) and sigma_field:
            found.append(Literal(sigma_field, value))
    return found


def read_rule_literals(paths: list[Path], rng: random.Random) -> list[RuleLiterals]:
    """Each rule file's log source and concrete values for its detection items."""
    rules: list[RuleLiterals] = []
    for path in paths:
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not isinstance(document, dict) or "detection" not in document:
                continue
            literals: list[Literal] = []
            for name, detection in document["detection"].items():
                if name == "condition":
                    continue
                maps = detection if isinstance(detection, list) else [detection]
                for entry in maps:
                    if isinstance(entry, dict):
                        for key, values in entry.items():
                            literals.extend(_item_literals(str(key), values, rng))
                    else:
                        literals.extend(_item_literals(None, entry, rng))
            logsource = {k: str(v) for k, v in (document.get("logsource") or {}).items()}
            rules.append(RuleLiterals(logsource, tuple(literals)))
    return rules


def _mangle_case(value: Any, rng: random.Random) -> Any:
    if not isinstance(value, str):
        return value
    roll = rng.random()
    if roll < 0.1:
        return value.upper()
    if roll < 0.15:
        return value.swapcase()
    return value


class EventMaker:
    """Makes events that mix one rule's literals with other rules' literals and benign values."""

    def __init__(self, rules: list[RuleLiterals], seed: int) -> None:
        self.rules = [rule for rule in rules if rule.literals]
        self.everything = [literal for rule in self.rules for literal in rule.literals]
        self.rng = random.Random(seed)
        self.fieldmap = default_fieldmap()

    def _key(self, literal: Literal, logsource: dict[str, str]) -> str:
        assert literal.sigma_field is not None
        keys = self.fieldmap.accessor(literal.sigma_field, logsource).keys
        # Mostly the ECS name; sometimes the raw Sigma name, which accessors fall back to.
        return keys[0] if self.rng.random() < 0.85 else keys[-1]

    def _put(self, event: dict[str, Any], key: str, value: Any) -> None:
        rng = self.rng
        old = event.get(key)
        if isinstance(old, str) and isinstance(value, str) and rng.random() < 0.5:
            event[key] = f"{old} {value}" if rng.random() < 0.7 else f"{value} {old}"
        elif rng.random() < 0.08:
            event[key] = [value, _filler(rng)]
        else:
            event[key] = value

    def event(self) -> dict[str, Any]:
        """One event of a random rule's log source, fed with some of its literals and noise."""
        rng = self.rng
        rule = rng.choice(self.rules)
        logsource = rule.logsource
        product = logsource.get("product", "linux")
        event: dict[str, Any] = {"event.kind": "event", "host.os.type": product}
        event.update(CATEGORY_FIELDS.get(logsource.get("category", ""), {}))
        if "service" in logsource:
            event["event.module"] = logsource["service"]
        executable, command_line = rng.choice(
            BENIGN_WINDOWS if product == "windows" else BENIGN_LINUX
        )
        event.update(
            {
                "process.executable": executable,
                "process.command_line": command_line,
                "process.parent.executable": rng.choice(BENIGN_LINUX + BENIGN_WINDOWS)[0],
                "user.name": rng.choice(["alice", "root", "SYSTEM"]),
            }
        )

        chosen = rng.sample(rule.literals, k=rng.randint(1, len(rule.literals)))
        chosen += [rng.choice(self.everything) for _ in range(rng.randint(0, 4))]
        for literal in chosen:
            value = _mangle_case(literal.text, rng)
            if literal.sigma_field is None:
                self._put(event, rng.choice(["process.command_line", "message"]), str(value))
            else:
                self._put(event, self._key(literal, logsource), value)
        if rng.random() < 0.05:
            event[rng.choice(list(event))] = None
        return event

    def events(self, count: int) -> list[dict[str, Any]]:
        """``count`` events."""
        return [self.event() for _ in range(count)]
