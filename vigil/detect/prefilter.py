"""Literal prefilter: from an event, the few rules whose needs it fulfils.

Every atom of every rule's needs (:mod:`vigil.detect.needs`) is filed by the value it tests.
For one event, each tested value is read and lower-cased once, then looked up: whole values in a
dict, prefixes and suffixes with one anchored match against a trie-shaped regular expression of
the literals' first ``LITERAL_CAP`` characters, and substrings with one pass of an Aho-Corasick
automaton (pyahocorasick) over the value. Keyword atoms are searched in all the event's strings
at once. A rule is a candidate when each of its clauses has an atom that held; rules without
needs are always candidates. What a field value held is remembered for the next event that
carries the same value (:class:`ValueMemo`).
"""

from __future__ import annotations

import gc
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ahocorasick  # type: ignore[import-not-found,unused-ignore]

from vigil.detect.conditions import text_values
from vigil.detect.fieldmap import MISSING
from vigil.detect.needs import Atom, Clause, FieldKey, Needs, clause_weight
from vigil.detect.values import number_texts

logger = logging.getLogger(__name__)

# Joins an event's strings for keyword search. A literal found across a join only makes an
# extra candidate, never a missed one.
_JOIN = "\n"

_END = ""

# Prefix, suffix and substring literals are matched on their first this many characters (last,
# for suffixes). A cut literal holds wherever the whole one does, so cutting only adds candidates,
# which the full rule test then rejects; it keeps the patterns, and the time to compile one per
# log-source group, small: Python parses a pattern character by character.
LITERAL_CAP = 12

# Values remembered by a ValueMemo, and the longest text worth remembering: at most about
# capacity x (longest + 150) bytes (~6 MB).
MEMO_CAPACITY = 16384
MEMO_LONGEST_TEXT = 256


def _trie_regex(literals: Iterable[str]) -> str:
    """A regular expression matching any of the literals, longest first at each position.

    Shared prefixes are factored out, so a mismatch costs one character comparison per branch
    point instead of one per literal.
    """
    root: dict[str, Any] = {}
    for literal in literals:
        node = root
        for char in literal:
            node = node.setdefault(char, {})
        node[_END] = {}

    def emit(node: dict[str, Any]) -> str:
        chain: list[str] = []
        while len(node) == 1 and _END not in node:
            ((char, node),) = node.items()
            chain.append(char)
        prefix = re.escape("".join(chain))
        branches = [re.escape(char) + emit(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return prefix
        if _END in node:
            branches.append("")
        if len(branches) == 1:
            return prefix + branches[0]
        return prefix + "(?:" + "|".join(branches) + ")"

    return emit(root)


class LiteralSet:
    """Prefix (or suffix) literals, each with its clause ids, matched at a text's start at once."""

    def __init__(self, literals: Mapping[str, Iterable[int]], reverse: bool = False) -> None:
        """Compile the matcher.

        Args:
            literals: Literal (lower case, not empty) to the clauses it satisfies.
            reverse: Match suffixes: literals and text are reversed before matching.
        """
        self._reverse = reverse
        keyed: dict[str, set[int]] = {}
        for literal, ids in literals.items():
            key = (literal[::-1] if reverse else literal)[:LITERAL_CAP]
            keyed.setdefault(key, set()).update(ids)
        self._pattern = re.compile(_trie_regex(keyed))
        # The match at a position is the longest literal there; the others that match there are
        # exactly the literals it starts with, so each literal carries their clauses too.
        self._clauses: dict[str, tuple[int, ...]] = {}
        for literal in sorted(keyed, key=len):
            clauses = keyed[literal]
            for end in range(len(literal) - 1, 0, -1):
                shorter = self._clauses.get(literal[:end])
                if shorter is not None:
                    clauses = clauses.union(shorter)
                    break
            self._clauses[literal] = tuple(sorted(clauses))

    def anchored(self, text: str, hits: set[int]) -> None:
        """Add the clauses of the literals the text starts with (ends with, when reversed)."""
        found = self._pattern.match(text[::-1] if self._reverse else text)
        if found is not None:
            hits.update(self._clauses[found.group()])


class LiteralAutomaton:
    """Many substrings found in one pass over the text: an Aho-Corasick automaton (in C).

    A trie-shaped regular expression makes the engine try its alternation at every position of
    the text; on the keyword text of Windows events (~760 characters, a few hundred literals)
    that search was a quarter of all matching time. The automaton reads each character once and
    reports every literal that ends there, overlaps included; literals are whole, so fewer rules
    become candidates only to fail their full test.
    """

    def __init__(self, literals: Mapping[str, Iterable[int]]) -> None:
        self._automaton = ahocorasick.Automaton()
        for literal, ids in literals.items():
            self._automaton.add_word(literal, tuple(sorted(ids)))
        self._automaton.make_automaton()

    def anywhere(self, text: str, hits: set[int]) -> None:
        """Add the clauses of the literals found anywhere in the text."""
        for _end, clauses in self._automaton.iter(text):
            hits.update(clauses)


class _ValueIndex:
    """The atoms on one event value: one field, or all strings for keywords (field None)."""

    def __init__(self, field: FieldKey | None) -> None:
        self.field = field
        self.atoms: dict[str, dict[str, set[int]]] = {
            "exact": {},
            "prefix": {},
            "suffix": {},
            "contains": {},
        }

    def add(self, atom: Atom, clause: int) -> None:
        self.atoms[atom.kind].setdefault(atom.literal, set()).add(clause)

    def compile(self, memo: ValueMemo) -> Callable[[Mapping[str, Any], set[int]], None]:
        """The per-event lookup: adds to ``hits`` the clauses whose atoms on this value hold.

        Args:
            memo: Remembers the clauses of short field values already scanned.
        """
        exact = {lit: tuple(ids) for lit, ids in self.atoms["exact"].items()}
        steps: list[Callable[[str, set[int]], None]] = []
        if self.atoms["prefix"]:
            steps.append(LiteralSet(self.atoms["prefix"]).anchored)
        if self.atoms["suffix"]:
            steps.append(LiteralSet(self.atoms["suffix"], reverse=True).anchored)
        if self.atoms["contains"]:
            steps.append(LiteralAutomaton(self.atoms["contains"]).anywhere)

        def scan(text: str, hits: set[int]) -> None:
            # ``text`` is lower case, as the evaluator compares it.
            if text in exact:
                hits.update(exact[text])
            for step in steps:
                step(text, hits)

        if self.field is None:

            def keyword_lookup(event: Mapping[str, Any], hits: set[int]) -> None:
                # All the event's strings at once; they rarely repeat, so nothing is remembered.
                # Lower-casing the joined text equals joining the lower-cased strings: the
                # separator is neither cased nor case-ignorable, so final sigmas stay final.
                scan(_JOIN.join(text_values(event)).lower(), hits)

            return keyword_lookup

        get = self.field.getter()
        table = memo.table()
        remember = memo.remember

        def field_lookup(event: Mapping[str, Any], hits: set[int]) -> None:
            value = get(event)
            if value is MISSING or value is None:
                return
            if type(value) is int:
                value = str(value)  # an integer reads exactly as its digits would
            if isinstance(value, str):
                found = table.get(value)
                if found is None:
                    scanned: set[int] = set()
                    scan(value.lower(), scanned)
                    found = tuple(scanned)
                    if len(value) <= MEMO_LONGEST_TEXT:
                        remember(table, value, found)
                if found:
                    hits.update(found)
                return
            items = value if isinstance(value, list | tuple) else (value,)
            for item in items:
                if item is not None:
                    for text in number_texts(item):
                        scan(text.lower(), hits)

        return field_lookup


class ValueMemo:
    """The clauses found in recently seen field values, shared by a rule set's prefilters.

    Field values repeat (the same executables, parents, registry keys, event codes), so a value
    is scanned once, not on every event that carries it. The memo is emptied when it holds
    ``capacity`` values, which bounds its memory whatever the input.
    """

    def __init__(self, capacity: int = MEMO_CAPACITY) -> None:
        self.capacity = capacity
        self.size = 0
        self._tables: list[dict[str, tuple[int, ...]]] = []

    def table(self) -> dict[str, tuple[int, ...]]:
        """A new table for one value index, emptied with the others."""
        table: dict[str, tuple[int, ...]] = {}
        self._tables.append(table)
        return table

    def remember(
        self, table: dict[str, tuple[int, ...]], text: str, found: tuple[int, ...]
    ) -> None:
        if self.size >= self.capacity:
            for each in self._tables:
                each.clear()
            self.size = 0
        table[text] = found
        self.size += 1


class Prefilter:
    """Picks, per event, the rules (by position) whose needs the event fulfils."""

    def __init__(self, needs: Sequence[Needs], memo: ValueMemo | None = None) -> None:
        """Index the needs of rules, one entry per rule position.

        Args:
            needs: Each rule's needs; a rule with none is a candidate for every event.
            memo: Where field values' clauses are remembered, shared by the prefilters of one
                rule set; a memo of its own when None.
        """
        memo = memo if memo is not None else ValueMemo()
        self.size = len(needs)
        self._always: list[int] = []
        clause_ids: dict[Clause, int] = {}
        # Per clause: the rules filed under it, each with its other clauses.
        self._filed: dict[int, list[tuple[int, frozenset[int]]]] = {}
        values: dict[FieldKey | None, _ValueIndex] = {}

        for position, rule_needs in enumerate(needs):
            if not rule_needs:
                self._always.append(position)
                continue
            ids = {clause_ids.setdefault(c, len(clause_ids)): clause_weight(c) for c in rule_needs}
            primary = min(ids, key=ids.__getitem__)
            self._filed.setdefault(primary, []).append((position, frozenset(ids) - {primary}))

        for clause, clause_id in clause_ids.items():
            for atom in clause:
                if atom.field not in values:
                    values[atom.field] = _ValueIndex(atom.field)
                values[atom.field].add(atom, clause_id)

        # Compiling builds large, short-lived, acyclic structures (tries, parsed patterns); the
        # cyclic garbage collector would walk every live object of the process many times over.
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._lookups = [index.compile(memo) for index in values.values()]
        finally:
            if collecting:
                gc.enable()
        logger.debug(
            "prefilter: %d rules indexed by %d clauses on %d values, %d always evaluated",
            len(needs) - len(self._always),
            len(clause_ids),
            len(values),
            len(self._always),
        )

    @property
    def always(self) -> list[int]:
        """Positions of the rules without needs, evaluated on every event."""
        return list(self._always)

    def candidates(self, event: Mapping[str, Any]) -> list[int]:
        """Positions, ascending, of the rules whose needs the event fulfils."""
        hits: set[int] = set()
        for lookup in self._lookups:
            lookup(event, hits)
        found = list(self._always)
        filed = self._filed
        for clause in hits:
            for position, others in filed.get(clause, ()):
                if not others or others <= hits:
                    found.append(position)
        found.sort()
        return found


class PrefilterChain:
    """Prefilters of consecutive runs of rules, asked as one over the whole sequence.

    A plan's rules are the rules of several log-source groups one after the other; each group's
    prefilter is built once and shared by every plan that holds the group.
    """

    def __init__(self, parts: Sequence[Prefilter]) -> None:
        """Chain the prefilters, the positions of each following those of the one before."""
        self._parts: list[tuple[Prefilter, int]] = []
        offset = 0
        for part in parts:
            self._parts.append((part, offset))
            offset += part.size
        self.size = offset

    @property
    def always(self) -> list[int]:
        """Positions of the rules without needs, evaluated on every event."""
        return [offset + p for part, offset in self._parts for p in part.always]

    def candidates(self, event: Mapping[str, Any]) -> list[int]:
        """Positions, ascending, of the rules whose needs the event fulfils."""
        found: list[int] = []
        for part, offset in self._parts:
            if offset:
                found.extend([offset + p for p in part.candidates(event)])
            else:
                found.extend(part.candidates(event))
        return found
