"""Literal conditions a rule needs, derived from its detection at compile time.

A rule's *needs* are a conjunction of clauses; a clause is a disjunction of atoms; an atom is a
literal test on the lower-cased text of one event field, or, for keyword detections, of any
string of the event. Needs are necessary, never sufficient: every event that fires a rule
fulfils the rule's needs, and an event that fulfils them is only a candidate that the rule's full
detection then decides. The prefilter (:mod:`vigil.detect.prefilter`) uses them to skip rules.

The derivation is sound by construction: whatever cannot be expressed as literals (negation,
case-insensitive regular expressions, numbers, CIDR, null, exists and field-reference tests,
``*``) adds no need; case-sensitive regular expressions need the literal runs they require.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from math import prod
from typing import Any, Literal, NamedTuple

from sigma.types import SpecialChars

from vigil.detect.fieldmap import FieldAccessor

# The parser behind re.compile (private, hence no stubs); without it regexes imply nothing.
_sre: Any
_sre_parser: Any
try:
    _sre = importlib.import_module("re._constants")
    _sre_parser = importlib.import_module("re._parser")
except ImportError:  # pragma: no cover - other Python implementations
    _sre = _sre_parser = None

logger = logging.getLogger(__name__)

Kind = Literal["exact", "prefix", "suffix", "contains"]

# Clauses kept per rule, and combinations tried when distributing an OR over ANDs: enough to
# require e.g. both an executable and a command-line literal, small enough to stay cheap.
MAX_CLAUSES = 3
MAX_COMBINATIONS = 16

# Character classes expanded into alternative literals, and alternatives kept per literal run.
MAX_CLASS_CHARS = 4
MAX_RUN_ALTERNATIVES = 16

# Rough odds that an atom holds on a random event: whole values are rarer than suffixes, which
# are rarer than prefixes (paths share theirs) and substrings; longer literals are rarer.
_KIND_WEIGHT: dict[str, float] = {"exact": 0.05, "suffix": 0.3, "prefix": 0.6, "contains": 1.0}


@dataclass(frozen=True)
class FieldKey:
    """The event value an atom tests: what a field accessor reads, without its value aliases.

    Attributes:
        keys: Event keys tried in order; the first present one gives the value.
        hashes_of: The ECS hash object rebuilt Sysmon-style, or None.
        sigma_name: The Sigma field (only kept when ``hashes_of`` falls back to it).
    """

    keys: tuple[str, ...]
    hashes_of: str | None = None
    sigma_name: str = ""

    @classmethod
    def of(cls, accessor: FieldAccessor) -> FieldKey:
        """The key of the value an accessor reads."""
        if accessor.hashes_of is None:
            return cls(accessor.keys)
        return cls(accessor.keys, accessor.hashes_of, accessor.sigma_name)

    def getter(self) -> Callable[[Mapping[str, Any]], Any]:
        """The same reader the rules use: the value, or ``fieldmap.MISSING``."""
        return FieldAccessor(self.sigma_name, self.keys, hashes_of=self.hashes_of).getter()


class Atom(NamedTuple):
    """One literal test on lower-cased event text.

    Attributes:
        kind: ``exact`` (whole value), ``prefix``, ``suffix`` or ``contains``.
        field: The value tested; None for keywords (every string of the event).
        literal: The literal, lower case.
    """

    kind: Kind
    field: FieldKey | None
    literal: str

    def weight(self) -> float:
        """Rough odds of the atom holding; lower is more selective."""
        return _KIND_WEIGHT[self.kind] / (1 + len(self.literal))


Clause = frozenset[Atom]
Needs = tuple[Clause, ...]

NO_NEEDS: Needs = ()


def clause_weight(clause: Clause) -> float:
    """Rough odds of any atom of the clause holding."""
    return min(1.0, sum(atom.weight() for atom in clause))


def _clause_order(clause: Clause) -> list[tuple[str, str, str]]:
    return sorted((atom.kind, atom.literal, repr(atom.field)) for atom in clause)


def _normalise(clauses: Iterable[Clause]) -> Needs:
    # A clause that contains another is implied by it; keep the most selective few.
    unique = sorted(set(clauses), key=lambda c: (clause_weight(c), len(c), _clause_order(c)))
    kept: list[Clause] = []
    for clause in unique:
        if not any(other <= clause for other in kept):
            kept.append(clause)
    return tuple(kept[:MAX_CLAUSES])


def any_atom(atoms: Sequence[Atom] | None) -> Needs:
    """The need that one of the atoms holds; None or no atoms mean no need."""
    if not atoms:
        return NO_NEEDS
    return (frozenset(atoms),)


def needs_all(parts: Sequence[Needs]) -> Needs:
    """Needs of an AND: every part's clauses."""
    return _normalise(clause for part in parts for clause in part)


def needs_any(parts: Sequence[Needs]) -> Needs:
    """Needs of an OR: one alternative's needs, so each clause picks an atom set from every part.

    When the full distribution would be too large, the longest parts lose their least
    selective clauses until it is not; that weakens the result but keeps it necessary. Cutting
    every part to one clause instead can leave only a clause that every event of the log source
    holds: ``type: EXECVE`` shared by all of an auditd rule's selections, while each selection's
    own ``a0`` is what tells them apart.
    """
    if not parts or any(not part for part in parts):
        return NO_NEEDS
    kept = [list(part) for part in parts]  # each part's clauses, most selective first
    while prod(map(len, kept)) > MAX_COMBINATIONS:
        max(kept, key=len).pop()
    return _normalise(frozenset().union(*combination) for combination in product(*kept))


def string_atom(
    parts: Sequence[str | SpecialChars], fold: bool, field: FieldKey | None
) -> Atom | None:
    """The most selective atom a wildcard string implies, or None when it implies nothing.

    Args:
        parts: The string as the evaluator compiles it: merged literals (lower case when
            ``fold``) and wildcards.
        fold: The evaluator compares lower-cased text; else it compares case-sensitively.
        field: The value tested, None for a keyword.
    """
    literals = [p for p in parts if isinstance(p, str)]
    if len(literals) == len(parts):
        # Equal strings have equal lower-case forms, whatever the case mode.
        text = "".join(literals)
        return Atom("exact", field, text if fold else text.lower()) if field else None

    candidates: list[Atom] = []
    for index, part in enumerate(parts):
        if not isinstance(part, str) or not part:
            continue
        if not fold:
            # A case-sensitive hit on ASCII text is also a hit on the lower-cased text; other
            # scripts can lower differently in context (final sigma), so they imply nothing.
            if not part.isascii():
                continue
            part = part.lower()
        candidates.append(Atom("contains", field, part))
        if field is not None and index == 0:
            candidates.append(Atom("prefix", field, part))
        if field is not None and index == len(parts) - 1:
            candidates.append(Atom("suffix", field, part))
    return min(candidates, key=Atom.weight, default=None)


def regex_needs(source: str, flags: int, field: FieldKey | None) -> Needs:
    """Literals a regular expression requires of the text it is searched in.

    Runs of literal characters in the required part of the pattern become ``contains`` atoms;
    alternations become one clause over their branches. Only case-sensitive patterns qualify
    (a case-insensitive Unicode match can pair characters whose lower-case forms differ, such as
    ``s`` and ``ſ``), and only ASCII runs (see :func:`string_atom`).

    Args:
        source: The pattern, as compiled by the evaluator.
        flags: Its ``re`` flags.
        field: The value it is searched in; None for keywords.
    """
    if _sre_parser is None or flags & re.IGNORECASE:
        return NO_NEEDS
    try:
        parsed = _sre_parser.parse(source, flags)
    except (re.error, RecursionError, AttributeError, TypeError, ValueError):
        return NO_NEEDS
    if parsed.state.flags & re.IGNORECASE:
        return NO_NEEDS
    return _sequence_needs(list(parsed), field)


# Stands for a part of a pattern that can match anything: it ends the current literal run.
_ANYTHING = object()


def _flat(items: Iterable[tuple[Any, Any]]) -> Iterable[tuple[Any, Any]]:
    # Groups do not change what is matched, except when they switch case-insensitivity on.
    for op, av in items:
        if op is _sre.SUBPATTERN:
            _group, add_flags, del_flags, inner = av
            if (add_flags | del_flags) & re.IGNORECASE:
                yield _ANYTHING, None
            else:
                yield from _flat(inner)
        else:
            yield op, av


def _sequence_needs(items: Iterable[tuple[Any, Any]], field: FieldKey | None) -> Needs:
    parts: list[Needs] = []
    run = [""]

    def flush() -> None:
        if all(run) and all(text.isascii() for text in run):
            parts.append(any_atom([Atom("contains", field, text.lower()) for text in run]))
        run[:] = [""]

    for op, av in _flat(items):
        if op is _sre.LITERAL:
            run[:] = [text + chr(av) for text in run]
        elif op in (_sre.AT, _sre.ASSERT, _sre.ASSERT_NOT):
            continue  # zero width: the literals either side stay adjacent
        elif op is _sre.IN and _small_class(av, len(run)):
            run[:] = [text + chr(member) for text in run for _, member in av]
        else:
            flush()
            if op is _sre.BRANCH:
                parts.append(needs_any([_sequence_needs(branch, field) for branch in av[1]]))
            elif op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT) and av[0] >= 1:
                parts.append(_sequence_needs(av[2], field))
            elif op is _sre.ATOMIC_GROUP:
                parts.append(_sequence_needs(av, field))
    flush()
    return needs_all(parts)


def _small_class(members: Sequence[tuple[Any, Any]], alternatives: int) -> bool:
    return (
        0 < len(members) <= MAX_CLASS_CHARS
        and alternatives * len(members) <= MAX_RUN_ALTERNATIVES
        and all(op is _sre.LITERAL for op, _ in members)
    )
