"""Sigma correlation rules, compiled and evaluated on the event stream.

A correlation rule (Sigma's "meta rule") refers to base rules, or other correlations, by id or
name, possibly in other files of the loaded set, and fires when what they matched meets a
condition within a timespan, per group of ``group-by`` values:

- ``event_count``: how many matches;
- ``value_count``: how many distinct values of ``condition.field``;
- ``value_sum``, ``value_avg``, ``value_median``, ``value_percentile``: a statistic of the
  numeric values of ``condition.field``;
- ``temporal``: how many of the referenced rules matched (default: all of them);
- ``temporal_ordered``: the referenced rules matched in the order they are listed.

:class:`CorrelationEngine` keeps one window per (correlation, group) in memory. Conditions that a
new match can make true (``gt``, ``gte``) are tested at every match, over the matches of the last
timespan (a sliding window); when one fires, its matches are used up, so a burst of 50 failed
logins against ``gte: 10`` gives 5 hits, not 41. Conditions that only an ended window can decide
(``lt``, ``lte``, ``eq``, ``neq``) are tested when the window, opened by its first match, is one
timespan old: at a later match of any group, or at :meth:`CorrelationEngine.flush`. A group
without any match never fires ("fewer than 3" needs at least one). Time is event time
(``@timestamp``), not the clock.
"""

from __future__ import annotations

import bisect
import logging
import math
import operator
import statistics
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sigma.correlations import (
    SigmaCorrelationCondition,
    SigmaCorrelationRule,
)

from vigil.detect.errors import DetectError, UnsupportedConstruct
from vigil.detect.fieldmap import MISSING, FieldMap
from vigil.detect.rules import DEFAULT_LEVEL, Rule, attack_tags

logger = logging.getLogger(__name__)

# Memory bounds of a CorrelationEngine, per (correlation, group) window and over all windows.
DEFAULT_MAX_EVENTS_PER_KEY = 1000
DEFAULT_MAX_KEYS = 100_000
# Every this many matches, windows whose last match is older than their timespan are swept.
_SWEEP_EVERY = 1024

Getter = Callable[[Mapping[str, Any]], Any]

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
    "eq": operator.eq,
    "neq": operator.ne,
}
_DECIDED_AT_CLOSE = frozenset({"lt", "lte", "eq", "neq"})
_VALUE_TYPES = frozenset(
    {"value_count", "value_sum", "value_avg", "value_median", "value_percentile"}
)


@dataclass(frozen=True)
class Correlation:
    """One Sigma correlation rule, with its references resolved to loaded rules.

    Attributes:
        id: The rule's UUID (or its name, or ``path#n`` when it has neither).
        name: The rule's ``name``, by which other correlations may refer to it.
        title: The rule's title.
        level: Sigma level (``medium`` when absent).
        description: The rule's description ("" when absent).
        tags: All tags as written.
        attack_techniques: ATT&CK technique ids from the tags, upper case.
        attack_tactics: ATT&CK tactic tags as written.
        path: The file the rule came from.
        type: ``event_count``, ``value_count``, ``temporal``, ``temporal_ordered``, ...
        rules: Ids of the referenced rules and correlations, in the order listed.
        group_by: The ``group-by`` fields as written (aliases included).
        timespan: The window, in seconds.
        operator: The condition's operator: gt, gte, lt, lte, eq or neq.
        threshold: The condition's number.
        value_fields: The field(s) a ``value_*`` correlation aggregates, as written.
        percentile: The percentile of ``value_percentile``.
        generate_referenced: Sigma's ``generate``: whether the referenced rules alert themselves.
        generate: Whether this correlation's own hits are alerts (False when a correlation that
            refers to it has ``generate: false``).
    """

    id: str
    name: str | None
    title: str
    level: str
    description: str
    tags: tuple[str, ...]
    attack_techniques: tuple[str, ...]
    attack_tactics: tuple[str, ...]
    path: str
    type: str
    rules: tuple[str, ...]
    group_by: tuple[str, ...]
    timespan: float
    operator: str
    threshold: float
    value_fields: tuple[str, ...] = ()
    percentile: int | None = None
    generate_referenced: bool = False
    generate: bool = True
    _group_getters: Mapping[str, tuple[Getter, ...]] = field(
        default_factory=dict, repr=False, compare=False
    )
    _value_getters: Mapping[str, tuple[Getter, ...]] = field(
        default_factory=dict, repr=False, compare=False
    )


@dataclass(frozen=True)
class CorrelationHit:
    """A correlation rule that fired.

    Attributes:
        correlation: The rule.
        group: The ``group-by`` fields (as written in the rule) and their values.
        value: What the condition was tested on: the count, the number of distinct values,
            the sum..., the number of referenced rules seen (in order for temporal_ordered).
        values: For ``value_*`` correlations, the distinct values seen, in order of first sight.
        rules: Ids of the referenced rules whose matches made the hit, in order of first match.
        events: The events that made the hit, oldest first (at most the engine's per-key cap).
        first_seen: Event time of the oldest of them.
        last_seen: Event time of the newest of them.
    """

    correlation: Correlation
    group: dict[str, Any]
    value: float
    values: tuple[Any, ...]
    rules: tuple[str, ...]
    events: tuple[Mapping[str, Any], ...]
    first_seen: datetime
    last_seen: datetime

    @property
    def event_ids(self) -> tuple[str, ...]:
        """The ``event.id`` of each event that has one."""
        return tuple(str(e["event.id"]) for e in self.events if e.get("event.id") is not None)


@dataclass(frozen=True)
class _Entry:
    time: float
    ref: str
    value: Any
    event: Mapping[str, Any]


@dataclass
class _Window:
    correlation: Correlation
    group: tuple[Any, ...]
    entries: list[_Entry] = field(default_factory=list)
    opened: float = math.nan


def reference_key(reference: str) -> str:
    """A rule reference as looked up: UUIDs in canonical lower-case form, names as written."""
    try:
        return str(UUID(reference))
    except ValueError:
        return reference


def compile_correlation(
    sigma_rule: SigmaCorrelationRule,
    path: str,
    index: int,
    targets: Mapping[str, Rule | Correlation],
    fieldmap: FieldMap,
) -> Correlation:
    """Compile a parsed correlation rule whose references are all in ``targets``.

    Args:
        sigma_rule: The rule as pySigma parsed it, without errors, references unresolved.
        path: The file it came from.
        index: Its position in that file (for rules without id or name).
        targets: Loaded rules and correlations by :func:`reference_key` of id and of name.
        fieldmap: The Sigma-to-ECS field table, applied per referenced rule's log source.

    Raises:
        UnsupportedConstruct: An extended (boolean) temporal condition.
        DetectError: A reference is not in ``targets``.
    """
    condition = sigma_rule.condition
    if not isinstance(condition, SigmaCorrelationCondition):
        raise UnsupportedConstruct(
            "extended temporal conditions (a boolean expression over rule names) are not "
            "supported; list the rules under 'rules' and leave out 'condition'"
        )
    references = [ref.reference for ref in sigma_rule.rules or ()]
    resolved = []
    for reference in references:
        target = targets.get(reference_key(reference))
        if target is None:
            raise DetectError(
                f"correlation refers to rule {reference!r}, which is not loaded; load the file "
                "that defines it with this one (same folder or another path of the set)"
            )
        resolved.append(target)

    group_by = tuple(sigma_rule.group_by or ())
    aliases: dict[str, dict[str, str]] = {}
    for alias in sigma_rule.aliases:
        for ref, name in alias.mapping.items():
            target = targets.get(reference_key(ref.reference))
            if target is None:
                raise DetectError(
                    f"alias {alias.alias!r} names rule {ref.reference!r}, which is not a rule of "
                    "the correlation; name one of its rules"
                )
            aliases.setdefault(alias.alias, {})[target.id] = name
    value_fields: tuple[str, ...] = ()
    if isinstance(condition.fieldref, str):
        value_fields = (condition.fieldref,)
    elif condition.fieldref:
        value_fields = tuple(condition.fieldref)

    def getters(target: Rule | Correlation, names: Sequence[str]) -> tuple[Getter, ...]:
        logsource = target.logsource if isinstance(target, Rule) else {}
        return tuple(
            fieldmap.accessor(aliases.get(name, {}).get(target.id, name), logsource).getter()
            for name in names
        )

    ident = str(sigma_rule.id) if sigma_rule.id else sigma_rule.name or f"{path}#{index}"
    tags = tuple(str(tag) for tag in sigma_rule.tags)
    techniques, tactics = attack_tags(tags)
    return Correlation(
        id=ident,
        name=sigma_rule.name,
        title=sigma_rule.title,
        level=str(sigma_rule.level) if sigma_rule.level is not None else DEFAULT_LEVEL,
        description=sigma_rule.description or "",
        tags=tags,
        attack_techniques=techniques,
        attack_tactics=tactics,
        path=path,
        type=str(sigma_rule.type.name.lower()),
        rules=tuple(dict.fromkeys(target.id for target in resolved)),
        group_by=group_by,
        timespan=float(sigma_rule.timespan.seconds),
        operator=condition.op.name.lower(),
        threshold=float(condition.count),
        value_fields=value_fields,
        percentile=condition.percentile,
        generate_referenced=sigma_rule.generate,
        _group_getters={t.id: getters(t, group_by) for t in resolved},
        _value_getters={t.id: getters(t, value_fields) for t in resolved},
    )


def event_time(event: Mapping[str, Any]) -> float | None:
    """``@timestamp`` as POSIX seconds (ISO text, datetime, or epoch seconds or milliseconds)."""
    value = event.get("@timestamp")
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value / 1000 if value > 1e11 else float(value)
    return None


def _hashable(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return repr(sorted(value.items()))
    return value


def _aggregate(
    correlation: Correlation, entries: Sequence[_Entry]
) -> tuple[float, tuple[Any, ...]]:
    kind = correlation.type
    if kind == "event_count":
        return len(entries), ()
    if kind == "temporal":
        return len({e.ref for e in entries}), ()
    if kind == "temporal_ordered":
        expected = correlation.rules
        position = 0
        for entry in entries:
            if position < len(expected) and entry.ref == expected[position]:
                position += 1
        return position, ()
    distinct = tuple(dict.fromkeys(e.value for e in entries))
    if kind == "value_count":
        return len(distinct), distinct
    numbers = [float(e.value) for e in entries if _is_number(e.value)]
    if not numbers:
        return math.nan, distinct
    if kind == "value_sum":
        return math.fsum(numbers), distinct
    if kind == "value_avg":
        return statistics.fmean(numbers), distinct
    if kind == "value_median":
        return statistics.median(numbers), distinct
    percentile = correlation.percentile if correlation.percentile is not None else 50
    if len(numbers) == 1:
        return numbers[0], distinct
    return statistics.quantiles(numbers, n=100, method="inclusive")[
        min(max(percentile, 1), 99) - 1
    ], distinct


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


class CorrelationEngine:
    """Evaluates correlation rules over a stream of events and the base rules each fired.

    One engine holds the windows of one stream: create one per tenant with
    :meth:`vigil.detect.RuleSet.correlation_engine`.
    :meth:`feed` and :meth:`flush` take a lock, so several ingest threads may share an engine;
    events should arrive roughly in time order (windows are kept sorted, but a match older than
    a window's timespan relative to its newest match is dropped on arrival).

    Attributes:
        dropped_events: Matches dropped because a window held ``max_events_per_key`` already.
        dropped_keys: Windows dropped because ``max_keys`` windows were open.
        ungrouped: Matches skipped because a ``group-by`` field was missing from the event.
    """

    def __init__(
        self,
        correlations: Sequence[Correlation],
        max_events_per_key: int = DEFAULT_MAX_EVENTS_PER_KEY,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        """Index the correlations by the rules they refer to.

        Args:
            correlations: The correlations to evaluate (``RuleSet.correlations``).
            max_events_per_key: Matches kept per (correlation, group) window; the oldest are
                dropped past it (and counted in :attr:`dropped_events`).
            max_keys: Windows kept open; the least recently matched is dropped past it.
        """
        if max_events_per_key < 1 or max_keys < 1:
            raise ValueError("max_events_per_key and max_keys must be at least 1")
        self.correlations = tuple(correlations)
        self.max_events_per_key = max_events_per_key
        self.max_keys = max_keys
        self.dropped_events = 0
        self.dropped_keys = 0
        self.ungrouped = 0
        self._by_ref: dict[str, list[Correlation]] = {}
        for correlation in self.correlations:
            for ref in correlation.rules:
                self._by_ref.setdefault(ref, []).append(correlation)
        self._windows: OrderedDict[tuple[str, tuple[Any, ...]], _Window] = OrderedDict()
        self._watermark = -math.inf
        self._matches = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """How many windows are open."""
        return len(self._windows)

    def feed(self, event: Mapping[str, Any], fired: Sequence[Rule]) -> list[CorrelationHit]:
        """Add an event and the base rules it fired; return the correlations that fire now.

        Args:
            event: A flat ECS event with ``@timestamp`` (the clock is used when it has none).
            fired: What :meth:`vigil.detect.RuleSet.match` returned for it.

        Returns:
            The hits, nested correlations included; empty for most events.
        """
        if not fired or not self._by_ref:
            return []
        refs = [rule.id for rule in fired if rule.id in self._by_ref]
        if not refs:
            return []
        with self._lock:
            when = event_time(event)
            if when is None:
                when = self._watermark if self._watermark > -math.inf else time.time()
            self._watermark = max(self._watermark, when)
            hits: list[CorrelationHit] = []
            pending = [(ref, event, when) for ref in refs]
            while pending:
                ref, matched, at = pending.pop(0)
                for correlation in self._by_ref.get(ref, ()):
                    hit = self._add(correlation, ref, matched, at)
                    if hit is not None:
                        hits.append(hit)
                        if correlation.id in self._by_ref:
                            pending.append((correlation.id, hit.events[-1], at))
            self._matches += len(refs)
            if self._matches >= _SWEEP_EVERY:
                self._matches = 0
                hits.extend(self._sweep(self._watermark))
            return hits

    def flush(self, now: datetime | None = None) -> list[CorrelationHit]:
        """Close the windows that are over and return what their closing fires.

        Call it at the end of a finite stream (``now=None`` closes every window) or now and
        then on a live one, so that ``lt``/``lte``/``eq``/``neq`` conditions of groups that
        went quiet are decided and their memory is freed.

        Args:
            now: Event time up to which windows are over; None for all of them.
        """
        with self._lock:
            return self._sweep(math.inf if now is None else now.timestamp())

    def _add(
        self, correlation: Correlation, ref: str, event: Mapping[str, Any], when: float
    ) -> CorrelationHit | None:
        group = tuple(_hashable(get(event)) for get in correlation._group_getters[ref])
        if any(value is MISSING or value is None for value in group):
            self.ungrouped += 1
            return None
        value: Any = None
        if correlation.type in _VALUE_TYPES:
            values = tuple(_hashable(get(event)) for get in correlation._value_getters[ref])
            if any(v is MISSING or v is None for v in values):
                return None
            value = values[0] if len(values) == 1 else values
        key = (correlation.id, group)
        window = self._windows.get(key)
        closed: CorrelationHit | None = None
        if window is None:
            window = self._windows[key] = _Window(correlation, group)
            if len(self._windows) > self.max_keys:
                self._windows.popitem(last=False)
                self.dropped_keys += 1
        else:
            self._windows.move_to_end(key)

        at_close = correlation.operator in _DECIDED_AT_CLOSE
        if at_close and window.entries and when >= window.opened + correlation.timespan:
            closed = self._decide(window)
            window.entries.clear()
        if not window.entries:
            window.opened = when

        entry = _Entry(when, ref, value, event)
        if not window.entries or when >= window.entries[-1].time:
            window.entries.append(entry)
        else:
            window.entries.insert(bisect.bisect_right(window.entries, when, key=_time), entry)
        if len(window.entries) > self.max_events_per_key:
            del window.entries[0]
            self.dropped_events += 1
        if at_close:
            return closed

        newest = window.entries[-1].time
        start = bisect.bisect_left(window.entries, newest - correlation.timespan, key=_time)
        del window.entries[:start]
        hit = self._decide(window)
        if hit is not None:
            del self._windows[key]
        return hit

    def _decide(self, window: _Window) -> CorrelationHit | None:
        correlation = window.correlation
        value, distinct = _aggregate(correlation, window.entries)
        if math.isnan(value) or not _OPERATORS[correlation.operator](value, correlation.threshold):
            return None
        entries = window.entries
        return CorrelationHit(
            correlation=correlation,
            group=dict(zip(correlation.group_by, window.group, strict=True)),
            value=value,
            values=distinct,
            rules=tuple(dict.fromkeys(e.ref for e in entries)),
            events=tuple(e.event for e in entries),
            first_seen=datetime.fromtimestamp(entries[0].time, UTC),
            last_seen=datetime.fromtimestamp(entries[-1].time, UTC),
        )

    def _sweep(self, now: float) -> list[CorrelationHit]:
        hits: list[CorrelationHit] = []
        for key, window in list(self._windows.items()):
            timespan = window.correlation.timespan
            if window.correlation.operator in _DECIDED_AT_CLOSE:
                if window.entries and now >= window.opened + timespan:
                    hit = self._decide(window)
                    if hit is not None:
                        hits.append(hit)
                    del self._windows[key]
            elif not window.entries or window.entries[-1].time < now - timespan:
                del self._windows[key]
        return hits


def _time(entry: _Entry) -> float:
    return entry.time
