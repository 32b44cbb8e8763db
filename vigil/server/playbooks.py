"""Response playbooks: which alerts a playbook answers, and the actions it runs on their host.

A playbook is a YAML (or JSON) document::

    name: kill-decoded-shells
    description: Kill a shell fed with base64-decoded commands.
    enabled: true
    mode: dry_run            # or enforce
    conditions:              # every condition given must hold
      rules: ["Base64 Decoded Payload*"]   # globs on the rule id or title, any one
      min_level: high
      techniques: [T1059]    # any one; a technique also matches its sub-techniques
      intel: false           # true: only intel alerts; false: never intel alerts
      host_tags: [web]       # the host has any one of these tags
    actions:
      - action: kill
        params: {entity_id: "{{process.entity_id}}", pid: "{{process.pid}}", tree: true}
    max_runs_per_host_per_hour: 5

A parameter value that is exactly ``{{field.name}}`` takes that field of the alert's event,
keeping its type (a pid stays an integer). Nothing else is templated: a placeholder inside a
longer string is refused when the playbook is loaded, and no expression is ever evaluated.

This module is pure: it reads, validates and matches. Running a playbook is in
``vigil.server.playbook_runner``.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vigil.agent.respond import REGISTRY as ACTIONS
from vigil.server.errors import PlaceholderError, PlaybookError

Level = Literal["informational", "low", "medium", "high", "critical"]
LEVELS: tuple[str, ...] = get_args(Level)
Mode = Literal["dry_run", "enforce"]

# "runs" is taken by the endpoint that lists runs (/api/v1/playbooks/runs).
RESERVED_NAMES = frozenset({"runs"})
_TECHNIQUE = re.compile(r"^T\d{4}(?:\.\d{3})?$")
_PLACEHOLDER = re.compile(r"^\{\{\s*([A-Za-z0-9_@][A-Za-z0-9_@.-]*)\s*\}\}$")


class Conditions(BaseModel):
    """What an alert must show; every condition given must hold, and one must be given."""

    model_config = ConfigDict(extra="forbid")

    rules: list[str] = Field(
        default_factory=list,
        max_length=200,
        description="globs (*, ?, [..]) on the rule id or title, case-insensitive; any one",
    )
    min_level: Level | None = Field(default=None, description="this level or higher")
    techniques: list[str] = Field(
        default_factory=list,
        max_length=200,
        description="ATT&CK technique ids; T1059 also matches T1059.004; any one",
    )
    intel: bool | None = Field(
        default=None, description="true: only threat-intel alerts; false: none of them"
    )
    host_tags: list[str] = Field(
        default_factory=list, max_length=200, description="the host has any one of these tags"
    )

    @field_validator("rules", "host_tags")
    @classmethod
    def _not_blank(cls, values: list[str]) -> list[str]:
        if any(not v.strip() for v in values):
            raise ValueError("an empty entry would match nothing; remove it")
        return values

    @field_validator("techniques")
    @classmethod
    def _technique_ids(cls, values: list[str]) -> list[str]:
        upper = [v.strip().upper() for v in values]
        bad = [v for v in upper if not _TECHNIQUE.match(v)]
        if bad:
            raise ValueError(
                f"{', '.join(repr(b) for b in bad)} is not an ATT&CK technique id"
                " (T1234 or T1234.001)"
            )
        return upper

    @model_validator(mode="after")
    def _some_condition(self) -> Conditions:
        if not (
            self.rules
            or self.min_level
            or self.techniques
            or self.intel is not None
            or self.host_tags
        ):
            raise ValueError(
                "give at least one of rules, min_level, techniques, intel, host_tags:"
                " a playbook without conditions would run on every alert"
            )
        return self


class ActionStep(BaseModel):
    """One response action, run on the alert's host with these parameters."""

    model_config = ConfigDict(extra="forbid")

    action: str = Field(description="a response action the agent has (see docs/response.md)")
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("action")
    @classmethod
    def _known_action(cls, name: str) -> str:
        if name not in ACTIONS:
            raise ValueError(f"no action {name!r}; one of: {', '.join(sorted(ACTIONS))}")
        return name

    @field_validator("params")
    @classmethod
    def _whole_placeholders(cls, params: dict[str, Any]) -> dict[str, Any]:
        for value in _strings(params):
            if ("{{" in value or "}}" in value) and not _PLACEHOLDER.match(value):
                raise ValueError(
                    f"{value!r}: a placeholder must be the whole value, like"
                    " '{{process.entity_id}}'; nothing else is templated"
                )
        return params


class Playbook(BaseModel):
    """A validated playbook."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    description: str = Field(default="", max_length=4000)
    enabled: bool = True
    mode: Mode = "dry_run"
    conditions: Conditions
    actions: list[ActionStep] = Field(min_length=1, max_length=20)
    max_runs_per_host_per_hour: int = Field(default=5, ge=1, le=10_000)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_NAMES:
            raise ValueError(f"{name!r} is reserved; choose another name")
        return name


def _strings(value: Any) -> Iterable[str]:
    """Every string inside a parameter value, however deep in lists and mappings."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "playbook"


def describe_errors(exc: ValidationError) -> str:
    """Pydantic's errors as ``field: problem`` pairs, the field written as in the YAML."""
    parts = []
    for error in exc.errors()[:10]:
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "not a playbook field (misspelt?)"
        parts.append(f"{_location(tuple(error['loc']))}: {message}")
    more = len(exc.errors()) - 10
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def validate_playbook(data: Any) -> Playbook:
    """A playbook from parsed YAML or JSON.

    Raises:
        PlaybookError: The document is not a valid playbook; the message names each field
            that is wrong and why.
    """
    if not isinstance(data, dict):
        raise PlaybookError(
            f"a playbook is a mapping with name, conditions and actions, not {type(data).__name__}"
        )
    try:
        return Playbook.model_validate(data)
    except ValidationError as exc:
        name = data.get("name")
        which = f"playbook {name!r}" if isinstance(name, str) else "playbook"
        raise PlaybookError(f"{which} is not valid: {describe_errors(exc)}") from exc


def parse_playbook(text: str, syntax: Literal["yaml", "json"] = "yaml") -> Playbook:
    """A playbook from its YAML or JSON text.

    Raises:
        PlaybookError: The text does not parse (the message has the line and column), or the
            document is not a valid playbook.
    """
    try:
        data = json.loads(text) if syntax == "json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise PlaybookError(
            f"playbook is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PlaybookError(f"playbook is not valid YAML: {problem}{where}") from exc
    return validate_playbook(data)


def is_intel(alert: dict[str, Any]) -> bool:
    """Whether an alert came from threat intelligence rather than a rule."""
    return bool(alert.get("intel")) or str(alert["rule"].get("id", "")).startswith("intel:")


def matches(playbook: Playbook, alert: dict[str, Any], host_tags: Iterable[str]) -> bool:
    """Whether ``alert`` (as stored) on a host with ``host_tags`` meets every condition."""
    wanted = playbook.conditions
    rule = alert["rule"]
    if wanted.rules:
        names = [str(rule.get("id") or "").lower(), str(rule.get("title") or "").lower()]
        if not any(fnmatch.fnmatchcase(n, g.lower()) for g in wanted.rules for n in names):
            return False
    if wanted.min_level:
        level = rule.get("level")
        if level not in LEVELS or LEVELS.index(level) < LEVELS.index(wanted.min_level):
            return False
    if wanted.techniques:
        seen = [str(t).upper() for t in alert.get("attack") or ()]
        if not any(s == t or s.startswith(t + ".") for t in wanted.techniques for s in seen):
            return False
    if wanted.intel is not None and wanted.intel != is_intel(alert):
        return False
    if wanted.host_tags:
        tags = {t.casefold() for t in host_tags}
        if not any(t.casefold() in tags for t in wanted.host_tags):
            return False
    return True


def event_field(event: dict[str, Any], name: str) -> Any:
    """The value of a dotted ECS field in a nested event, or None when it has none."""
    if name in event:
        return event[name]
    value: Any = event
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def resolve_params(params: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """The parameters with each whole-value placeholder replaced by the event's field.

    Raises:
        PlaceholderError: The event has no such field (or it is null).
    """

    def resolve(value: Any) -> Any:
        if isinstance(value, str):
            found = _PLACEHOLDER.match(value)
            if not found:
                return value
            field = found.group(1)
            resolved = event_field(event, field)
            if resolved is None:
                raise PlaceholderError(f"the alert's event has no {field} for {value!r}")
            return resolved
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return value

    resolved: dict[str, Any] = resolve(params)
    return resolved
