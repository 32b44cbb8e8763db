"""Load rule files into a :class:`RuleSet` and match events against it.

Rules are filed under their log source; an event is tested only against the rules filed under
one of its log sources or a generalisation of it (see :mod:`vigil.detect.logsource`), and of
those only against the rules whose literal needs it fulfils (see :mod:`vigil.detect.prefilter`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sigma.collection import SigmaCollection
from sigma.correlations import SigmaCorrelationRule
from sigma.exceptions import SigmaError, SigmaRuleLocation
from sigma.rule import SigmaRule

import vigil
from vigil.detect.errors import DetectError
from vigil.detect.fieldmap import FieldMap, default_fieldmap
from vigil.detect.logsource import LogSource, event_logsources
from vigil.detect.prefilter import Prefilter
from vigil.detect.rules import Rule, RuleLoadError, compile_rule, rule_id

logger = logging.getLogger(__name__)

RULE_SUFFIXES = (".yml", ".yaml")

# Plans remembered per distinct tuple of event log sources; event.module is free text, so the
# memo is emptied when it grows past this (the plans themselves are few and kept).
_PLAN_MEMO_SIZE = 256


def builtin_rules_dir() -> Path:
    """The folder of Vigil's own rules: packaged as ``vigil/builtin_rules``, else the repo's."""
    packaged = Path(vigil.__file__).parent / "builtin_rules"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "rules"


def rule_files(paths: Sequence[str | Path]) -> Iterator[Path]:
    """Files to load: each file as given, each folder searched recursively for YAML, sorted."""
    for path in map(Path, paths):
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in RULE_SUFFIXES)
        else:
            yield path


def _message(exc: BaseException) -> str:
    # pySigma appends " in <path>" to its messages; the path is already in RuleLoadError.
    if isinstance(exc, SigmaError) and exc.args:
        return str(exc.args[0])
    return str(exc)


def load_file(path: Path, fieldmap: FieldMap) -> tuple[list[Rule], list[RuleLoadError]]:
    """Load and compile every rule of one file; failures come back as errors, not exceptions."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [RuleLoadError(str(path), None, f"cannot read rule file: {exc}")]
    return load_text(text, str(path), fieldmap)


def load_text(text: str, path: str, fieldmap: FieldMap) -> tuple[list[Rule], list[RuleLoadError]]:
    """Load and compile every rule of a YAML text (one or more documents) said to come from path."""
    shown = path
    try:
        collection = SigmaCollection.from_yaml(
            text, collect_errors=True, source=SigmaRuleLocation(Path(path))
        )
    except (yaml.YAMLError, SigmaError) as exc:
        return [], [RuleLoadError(shown, None, f"cannot parse rule file: {_message(exc)}")]

    rules: list[Rule] = []
    errors: list[RuleLoadError] = []
    if not collection.rules:
        errors.extend(RuleLoadError(shown, None, _message(e)) for e in collection.errors)
    for index, sigma_rule in enumerate(collection.rules):
        ident = str(sigma_rule.id) if sigma_rule.id else None
        if isinstance(sigma_rule, SigmaCorrelationRule):
            errors.append(
                RuleLoadError(
                    shown, ident, "correlation rules are not supported yet; load them elsewhere"
                )
            )
            continue
        if not isinstance(sigma_rule, SigmaRule):
            continue
        if sigma_rule.errors:
            problems = "; ".join(_message(e) for e in sigma_rule.errors)
            errors.append(RuleLoadError(shown, ident, f"invalid Sigma rule: {problems}"))
            continue
        try:
            rules.append(compile_rule(sigma_rule, shown, index, fieldmap))
        except (DetectError, SigmaError) as exc:
            errors.append(RuleLoadError(shown, rule_id(sigma_rule, shown, index), _message(exc)))
    return rules, errors


@dataclass(frozen=True)
class _Plan:
    """The rules an event of some log sources is tested against, and their prefilter."""

    rules: tuple[Rule, ...]
    tests: tuple[Callable[[Mapping[str, Any]], bool], ...]
    prefilter: Prefilter


class RuleSet:
    """Compiled rules indexed by log source and by literal prefilters, plus load failures.

    Attributes:
        rules: Every compiled rule, in load order.
        errors: One entry per rule or file that could not be loaded.
    """

    def __init__(self, rules: Iterable[Rule] = (), errors: Iterable[RuleLoadError] = ()) -> None:
        """Index already compiled rules.

        Args:
            rules: The rules to match with.
            errors: Load errors to keep beside them.
        """
        self.rules: list[Rule] = list(rules)
        self.errors: list[RuleLoadError] = list(errors)
        self._index: dict[LogSource, list[Rule]] = {}
        for rule in self.rules:
            self._index.setdefault(LogSource.from_mapping(rule.logsource), []).append(rule)
        self._plans: dict[tuple[LogSource, ...], _Plan] = {}
        self._plan_memo: dict[tuple[LogSource, ...], _Plan] = {}

    @classmethod
    def from_paths(cls, paths: Sequence[str | Path], fieldmap: FieldMap | None = None) -> RuleSet:
        """Load rules from files and folders (folders recursively, ``*.yml`` and ``*.yaml``).

        A rule that cannot be loaded is skipped and recorded in :attr:`errors`; the others load.

        Args:
            paths: Rule files and folders.
            fieldmap: The field table; Vigil's own ``fieldmap.yml`` when None.
        """
        fieldmap = fieldmap or default_fieldmap()
        rules: list[Rule] = []
        errors: list[RuleLoadError] = []
        for path in rule_files(paths):
            loaded, failed = load_file(path, fieldmap)
            rules.extend(loaded)
            errors.extend(failed)
        for error in errors:
            logger.warning("rule not loaded: %s", error)
        logger.info("loaded %d rules, %d failed", len(rules), len(errors))
        return cls(rules, errors)

    @classmethod
    def from_yaml(
        cls, text: str, path: str = "<memory>", fieldmap: FieldMap | None = None
    ) -> RuleSet:
        """Load rules from YAML text, e.g. a rule uploaded through the API or written in a test.

        Args:
            text: One or more Sigma YAML documents.
            path: The name to give the source in :class:`Rule` and :class:`RuleLoadError`.
            fieldmap: The field table; Vigil's own ``fieldmap.yml`` when None.
        """
        rules, errors = load_text(text, path, fieldmap or default_fieldmap())
        for error in errors:
            logger.warning("rule not loaded: %s", error)
        return cls(rules, errors)

    def candidates(self, event: Mapping[str, Any]) -> list[Rule]:
        """The rules whose log source the event belongs to, each once."""
        return list(self._plan(event).rules)

    def match(self, event: Mapping[str, Any]) -> list[Rule]:
        """The rules that fire on a flat ECS event.

        Only the rules of the event's log sources whose literal needs the event fulfils are
        evaluated; the result is exactly that of :meth:`match_all_rules`.

        Args:
            event: A flat ECS event (dotted keys, e.g. ``process.command_line``).

        Returns:
            The matching rules, in load order of their log-source groups.
        """
        plan = self._plan(event)
        rules, tests = plan.rules, plan.tests
        return [rules[i] for i in plan.prefilter.candidates(event) if tests[i](event)]

    def match_all_rules(self, event: Mapping[str, Any]) -> list[Rule]:
        """The reference for :meth:`match`: every rule of the event's log sources, no prefilter.

        Slow by design; tests compare :meth:`match` against it, benchmarks measure against it.

        Args:
            event: A flat ECS event (dotted keys).

        Returns:
            The matching rules, in the same order as :meth:`match`.
        """
        return [rule for rule in self._plan(event).rules if rule.matches_detection(event)]

    def _plan(self, event: Mapping[str, Any]) -> _Plan:
        sources = tuple(event_logsources(event))
        plan = self._plan_memo.get(sources)
        if plan is not None:
            return plan

        # Events whose log sources select the same rule groups share one plan.
        groups = tuple(
            dict.fromkeys(
                key for source in sources for key in source.generalisations() if key in self._index
            )
        )
        plan = self._plans.get(groups)
        if plan is None:
            unique = {id(rule): rule for key in groups for rule in self._index[key]}
            rules = tuple(unique.values())
            plan = _Plan(
                rules,
                tuple(rule.matches_detection for rule in rules),
                Prefilter([rule.needs for rule in rules]),
            )
            self._plans[groups] = plan
        if len(self._plan_memo) >= _PLAN_MEMO_SIZE:
            self._plan_memo.clear()
        self._plan_memo[sources] = plan
        return plan

    def __len__(self) -> int:
        return len(self.rules)
