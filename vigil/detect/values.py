"""Compile Sigma values, as pySigma leaves them after applying modifiers, into predicates.

pySigma applies the value modifiers at parse time (``contains`` puts wildcards around a string,
``base64offset`` and ``windash`` expand into alternatives, ``re`` and ``cidr`` change the type).
What is left here is to turn each resulting value into a test on one scalar event value, and to
group many OR-linked values into one test (a set lookup, a tuple for ``str.startswith``) so that
long value lists stay cheap.
"""

from __future__ import annotations

import ipaddress
import logging
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sigma.types import (
    CompareOperators,
    Placeholder,
    SigmaBool,
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExpansion,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaRegularExpressionFlag,
    SigmaString,
    SigmaType,
    SpecialChars,
)

from vigil.detect.errors import UnsupportedConstruct
from vigil.detect.needs import (
    NO_NEEDS,
    Atom,
    FieldKey,
    Needs,
    any_atom,
    needs_any,
    regex_needs,
    string_atom,
)

logger = logging.getLogger(__name__)

ValuePredicate = Callable[[Any], bool]

_COMPARE = {
    CompareOperators.LT: operator.lt,
    CompareOperators.LTE: operator.le,
    CompareOperators.GT: operator.gt,
    CompareOperators.GTE: operator.ge,
    CompareOperators.NEQ: operator.ne,
}
_REGEX_FLAGS = {
    SigmaRegularExpressionFlag.IGNORECASE: re.IGNORECASE,
    SigmaRegularExpressionFlag.MULTILINE: re.MULTILINE,
    SigmaRegularExpressionFlag.DOTALL: re.DOTALL,
}


def as_text(value: Any) -> str:
    """The text a string match sees for an event value (booleans as ``true``/``false``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def canonical_number(number: float) -> str:
    """One text for equal numbers: ``4728``, ``4728.0`` and ``4.728e3`` all read ``4728``."""
    if isinstance(number, float) and not number.is_integer():
        return repr(number)
    try:
        return str(int(number))
    except (OverflowError, ValueError):  # infinity, NaN
        return repr(number)


def number_texts(value: Any) -> tuple[str, ...]:
    """The texts a value shows to string and number matching: its text, and if it is a number
    whose canonical form differs, that form too."""
    text = as_text(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        canonical = canonical_number(value)
        if canonical != text:
            return (text, canonical)
    return (text,)


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class _StringGroup:
    """OR-linked wildcard strings of one case mode, sorted into the cheapest test for each."""

    def __init__(self, fold: bool) -> None:
        self.fold = fold
        self.exact: set[str] = set()
        self.prefixes: list[str] = []
        self.suffixes: list[str] = []
        self.infixes: list[str] = []
        self.patterns: list[str] = []
        self.pattern_parts: list[list[str | SpecialChars]] = []
        self.any_value = False

    def add(self, value: SigmaString) -> None:
        parts = string_parts(value, self.fold)
        star = SpecialChars.WILDCARD_MULTI
        literals = [p for p in parts if isinstance(p, str)]
        specials = [p for p in parts if not isinstance(p, str)]
        if not specials:
            self.exact.add("".join(literals))
        elif all(p is star for p in parts):
            self.any_value = True
        elif specials == [star] and parts[-1] is star:
            self.prefixes.append(literals[0])
        elif specials == [star] and parts[0] is star:
            self.suffixes.append(literals[0])
        elif specials == [star, star] and len(parts) == 3 and parts[1] is not star:
            self.infixes.append(literals[0])
        else:
            self.patterns.append(_wildcard_regex(parts))
            self.pattern_parts.append(parts)

    def predicate(self) -> ValuePredicate | None:
        if self.any_value:
            return lambda value: True
        if not (self.exact or self.prefixes or self.suffixes or self.infixes or self.patterns):
            return None
        fold = self.fold
        exact = frozenset(self.exact)
        prefixes = tuple(self.prefixes)
        suffixes = tuple(self.suffixes)
        infixes = tuple(self.infixes)
        pattern = re.compile("|".join(f"(?:{p})" for p in self.patterns), re.DOTALL)
        has_pattern = bool(self.patterns)

        def match(value: Any) -> bool:
            text = as_text(value)
            if fold:
                text = text.lower()
            return (
                text in exact
                or (bool(prefixes) and text.startswith(prefixes))
                or (bool(suffixes) and text.endswith(suffixes))
                or any(infix in text for infix in infixes)
                or (has_pattern and pattern.fullmatch(text) is not None)
            )

        return match


def string_parts(value: SigmaString, fold: bool) -> list[str | SpecialChars]:
    """A Sigma string as the evaluator compiles it: literals (lower case if fold) and wildcards.

    Raises:
        UnsupportedConstruct: The string holds a placeholder.
    """
    for part in value.s:
        if isinstance(part, Placeholder):
            raise UnsupportedConstruct(
                f"placeholder %{part.name}% cannot be resolved by Vigil; replace it with "
                "the values it stands for"
            )
    return _merge_literals(p.lower() if isinstance(p, str) and fold else p for p in value.s)


def _merge_literals(parts: Iterable[str | SpecialChars | Placeholder]) -> list[str | SpecialChars]:
    merged: list[str | SpecialChars] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        elif not isinstance(part, Placeholder):
            merged.append(part)
    return merged


def _wildcard_regex(parts: Iterable[str | SpecialChars]) -> str:
    return "".join(
        re.escape(p) if isinstance(p, str) else (".*" if p is SpecialChars.WILDCARD_MULTI else ".")
        for p in parts
    )


def _flatten(values: Iterable[SigmaType]) -> Iterable[SigmaType]:
    for value in values:
        if isinstance(value, SigmaExpansion):
            yield from _flatten(value.values)
        else:
            yield value


def apply_aliases(values: Sequence[SigmaType], aliases: Mapping[str, tuple[str, ...]]) -> list[Any]:
    """Add the ECS values a field map gives for a Sigma value (e.g. ``Initiated: 'true'``).

    The original value stays as an alternative so that raw events with the Sigma field still match.
    """
    if not aliases:
        return list(values)
    result: list[SigmaType] = []
    for value in values:
        key: str | None = None
        if isinstance(value, SigmaBool):
            key = "true" if value.boolean else "false"
        elif isinstance(value, SigmaString) and not value.contains_special():
            key = value.to_plain().lower()
        if key is not None and key in aliases:
            result.append(SigmaExpansion([value, *(SigmaString(a) for a in aliases[key])]))
        else:
            result.append(value)
    return result


def compile_values(
    values: Sequence[SigmaType], *, cased: bool = False, keyword: bool = False
) -> ValuePredicate:
    """Compile OR-linked Sigma values into one test on a scalar event value.

    Args:
        values: Values of one detection item after pySigma applied its modifiers.
        cased: Match plain strings case-sensitively (used for base64-encoded values).
        keyword: Keyword search: plain strings match anywhere in the value.

    Returns:
        A predicate taking one non-None scalar event value.

    Raises:
        UnsupportedConstruct: A value type has no evaluator here (placeholders, timestamps, ...).
    """
    folded, exact_case = _StringGroup(fold=True), _StringGroup(fold=False)
    numbers: set[float] = set()
    tests: list[ValuePredicate] = []

    for value in _flatten(values):
        if isinstance(value, SigmaString):
            if keyword:
                value = _anywhere(value)
            group = exact_case if cased or isinstance(value, SigmaCasedString) else folded
            group.add(value)
        elif isinstance(value, SigmaBool):
            folded.add(SigmaString("true" if value.boolean else "false"))
        elif isinstance(value, SigmaNumber) and type(value) is SigmaNumber:
            numbers.add(value.number)
            text = SigmaString(as_text(value.number))
            folded.add(_anywhere(text) if keyword else text)
        elif isinstance(value, SigmaRegularExpression):
            tests.append(_regex(value))
        elif isinstance(value, SigmaCIDRExpression):
            tests.append(_cidr(value))
        elif isinstance(value, SigmaCompareExpression):
            tests.append(_compare(value))
        else:
            raise UnsupportedConstruct(
                f"value type {type(value).__name__} ({value!r}) is not supported by Vigil's "
                "evaluator; rewrite the detection without it"
            )

    if numbers:
        frozen = frozenset(numbers)
        tests.append(
            lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v in frozen
        )
    for group in (folded, exact_case):
        test = group.predicate()
        if test is not None:
            tests.insert(0, test)
    return _any_of(tests)


# Joins an event's strings for a keyword search: the first one that no keyword contains, so that
# no keyword can be found across two strings.
_SEPARATORS = ("\n", "\x00", "\x1f", "\uffff")


def _within_one(parts: Sequence[str | SpecialChars], separator: str) -> str:
    # "*a*b*" matches a whole string if "a", then "b", occur in it: a search that must not
    # cross the separator between two strings.
    inner = list(parts)
    while inner and inner[0] is SpecialChars.WILDCARD_MULTI:
        inner.pop(0)
    while inner and inner[-1] is SpecialChars.WILDCARD_MULTI:
        inner.pop()
    gap = "[^" + re.escape(separator) + "]"
    return "".join(
        re.escape(p)
        if isinstance(p, str)
        else gap + "*"
        if p is SpecialChars.WILDCARD_MULTI
        else gap
        for p in inner
    )


def compile_keywords(
    values: Sequence[SigmaType], *, cased: bool = False
) -> Callable[[Sequence[str]], bool]:
    """Compile OR-linked keywords into one test on all the strings of an event.

    The result is that of testing each string with ``compile_values(values, cased=cased,
    keyword=True)``. When the keywords are plain strings (with wildcards), which is the common
    case, the strings are joined and searched once instead of once per string and keyword.

    Raises:
        UnsupportedConstruct: As :func:`compile_values`.
    """
    test = compile_values(values, cased=cased, keyword=True)

    def each(texts: Sequence[str]) -> bool:
        return any(test(text) for text in texts)

    folded, exact_case = _StringGroup(fold=True), _StringGroup(fold=False)
    for value in _flatten(values):
        if not isinstance(value, SigmaString):
            return each
        value = _anywhere(value)
        (exact_case if cased or isinstance(value, SigmaCasedString) else folded).add(value)
    groups = (folded, exact_case)
    if any(g.any_value or g.exact or g.prefixes or g.suffixes for g in groups):
        return each
    literals = [p for g in groups for p in g.infixes] + [
        p for g in groups for parts in g.pattern_parts for p in parts if isinstance(p, str)
    ]
    separator = next((s for s in _SEPARATORS if not any(s in lit for lit in literals)), None)
    if separator is None:
        return each

    searches: list[tuple[bool, tuple[str, ...], Callable[[str], Any] | None]] = []
    for group in groups:
        patterns = [_within_one(parts, separator) for parts in group.pattern_parts]
        search = re.compile("|".join(patterns)).search if patterns else None
        if group.infixes or search is not None:
            searches.append((group.fold, tuple(group.infixes), search))

    def joined(texts: Sequence[str]) -> bool:
        if not texts:
            return False
        for fold, infixes, search in searches:
            text = separator.join([t.lower() for t in texts] if fold else texts)
            if any(infix in text for infix in infixes):
                return True
            if search is not None:
                if text.count(separator) != len(texts) - 1:
                    return each(texts)  # a string holds the separator: search one by one
                if search(text) is not None:
                    return True
        return False

    return joined


def value_needs(
    values: Sequence[SigmaType],
    field: FieldKey | None,
    *,
    cased: bool = False,
    keyword: bool = False,
) -> Needs:
    """What every value :func:`compile_values` accepts with the same arguments has.

    Mirrors :func:`compile_values` value by value: strings, booleans and numbers on a field give
    literals, regular expressions the literals they require; a value that implies none (a CIDR
    or comparison, ``*``, a number as a keyword) makes the whole OR-linked list imply nothing.

    Args:
        values: The values given to :func:`compile_values`.
        field: The value they are tested on; None for keywords.
        cased: As for :func:`compile_values`.
        keyword: As for :func:`compile_values`.
    """
    alternatives: list[Needs] = []
    for value in _flatten(values):
        atom: Atom | None = None
        if isinstance(value, SigmaRegularExpression):
            alternatives.append(regex_needs(value.regexp.to_plain(), _regex_flags(value), field))
            continue
        if isinstance(value, SigmaString):
            if keyword:
                value = _anywhere(value)
            fold = not (cased or isinstance(value, SigmaCasedString))
            atom = string_atom(string_parts(value, fold), fold, field)
        elif isinstance(value, SigmaBool) and field is not None:
            atom = Atom("exact", field, "true" if value.boolean else "false")
        elif (
            isinstance(value, SigmaNumber) and type(value) is SigmaNumber and field and not keyword
        ):
            # Matched as the text of the number or as an equal number; the prefilter reads a
            # number in the event as both its text and its canonical form (see number_texts).
            texts = {as_text(value.number), canonical_number(value.number)}
            alternatives.append(any_atom([Atom("exact", field, text) for text in texts]))
            continue
        if atom is None:
            return NO_NEEDS
        alternatives.append(any_atom([atom]))
    return needs_any(alternatives)


def _any_of(tests: list[ValuePredicate]) -> ValuePredicate:
    if not tests:
        return lambda value: False
    if len(tests) == 1:
        return tests[0]
    return lambda value: any(test(value) for test in tests)


def _anywhere(value: SigmaString) -> SigmaString:
    if not value.startswith(SpecialChars.WILDCARD_MULTI):
        value = SpecialChars.WILDCARD_MULTI + value
    if not value.endswith(SpecialChars.WILDCARD_MULTI):
        value = value + SpecialChars.WILDCARD_MULTI
    return value


def _regex_flags(value: SigmaRegularExpression) -> int:
    flags = 0
    for flag in value.flags:
        flags |= _REGEX_FLAGS[flag]
    return flags


def _regex(value: SigmaRegularExpression) -> ValuePredicate:
    flags = _regex_flags(value)
    source = value.regexp.to_plain()
    try:
        search = re.compile(source, flags).search
    except re.error as exc:
        raise UnsupportedConstruct(
            f"regular expression {source!r} does not compile in Python: {exc}; rewrite it"
        ) from exc
    return lambda v: search(as_text(v)) is not None


def _cidr(value: SigmaCIDRExpression) -> ValuePredicate:
    network = value.network

    def in_network(v: Any) -> bool:
        try:
            return ipaddress.ip_address(as_text(v).strip()) in network
        except ValueError:
            return False

    return in_network


def _compare(value: SigmaCompareExpression) -> ValuePredicate:
    op = _COMPARE[value.op]
    bound = value.number.number

    def compare(v: Any) -> bool:
        number = _as_number(v)
        return number is not None and op(number, bound)

    return compare
