"""Compile a rule's detections and condition into one test on a flat ECS event.

pySigma parses the YAML, the detection items (with their modifiers applied) and the condition
string; this module walks those parsed objects and builds plain Python closures. Each named
detection is compiled once, however often the condition refers to it. Beside each test, the walk
derives the literals the test needs (:mod:`vigil.detect.needs`), which the prefilter indexes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from sigma.conditions import (
    ConditionAND,
    ConditionIdentifier,
    ConditionNOT,
    ConditionOR,
    ConditionSelector,
)
from sigma.modifiers import SigmaBase64Modifier, SigmaBase64OffsetModifier
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaDetections
from sigma.types import SigmaExists, SigmaFieldReference, SigmaNull, SigmaType

from vigil.detect.errors import UnsupportedConstruct
from vigil.detect.fieldmap import MISSING, FieldMap
from vigil.detect.needs import NO_NEEDS, FieldKey, Needs, needs_all, needs_any
from vigil.detect.values import (
    ValuePredicate,
    apply_aliases,
    as_text,
    compile_keywords,
    compile_values,
    value_needs,
)

logger = logging.getLogger(__name__)

EventPredicate = Callable[[Mapping[str, Any]], bool]
Getter = Callable[[Mapping[str, Any]], Any]

# Base64 text is case-significant: matching it case-insensitively would only add false hits.
_CASED_MODIFIERS = (SigmaBase64Modifier, SigmaBase64OffsetModifier)


class Compiled(NamedTuple):
    """A compiled detection, condition or item.

    Attributes:
        test: The event test.
        needs: Literals every event that passes the test has (see :mod:`vigil.detect.needs`).
    """

    test: EventPredicate
    needs: Needs


def all_of(tests: Sequence[EventPredicate]) -> EventPredicate:
    """AND of event tests, short-circuiting in order."""
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        first, second = tests
        return lambda event: first(event) and second(event)
    frozen = tuple(tests)
    return lambda event: all(test(event) for test in frozen)


def any_of(tests: Sequence[EventPredicate]) -> EventPredicate:
    """OR of event tests, short-circuiting in order."""
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        first, second = tests
        return lambda event: first(event) or second(event)
    frozen = tuple(tests)
    return lambda event: any(test(event) for test in frozen)


def _negate(test: EventPredicate) -> EventPredicate:
    return lambda event: not test(event)


def _all(parts: Sequence[Compiled]) -> Compiled:
    return Compiled(all_of([p.test for p in parts]), needs_all([p.needs for p in parts]))


def _any(parts: Sequence[Compiled]) -> Compiled:
    return Compiled(any_of([p.test for p in parts]), needs_any([p.needs for p in parts]))


def text_values(event: Mapping[str, Any]) -> list[str]:
    """Every string in an event, list elements included; what keyword detections search."""
    texts: list[str] = []
    for value in event.values():
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list | tuple):
            texts.extend([item for item in value if isinstance(item, str)])
    return texts


def _on_field(get: Getter, test: ValuePredicate) -> EventPredicate:
    def match(event: Mapping[str, Any]) -> bool:
        value = get(event)
        if value is MISSING or value is None:
            return False
        if isinstance(value, list | tuple):
            return any(test(item) for item in value if item is not None)
        return test(value)

    return match


def _is_null(get: Getter) -> EventPredicate:
    def match(event: Mapping[str, Any]) -> bool:
        value = get(event)
        return value is MISSING or value is None or (isinstance(value, list) and not value)

    return match


def _exists(get: Getter, wanted: bool) -> EventPredicate:
    def match(event: Mapping[str, Any]) -> bool:
        value = get(event)
        return (value is not MISSING and value is not None) is wanted

    return match


def _field_ref(get: Getter, other: Getter, ref: SigmaFieldReference) -> EventPredicate:
    def texts(value: Any) -> list[str]:
        if value is MISSING or value is None:
            return []
        items = value if isinstance(value, list | tuple) else [value]
        return [as_text(item).lower() for item in items if item is not None]

    if ref.starts_with and ref.ends_with:
        relation: Callable[[str, str], bool] = lambda mine, theirs: theirs in mine  # noqa: E731
    elif ref.starts_with:
        relation = str.startswith
    elif ref.ends_with:
        relation = str.endswith
    else:
        relation = str.__eq__

    def match(event: Mapping[str, Any]) -> bool:
        theirs = texts(other(event))
        return any(relation(mine, t) for mine in texts(get(event)) for t in theirs)

    return match


class DetectionCompiler:
    """Compiles the detections of one rule, resolving fields through the field map."""

    def __init__(self, fieldmap: FieldMap, logsource: Mapping[str, str]) -> None:
        """Bind the field map to the rule's log source.

        Args:
            fieldmap: The Sigma-to-ECS field table.
            logsource: The rule's ``logsource`` section.
        """
        self._fieldmap = fieldmap
        self._logsource = logsource
        self._getters: dict[str, Getter] = {}

    def _getter(self, sigma_field: str) -> Getter:
        if sigma_field not in self._getters:
            accessor = self._fieldmap.accessor(sigma_field, self._logsource)
            self._getters[sigma_field] = accessor.getter()
        return self._getters[sigma_field]

    def detection(self, detection: SigmaDetection) -> Compiled:
        """Compile one named detection (a map is AND, a list of maps is OR)."""
        parts = [
            self.detection(item) if isinstance(item, SigmaDetection) else self.item(item)
            for item in detection.detection_items
        ]
        return _all(parts) if detection.item_linking is ConditionAND else _any(parts)

    def item(self, item: SigmaDetectionItem) -> Compiled:
        """Compile one ``field|modifiers: values`` entry, or a keyword list when field is None."""
        cased = any(m in _CASED_MODIFIERS for m in item.modifiers)
        if item.field is None:
            compiled = self._keywords(item.value, item.value_linking is ConditionAND, cased)
        else:
            compiled = self._field(item, cased)
        if item.negated:
            return Compiled(_negate(compiled.test), NO_NEEDS)
        return compiled

    def _keywords(self, values: list[SigmaType], linked_and: bool, cased: bool) -> Compiled:
        def compiled(group: list[SigmaType]) -> Compiled:
            search = compile_keywords(group, cased=cased)
            return Compiled(
                lambda event: search(text_values(event)),
                value_needs(group, None, cased=cased, keyword=True),
            )

        if linked_and:
            return _all([compiled([v]) for v in values])
        return compiled(values)

    def _field(self, item: SigmaDetectionItem, cased: bool) -> Compiled:
        assert item.field is not None
        accessor = self._fieldmap.accessor(item.field, self._logsource)
        key = FieldKey.of(accessor)
        get = self._getter(item.field)
        if not item.value:
            return Compiled(_is_null(get), NO_NEEDS)
        values = apply_aliases(item.value, accessor.value_aliases)

        special: list[EventPredicate] = []
        plain: list[SigmaType] = []
        for value in values:
            if isinstance(value, SigmaNull):
                special.append(_is_null(get))
            elif isinstance(value, SigmaExists):
                special.append(_exists(get, value.exists))
            elif isinstance(value, SigmaFieldReference):
                special.append(_field_ref(get, self._getter(value.field), value))
            else:
                plain.append(value)

        if item.value_linking is ConditionAND:
            tests = [_on_field(get, compile_values([v], cased=cased)) for v in plain]
            needs = needs_all([value_needs([v], key, cased=cased) for v in plain])
            return Compiled(all_of(special + tests), needs)
        # Any special test (null, exists, field reference) is an alternative without literals.
        needs = NO_NEEDS if special else value_needs(plain, key, cased=cased)
        if plain:
            special.insert(0, _on_field(get, compile_values(plain, cased=cased)))
        return Compiled(any_of(special), needs)


def _selector_names(selector: ConditionSelector, names: Sequence[str]) -> list[str]:
    # Names starting with "_" come from Sigma filters and are only selected by "_" patterns.
    hidden_ok = selector.pattern.startswith("_")
    text = "*" if selector.pattern == "them" else selector.pattern
    pattern = re.compile(".*".join(re.escape(part) for part in text.split("*")))
    chosen = [
        name
        for name in names
        if pattern.fullmatch(name) and (hidden_ok or not name.startswith("_"))
    ]
    if not chosen:
        raise UnsupportedConstruct(
            f"condition selector '{selector.args[0]} of {selector.pattern}' matches no "
            "detection; fix the pattern or the detection names"
        )
    return chosen


def compile_condition(detections: SigmaDetections, compiler: DetectionCompiler) -> Compiled:
    """Compile the rule's condition(s) into one event test; several conditions are OR-linked.

    The test's needs follow the condition: AND needs every operand's, OR one operand's, and a
    ``not`` needs nothing.

    Raises:
        UnsupportedConstruct: The condition names an unknown detection or an unknown operator.
        sigma.exceptions.SigmaError: The condition does not parse.
    """
    compiled: dict[str, Compiled] = {}
    names = list(detections.detections)

    def named(name: str) -> Compiled:
        if name not in compiled:
            if name not in detections.detections:
                raise UnsupportedConstruct(
                    f"condition refers to detection '{name}', which the rule does not define"
                )
            compiled[name] = compiler.detection(detections.detections[name])
        return compiled[name]

    def walk(node: Any) -> Compiled:
        if isinstance(node, ConditionIdentifier):
            return named(node.identifier)
        if isinstance(node, ConditionSelector):
            parts = [named(name) for name in _selector_names(node, names)]
            return _all(parts) if node.cond_class is ConditionAND else _any(parts)
        if isinstance(node, ConditionNOT):
            return Compiled(_negate(walk(node.args[0]).test), NO_NEEDS)
        if isinstance(node, ConditionAND):
            return _all([walk(arg) for arg in node.args])
        if isinstance(node, ConditionOR):
            return _any([walk(arg) for arg in node.args])
        raise UnsupportedConstruct(f"condition element {node!r} is not supported")

    trees = [condition.parse(postprocess=False) for condition in detections.parsed_condition]
    return _any([walk(tree) for tree in trees])
