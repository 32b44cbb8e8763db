"""Load rule files into a :class:`RuleSet` and match events against it.

Rules are filed under their log source; an event is tested only against the rules filed under
one of its log sources or a generalisation of it (see :mod:`vigil.detect.logsource`), and of
those only against the rules whose literal needs it fulfils (see :mod:`vigil.detect.prefilter`).
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from sigma.collection import SigmaCollection
from sigma.correlations import SigmaCorrelationRule
from sigma.exceptions import SigmaError, SigmaRuleLocation
from sigma.modifiers import modifier_mapping
from sigma.policy import SigmaPolicy
from sigma.policy.regex_engine import PythonRegexEngine
from sigma.rule import SigmaRule

import vigil
from vigil.detect.correlation import (
    DEFAULT_MAX_EVENTS_PER_KEY,
    DEFAULT_MAX_KEYS,
    Correlation,
    CorrelationEngine,
    compile_correlation,
    reference_key,
)
from vigil.detect.errors import DetectError
from vigil.detect.fieldmap import FieldMap, default_fieldmap
from vigil.detect.logsource import LogSource, event_logsources, logsource_key
from vigil.detect.placeholders import Placeholders, resolve_placeholders
from vigil.detect.prefilter import Prefilter, PrefilterChain, ValueMemo
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
    """Files to load: each file as given, each folder searched recursively for YAML, sorted.

    A file reached twice (a folder given twice, or inside another folder given) comes once, so
    overlapping arguments do not load its rules twice.
    """
    seen: set[Path] = set()
    for path in map(Path, paths):
        found = (
            sorted(p for p in path.rglob("*") if p.suffix in RULE_SUFFIXES)
            if path.is_dir()
            else [path]
        )
        for file in found:
            real = file.resolve()
            if real not in seen:
                seen.add(real)
                yield file


# pySigma reads YAML with PyYAML's pure-Python loader: two thirds of the time it takes to load
# SigmaHQ's Windows rules. libyaml's loader (in PyYAML's wheels) builds the same documents ten
# times as fast; the pure one stays for a PyYAML built without it.
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# pySigma checks each |re pattern with RE2 unless told otherwise; RE2 writes its parse errors to
# stderr and refuses patterns (lookarounds, backreferences) that our evaluator, Python's re,
# runs. Checking with re accepts exactly the patterns that will run.
_POLICY = SigmaPolicy(regex_engine=PythonRegexEngine())


def _message(exc: BaseException) -> str:
    # pySigma appends " in <path>" to its messages; the path is already in RuleLoadError.
    text = str(exc.args[0]) if isinstance(exc, SigmaError) and exc.args else str(exc)
    unknown = _UNKNOWN_MODIFIER.search(text)
    if unknown is not None:
        text += _modifier_hint(unknown.group(1))
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        # PyYAML's own text spans lines and quotes the parser's buffer; one line says it all.
        mark = exc.problem_mark
        text = f"YAML error at line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
        if exc.context:
            start = exc.context_mark
            where = f" at line {start.line + 1}, column {start.column + 1}" if start else ""
            text += f" ({exc.context}{where})"
    return text


_UNKNOWN_MODIFIER = re.compile(r"Unknown modifier '([^']*)'")


def _modifier_hint(name: str) -> str:
    known = sorted(modifier_mapping)
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; Sigma's modifiers are {', '.join(known)}"


def _correlation_id(sigma_rule: SigmaCorrelationRule) -> str | None:
    return str(sigma_rule.id) if sigma_rule.id else sigma_rule.name


@dataclass
class LoadedFile:
    """What one rule file holds: compiled base rules, correlation rules still to be linked
    to the rules they refer to, and the rules that did not load."""

    rules: list[Rule] = field(default_factory=list)
    pending: list[tuple[SigmaCorrelationRule, str, int]] = field(default_factory=list)
    errors: list[RuleLoadError] = field(default_factory=list)


def load_files(
    files: Iterable[Path], fieldmap: FieldMap, placeholders: Placeholders | None
) -> LoadedFile:
    """Parse rule files into one set, to be linked by :func:`link_correlations`."""
    everything = LoadedFile()
    for file in files:
        loaded = parse_file(file, fieldmap, placeholders)
        everything.rules.extend(loaded.rules)
        everything.pending.extend(loaded.pending)
        everything.errors.extend(loaded.errors)
    return without_repeated_ids(everything)


def without_repeated_ids(loaded: LoadedFile) -> LoadedFile:
    """The set with each id once: a rule or correlation whose id (or name, for one without an
    id) an earlier one already has is dropped and reported with the file that has it."""
    first_with: dict[str, str] = {}
    errors = list(loaded.errors)

    def first(ident: str | None, path: str) -> bool:
        if ident is None:
            return True
        if ident in first_with:
            where = "this file" if first_with[ident] == path else first_with[ident]
            errors.append(
                RuleLoadError(
                    path,
                    ident,
                    f"an earlier rule in {where} has this id; Sigma ids are unique: "
                    "give one of them a new id, or remove the copy",
                )
            )
            return False
        first_with[ident] = path
        return True

    rules = [rule for rule in loaded.rules if first(rule.id, rule.path)]
    pending = [item for item in loaded.pending if first(_correlation_id(item[0]), item[1])]
    return LoadedFile(rules, pending, errors)


def parse_file(path: Path, fieldmap: FieldMap, placeholders: Placeholders | None) -> LoadedFile:
    """Read and parse one rule file (see :func:`parse_text`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return LoadedFile(errors=[RuleLoadError(str(path), None, f"cannot read rule file: {exc}")])
    return parse_text(text, str(path), fieldmap, placeholders)


def parse_text(
    text: str, path: str, fieldmap: FieldMap, placeholders: Placeholders | None
) -> LoadedFile:
    """Compile the base rules of a YAML text and set its correlation rules aside for linking.

    Args:
        text: One or more Sigma YAML documents.
        path: Where the text came from, for rules and errors.
        fieldmap: The Sigma-to-ECS field table.
        placeholders: Values of ``%name%`` placeholders (``|expand``); None for none.
    """
    try:
        collection = SigmaCollection.from_dicts(
            list(yaml.load_all(text, Loader=_YAML_LOADER)),
            collect_errors=True,
            source=SigmaRuleLocation(Path(path)),
            resolve_references=False,
            policy=_POLICY,
        )
    except (yaml.YAMLError, SigmaError) as exc:
        return LoadedFile(
            errors=[RuleLoadError(path, None, f"cannot parse rule file: {_message(exc)}")]
        )
    except (AttributeError, TypeError):
        # pySigma expects every YAML document to be a mapping and fails on anything else.
        return LoadedFile(
            errors=[
                RuleLoadError(
                    path,
                    None,
                    "not a Sigma rule file: each YAML document must be a mapping of rule fields "
                    "(title, logsource, detection...), and one here is a plain value or a list",
                )
            ]
        )

    loaded = LoadedFile()
    if not collection.rules and not collection.errors:
        loaded.errors.append(
            RuleLoadError(path, None, "holds no Sigma rule (an empty file?); remove it or fill it")
        )
    if not collection.rules:
        loaded.errors.extend(RuleLoadError(path, None, _message(e)) for e in collection.errors)
    for index, sigma_rule in enumerate(collection.rules):
        ident = str(sigma_rule.id) if sigma_rule.id else None
        if sigma_rule.errors:
            problems = "; ".join(_message(e) for e in sigma_rule.errors)
            kind = "correlation" if isinstance(sigma_rule, SigmaCorrelationRule) else "Sigma"
            loaded.errors.append(RuleLoadError(path, ident, f"invalid {kind} rule: {problems}"))
        elif isinstance(sigma_rule, SigmaCorrelationRule):
            loaded.pending.append((sigma_rule, path, index))
        elif isinstance(sigma_rule, SigmaRule):
            try:
                resolve_placeholders(sigma_rule, placeholders or {})
                loaded.rules.append(compile_rule(sigma_rule, path, index, fieldmap))
            except (DetectError, SigmaError) as exc:
                loaded.errors.append(
                    RuleLoadError(path, rule_id(sigma_rule, path, index), _message(exc))
                )
    return loaded


def link_correlations(
    rules: Sequence[Rule],
    pending: Sequence[tuple[SigmaCorrelationRule, str, int]],
    fieldmap: FieldMap,
) -> tuple[list[Rule], list[Correlation], list[RuleLoadError]]:
    """Resolve correlation rules against the loaded rules, and mark which rules alert.

    A correlation may refer to rules of any file of the set, and to other correlations; it is
    compiled once everything it refers to is. A rule referred to only by correlations with
    ``generate: false`` (Sigma's default) gets ``Rule.generate = False``.

    Returns:
        The rules (with their ``generate`` flag), the correlations, and the correlations that
        could not be linked or compiled.
    """
    targets: dict[str, Rule | Correlation] = {}
    for rule in rules:
        for key in (rule.id, rule.name):
            if key:
                targets.setdefault(reference_key(key), rule)
    correlations: list[Correlation] = []
    errors: list[RuleLoadError] = []
    waiting = list(pending)
    while waiting:
        progress = False
        for item in list(waiting):
            sigma_rule, path, index = item
            refs = [reference_key(r.reference) for r in sigma_rule.rules or ()]
            if not all(ref in targets for ref in refs) and any(
                _names(other) & set(refs) for other, _, _ in waiting if other is not sigma_rule
            ):
                continue  # it refers to a correlation not compiled yet
            waiting.remove(item)
            progress = True
            try:
                correlation = compile_correlation(sigma_rule, path, index, targets, fieldmap)
            except (DetectError, SigmaError) as exc:
                ident = _correlation_id(sigma_rule)
                errors.append(RuleLoadError(path, ident, _message(exc)))
                continue
            correlations.append(correlation)
            for key in (correlation.id, correlation.name):
                if key:
                    targets.setdefault(reference_key(key), correlation)
        if not progress:
            errors.extend(
                RuleLoadError(
                    path,
                    _correlation_id(sigma_rule),
                    "correlation rules refer to each other in a cycle; break the cycle",
                )
                for sigma_rule, path, _ in waiting
            )
            break

    # A referenced rule alerts itself only if some correlation referring to it says so.
    referenced: dict[str, bool] = {}
    for correlation in correlations:
        for ref in correlation.rules:
            referenced[ref] = referenced.get(ref, False) or correlation.generate_referenced
    rules = [
        replace(rule, generate=referenced[rule.id]) if rule.id in referenced else rule
        for rule in rules
    ]
    correlations = [
        replace(c, generate=referenced[c.id]) if c.id in referenced else c for c in correlations
    ]
    return rules, correlations, errors


def _names(sigma_rule: SigmaCorrelationRule) -> set[str]:
    return {reference_key(str(k)) for k in (sigma_rule.id, sigma_rule.name) if k}


@dataclass(frozen=True)
class _Plan:
    """The rules an event of some log sources is tested against, and their prefilter."""

    rules: tuple[Rule, ...]
    tests: tuple[Callable[[Mapping[str, Any]], bool], ...]
    prefilter: PrefilterChain


class RuleSet:
    """Compiled rules indexed by log source and by literal prefilters, plus load failures.

    Attributes:
        rules: Every compiled base rule, in load order. Rules with ``generate`` False fire for
            correlations only: do not raise alerts for them.
        correlations: Every linked correlation rule; evaluate them with
            :meth:`correlation_engine`.
        errors: One entry per rule or file that could not be loaded.
    """

    def __init__(
        self,
        rules: Iterable[Rule] = (),
        errors: Iterable[RuleLoadError] = (),
        correlations: Iterable[Correlation] = (),
    ) -> None:
        """Index already compiled rules.

        Args:
            rules: The rules to match with.
            errors: Load errors to keep beside them.
            correlations: Correlation rules linked to these rules (see
                :func:`link_correlations`).
        """
        self.rules: list[Rule] = list(rules)
        self.errors: list[RuleLoadError] = list(errors)
        self.correlations: list[Correlation] = list(correlations)
        # Each rule is filed once, under its own log source, so the groups do not overlap.
        self._index: dict[LogSource, list[Rule]] = {}
        filed: set[int] = set()
        for rule in self.rules:
            if id(rule) not in filed:
                filed.add(id(rule))
                self._index.setdefault(LogSource.from_mapping(rule.logsource), []).append(rule)
        # Built now, not on a group's first event, so that the first events of a stream (or a
        # scan) do not pay for compiling thousands of literals.
        memo = ValueMemo()
        self._prefilters: dict[LogSource, Prefilter] = {
            key: Prefilter([rule.needs for rule in group], memo)
            for key, group in self._index.items()
        }
        self._plans: dict[tuple[LogSource, ...], _Plan] = {}
        self._plan_memo: dict[tuple[Any, ...], _Plan] = {}

    @classmethod
    def from_paths(
        cls,
        paths: Sequence[str | Path],
        fieldmap: FieldMap | None = None,
        placeholders: Placeholders | None = None,
    ) -> RuleSet:
        """Load rules from files and folders (folders recursively, ``*.yml`` and ``*.yaml``).

        A rule that cannot be loaded is skipped and recorded in :attr:`errors`; the others load.
        Correlation rules may refer to rules in any of the files.

        Args:
            paths: Rule files and folders.
            fieldmap: The field table; Vigil's own ``fieldmap.yml`` when None.
            placeholders: Values of ``%name%`` placeholders (``field|expand``), e.g. from
                :func:`vigil.detect.placeholders.load_placeholders`; a rule using one that is
                not given is recorded in :attr:`errors`.
        """
        fieldmap = fieldmap or default_fieldmap()
        return cls._linked(load_files(rule_files(paths), fieldmap, placeholders), fieldmap)

    @classmethod
    def from_yaml(
        cls,
        text: str,
        path: str = "<memory>",
        fieldmap: FieldMap | None = None,
        placeholders: Placeholders | None = None,
    ) -> RuleSet:
        """Load rules from YAML text, e.g. a rule uploaded through the API or written in a test.

        Args:
            text: One or more Sigma YAML documents (rules and correlation rules).
            path: The name to give the source in :class:`Rule` and :class:`RuleLoadError`.
            fieldmap: The field table; Vigil's own ``fieldmap.yml`` when None.
            placeholders: Values of ``%name%`` placeholders, as for :meth:`from_paths`.
        """
        fieldmap = fieldmap or default_fieldmap()
        loaded = parse_text(text, path, fieldmap, placeholders)
        return cls._linked(without_repeated_ids(loaded), fieldmap)

    @classmethod
    def _linked(cls, loaded: LoadedFile, fieldmap: FieldMap) -> RuleSet:
        rules, correlations, failed = link_correlations(loaded.rules, loaded.pending, fieldmap)
        errors = loaded.errors + failed
        for error in errors:
            logger.warning("rule not loaded: %s", error)
        logger.info(
            "loaded %d rules and %d correlations, %d failed",
            len(rules),
            len(correlations),
            len(errors),
        )
        return cls(rules, errors, correlations)

    def correlation_engine(
        self,
        max_events_per_key: int = DEFAULT_MAX_EVENTS_PER_KEY,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> CorrelationEngine:
        """A new engine for this set's correlations (one per stream, e.g. per tenant).

        Args:
            max_events_per_key: Matches kept per (correlation, group) window.
            max_keys: (correlation, group) windows kept open.
        """
        return CorrelationEngine(self.correlations, max_events_per_key, max_keys)

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
        key = logsource_key(event)
        try:
            plan = self._plan_memo.get(key)
            remember = True
        except TypeError:  # a field holds a mapping: work the sources out every time
            plan, remember = None, False
        if plan is not None:
            return plan
        sources = event_logsources(event)

        # Events whose log sources select the same rule groups share one plan.
        groups = tuple(
            dict.fromkeys(
                key for source in sources for key in source.generalisations() if key in self._index
            )
        )
        plan = self._plans.get(groups)
        if plan is None:
            rules = tuple(rule for key in groups for rule in self._index[key])
            plan = _Plan(
                rules,
                tuple(rule.matches_detection for rule in rules),
                PrefilterChain([self._prefilters[key] for key in groups]),
            )
            self._plans[groups] = plan
        if remember:
            if len(self._plan_memo) >= _PLAN_MEMO_SIZE:
                self._plan_memo.clear()
            self._plan_memo[key] = plan
        return plan

    def __len__(self) -> int:
        return len(self.rules)
