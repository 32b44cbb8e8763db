"""One compiled rule, and how a parsed pySigma rule becomes one."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sigma.rule import SigmaRule

from vigil.detect.conditions import DetectionCompiler, compile_condition
from vigil.detect.fieldmap import FieldMap
from vigil.detect.logsource import LogSource, event_logsources
from vigil.detect.needs import NO_NEEDS, Needs

logger = logging.getLogger(__name__)

# A rule without a level is treated as "medium", the middle of Sigma's scale.
DEFAULT_LEVEL = "medium"

_TECHNIQUE = re.compile(r"t\d{4}(?:\.\d{3})?")
_TACTIC = re.compile(r"[a-z]+(?:[-_][a-z]+)*")


@dataclass(frozen=True)
class Rule:
    """One Sigma rule, compiled into Vigil's evaluator.

    Attributes:
        id: The rule's UUID (or its name, or ``path#n`` when it has neither).
        title: The rule's title.
        level: Sigma level: informational, low, medium, high or critical.
        description: The rule's description ("" when absent).
        tags: All tags as written, e.g. ``attack.t1059.004``.
        attack_techniques: ATT&CK technique ids from the tags, upper case (``T1059.004``).
        attack_tactics: ATT&CK tactic tags as written (``defense-evasion``).
        path: The file the rule came from.
        logsource: The rule's ``logsource`` section (product, category, service).
        name: The rule's ``name``, by which correlation rules may refer to it.
        generate: Whether the rule's own matches are alerts. False when a correlation rule that
            refers to it has ``generate: false`` (Sigma's default): it still fires, for the
            correlation, but the server must not raise an alert for it.
    """

    id: str
    title: str
    level: str
    description: str
    tags: tuple[str, ...]
    attack_techniques: tuple[str, ...]
    attack_tactics: tuple[str, ...]
    path: str
    logsource: dict[str, str]
    _detect: Callable[[Mapping[str, Any]], bool] = field(repr=False, compare=False)
    _logsource_key: LogSource = field(repr=False, compare=False)
    _needs: Needs = field(default=NO_NEEDS, repr=False, compare=False)
    name: str | None = None
    generate: bool = True

    def applies_to(self, event: Mapping[str, Any]) -> bool:
        """Whether the event belongs to the rule's log source."""
        return any(self._logsource_key.covers(source) for source in event_logsources(event))

    def matches(self, event: Mapping[str, Any]) -> bool:
        """Whether a flat ECS event is of the rule's log source and fulfils its detection."""
        return self.applies_to(event) and self._detect(event)

    def matches_detection(self, event: Mapping[str, Any]) -> bool:
        """Whether the event fulfils the detection, whatever its log source (for indexes)."""
        return self._detect(event)

    @property
    def needs(self) -> Needs:
        """Literals every event that fires the rule has, for the prefilter (may be none)."""
        return self._needs


@dataclass
class RuleLoadError:
    """A rule, or a whole rule file, that could not be loaded.

    Attributes:
        path: The rule file.
        rule_id: The rule's id when it could be read, else None.
        message: What is wrong and what to do about it.
    """

    path: str
    rule_id: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path} (rule {self.rule_id})" if self.rule_id else self.path
        return f"{where}: {self.message}"


def attack_tags(tags: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split ``attack.*`` tags into technique ids (upper case) and tactic names.

    Group (``attack.g0032``), software (``attack.s0002``) and other id-shaped tags are neither.
    """
    techniques: list[str] = []
    tactics: list[str] = []
    for tag in tags:
        namespace, _, name = tag.partition(".")
        if namespace.lower() != "attack" or not name:
            continue
        name = name.lower()
        if _TECHNIQUE.fullmatch(name):
            techniques.append(name.upper())
        elif _TACTIC.fullmatch(name):
            tactics.append(name)
    return tuple(dict.fromkeys(techniques)), tuple(dict.fromkeys(tactics))


def rule_id(sigma_rule: SigmaRule, path: str, index: int) -> str:
    """The id Vigil files a rule under: its UUID, else its name, else ``path#index``."""
    if sigma_rule.id is not None:
        return str(sigma_rule.id)
    if sigma_rule.name:
        return sigma_rule.name
    return f"{path}#{index}"


def compile_rule(sigma_rule: SigmaRule, path: str, index: int, fieldmap: FieldMap) -> Rule:
    """Compile a parsed pySigma rule into a :class:`Rule`.

    Args:
        sigma_rule: The rule as pySigma parsed it, without errors.
        path: The file it came from.
        index: Its position in that file (for rules without an id).
        fieldmap: The Sigma-to-ECS field table.

    Raises:
        UnsupportedConstruct: The detection uses something the evaluator cannot do.
        sigma.exceptions.SigmaError: The condition does not parse.
    """
    source = sigma_rule.logsource
    logsource = {
        key: str(value)
        for key, value in (
            ("product", source.product),
            ("category", source.category),
            ("service", source.service),
        )
        if value
    }
    compiler = DetectionCompiler(fieldmap, logsource)
    compiled = compile_condition(sigma_rule.detection, compiler)

    tags = tuple(str(tag) for tag in sigma_rule.tags)
    techniques, tactics = attack_tags(tags)
    return Rule(
        id=rule_id(sigma_rule, path, index),
        title=sigma_rule.title,
        level=str(sigma_rule.level) if sigma_rule.level is not None else DEFAULT_LEVEL,
        description=sigma_rule.description or "",
        tags=tags,
        attack_techniques=techniques,
        attack_tactics=tactics,
        path=path,
        logsource=logsource,
        _detect=compiled.test,
        _logsource_key=LogSource.from_mapping(logsource),
        _needs=compiled.needs,
        name=sigma_rule.name,
    )
