"""The literal prefilter changes no result: RuleSet.match equals the brute-force reference.

``RuleSet.match_all_rules`` evaluates every rule of the event's log sources; ``RuleSet.match``
only those whose literal needs the event fulfils. Both must return the same rules in the same
order on every event: generated ones mixing the literals of the loaded rules, the cases of
Vigil's own rules, and hand-made edge cases of case folding, lists and field fallbacks. Keyword
searches over all of an event's strings at once must equal searching string by string.
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from sigma.types import SigmaString

from vigil.detect import Rule, RuleSet, builtin_rules_dir
from vigil.detect.prefilter import LITERAL_CAP
from vigil.detect.values import compile_keywords, compile_values
from vigil.logsources.base import reader_for

from .eventgen import EventMaker, read_rule_literals
from .helpers import SIGMA_LINUX, process_event, rule_text

SIGMA_WINDOWS = SIGMA_LINUX.parent / "windows"
SIGMA_WINDOWS_PROCESS = SIGMA_WINDOWS / "process_creation"
EVTX_SAMPLES = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "evtx-attack-samples"
)
CASES_FILE = Path(__file__).resolve().parents[1] / "rules" / "cases.yml"
PROCESS_START = {
    "event.kind": "event",
    "event.category": ["process"],
    "event.type": ["start"],
    "host.os.type": "linux",
}


def ids(rules: list[Rule]) -> list[int]:
    return [id(rule) for rule in rules]


def compare(ruleset: RuleSet, events: list[dict[str, Any]]) -> tuple[list[str], set[int]]:
    """One line per event on which match and match_all_rules differ, and the rules that fired."""
    found = []
    fired: set[int] = set()
    for event in events:
        fast, reference = ruleset.match(event), ruleset.match_all_rules(event)
        fired.update(ids(reference))
        if ids(fast) != ids(reference):
            titles = ([r.title for r in fast], [r.title for r in reference])
            found.append(f"{event!r}: match {titles[0]} != reference {titles[1]}")
    return found, fired


def generated(paths: list[Path], count: int, seed: int) -> list[dict[str, Any]]:
    files = [
        f for path in paths for f in (sorted(path.rglob("*.yml")) if path.is_dir() else [path])
    ]
    return EventMaker(read_rule_literals(files, random.Random(seed)), seed).events(count)


def case_events() -> list[dict[str, Any]]:
    """Every fire and miss event of tests/rules/cases.yml, as the own-rule tests build them."""
    cases = yaml.safe_load(CASES_FILE.read_text(encoding="utf-8"))
    events = []
    for entry in cases.values():
        for fields in (entry.get("fire") or []) + (entry.get("miss") or []):
            event = {**PROCESS_START, **fields}
            if isinstance(event.get("process.command_line"), str):
                event.setdefault("process.args", event["process.command_line"].split())
            events.append(event)
    return events


@pytest.fixture(scope="module")
def linux_paths() -> list[Path]:
    if not SIGMA_LINUX.is_dir():
        pytest.skip(f"SigmaHQ rules not found at {SIGMA_LINUX}")
    return [builtin_rules_dir(), SIGMA_LINUX]


@pytest.fixture(scope="module")
def linux(linux_paths: list[Path]) -> RuleSet:
    return RuleSet.from_paths(linux_paths)


def test_linux_rules_generated_events(linux: RuleSet, linux_paths: list[Path]) -> None:
    differ, fired = compare(linux, generated(linux_paths, 4000, seed=11))
    assert differ == []
    # The events are only a good test if they make most rules fire.
    assert len(fired) >= len(linux.rules) // 2


def test_own_rule_cases(linux: RuleSet) -> None:
    events = case_events()
    assert len(events) >= 40
    assert compare(linux, events)[0] == []


def test_prefilter_skips_most_linux_rules(linux: RuleSet) -> None:
    event = process_event("/usr/bin/ls", "ls -la /home/alice")
    plan = linux._plan(event)
    assert len(plan.prefilter.candidates(event)) < len(plan.rules) // 10


@pytest.mark.skipif(
    not SIGMA_WINDOWS_PROCESS.is_dir(), reason=f"no SigmaHQ rules at {SIGMA_WINDOWS_PROCESS}"
)
def test_windows_process_rules_generated_events() -> None:
    ruleset = RuleSet.from_paths([SIGMA_WINDOWS_PROCESS])
    differ, fired = compare(ruleset, generated([SIGMA_WINDOWS_PROCESS], 1000, seed=12))
    assert differ == []
    assert len(fired) >= len(ruleset.rules) // 4


def evtx_events(per_file: int) -> list[dict[str, Any]]:
    """The first records of every EVTX-ATTACK-SAMPLES file, as the EVTX reader gives them."""
    events = []
    for path in sorted(EVTX_SAMPLES.rglob("*.evtx")):
        for number, event in enumerate(reader_for(path).read(path)):
            if number == per_file:
                break
            events.append(event)
    return events


@pytest.mark.skipif(
    not (SIGMA_WINDOWS.is_dir() and EVTX_SAMPLES.is_dir()),
    reason=f"no SigmaHQ Windows rules at {SIGMA_WINDOWS} or no samples at {EVTX_SAMPLES}",
)
def test_windows_rules_real_evtx_events() -> None:
    # Real records span many channels (log-source groups shared between plans), carry large
    # EventData and fire keyword, regex and cut-literal rules the generated events do not.
    ruleset = RuleSet.from_paths([SIGMA_WINDOWS])
    events = evtx_events(per_file=3)
    differ, fired = compare(ruleset, events)
    assert len(events) >= 300
    assert differ == []
    assert len(fired) >= 20


def test_literals_longer_than_the_cap() -> None:
    # The prefilter compares only the first LITERAL_CAP characters; the rule test decides.
    head = "x" * LITERAL_CAP
    ruleset = ruleset_of(
        sel(CommandLine__contains=head + "wanted"),
        sel(CommandLine__startswith=head + "wanted"),
        sel(CommandLine__endswith="wanted" + head),
    )
    for command_line, fired in [
        (f"a {head}wanted b", [0]),
        (f"a {head}other b", []),
        (f"{head}wanted", [0, 1]),
        (f"{head}other", []),
        (f"wanted{head}", [2]),
        (f"other{head}", []),
    ]:
        event = process_event("/bin/x", command_line)
        assert ids(ruleset.match(event)) == ids(ruleset.match_all_rules(event))
        assert [ruleset.rules.index(r) for r in ruleset.match(event)] == fired, command_line


def ruleset_of(*detections: dict[str, Any]) -> RuleSet:
    text = "\n---\n".join(
        rule_text(detection, title=f"rule {n}", id=str(uuid.UUID(int=n + 1)))
        for n, detection in enumerate(detections)
    )
    ruleset = RuleSet.from_yaml(text)
    assert not ruleset.errors, [str(e) for e in ruleset.errors]
    return ruleset


def sel(condition: str = "selection", **items: Any) -> dict[str, Any]:
    return {
        "selection": {k.replace("__", "|"): v for k, v in items.items()},
        "condition": condition,
    }


EDGE_RULES = [
    sel(Image__endswith="/curl"),
    sel(CommandLine__contains__cased="ΑΣ"),
    sel(CommandLine__contains__cased="AbC"),
    sel(CommandLine__startswith="σ"),
    sel(CommandLine__endswith="k"),
    sel(CommandLine__re="base64\\s+-d"),
    sel(CommandLine__re="(?i)SECRET"),
    sel(CommandLine__re="a(?i:bc)d"),
    sel(CommandLine="a*b?c"),
    sel(**{"CommandLine|contains|all": ["-x", "-y"]}),
    sel("not selection", Image__endswith="/ls"),
    sel(Image=None),
    sel(ProcessId=4444),
    sel(ProcessId=4444.0),
    sel(ProcessId=1.5),
    {"keywords": ["evil.example", "ΣΊΣΥΦΟΣ"], "condition": "keywords"},
    {
        "selection": {"Image|endswith": "/sh"},
        "filter": {"CommandLine|contains": "safe"},
        "condition": "selection and not filter",
    },
    {
        "a": {"Image|endswith": "/nc"},
        "b": {"CommandLine|contains": " -e "},
        "c": {"ParentImage|endswith": "/python3"},
        "condition": "(a and b) or c",
    },
]

EDGE_EVENTS = [
    process_event("/usr/bin/curl", "curl x"),
    process_event("/USR/BIN/CURL", "curl x"),
    process_event("/usr/bin/x", "xΑΣ y"),
    process_event("/usr/bin/x", "xΑΣ"),
    process_event("/usr/bin/x", "xΑΣb"),  # lower-cased in context: σ, where the literal has ς
    process_event("/usr/bin/x", "xAbC"),
    process_event("/usr/bin/x", "xabc"),
    process_event("/usr/bin/x", "Σ at the start"),
    process_event("/usr/bin/x", "ends with the kelvin sign \u212a"),
    process_event("/usr/bin/x", "ends with K"),
    process_event("/usr/bin/x", "BASE64   -d payload"),
    process_event("/usr/bin/x", "base64 -d payload"),
    process_event("/usr/bin/x", "only a ſecret"),  # (?i) pairs ſ with s; lower() does not
    process_event("/usr/bin/x", "aBCd"),
    process_event("/usr/bin/x", "aXXbZc"),
    process_event("/usr/bin/x", "-y then -X"),
    process_event("/usr/bin/ls", "ls"),
    process_event("/usr/bin/x", "x", **{"process.pid": 4444}),
    process_event("/usr/bin/x", "x", **{"process.pid": "4444"}),
    process_event("/usr/bin/x", "x", **{"process.pid": 4444.0}),
    process_event("/usr/bin/x", "x", **{"process.pid": "4444.0"}),
    process_event("/usr/bin/x", "x", **{"process.pid": [1, 4444]}),
    process_event("/usr/bin/x", "x", **{"process.pid": 1.5}),
    process_event("/usr/bin/x", "x", **{"process.pid": True}),
    process_event("/usr/bin/x", "see EVIL.example"),
    process_event("/usr/bin/x", "x", **{"message": ["a", "σίσυφος"]}),
    process_event("/usr/bin/sh", "sh -c safe"),
    process_event("/usr/bin/sh", "sh -c other"),
    process_event("/usr/bin/nc", "nc -e /bin/sh"),
    process_event("/usr/bin/x", "x", **{"process.parent.executable": "/usr/bin/python3"}),
    {"event.category": ["process"], "event.type": ["start"], "Image": "/bin/curl"},
    {"event.category": ["process"], "event.type": ["start"], "process.executable": None},
    {
        "event.category": ["process"],
        "event.type": ["start"],
        "process.executable": ["/bin/true", "/usr/bin/curl"],
    },
    {"event.category": ["process"], "event.type": ["start"], "CommandLine": "raw -x -y"},
]


def test_edge_cases_match_the_reference() -> None:
    ruleset = ruleset_of(*EDGE_RULES)
    differ, fired = compare(ruleset, EDGE_EVENTS)
    assert differ == []
    assert len(fired) >= len(EDGE_RULES) - 2


@pytest.mark.parametrize(
    ("detection", "always"),
    [
        pytest.param(sel(Image__endswith="/curl"), False, id="literal"),
        pytest.param(sel("not selection", Image__endswith="/curl"), True, id="not-only"),
        pytest.param(sel(CommandLine__re="(?i)curl"), True, id="regex-nocase"),
        pytest.param(sel(CommandLine__re="curl\\s"), False, id="regex-literal"),
        pytest.param(sel(ProcessId=4444), False, id="number"),
        pytest.param({"keywords": [4444], "condition": "keywords"}, True, id="number-keyword"),
        pytest.param(sel(CommandLine="*"), True, id="any-value"),
        pytest.param({"keywords": ["evil"], "condition": "keywords"}, False, id="keyword"),
    ],
)
def test_rules_without_literals_are_always_evaluated(
    detection: dict[str, Any], always: bool
) -> None:
    ruleset = ruleset_of(detection)
    plan = ruleset._plan(process_event("/bin/x", "x"))
    assert (plan.prefilter.always == [0]) is always


def test_needs_of_and_or_not() -> None:
    rule = ruleset_of(EDGE_RULES[-1]).rules[0]
    literals = {frozenset(atom.literal for atom in clause) for clause in rule.needs}
    # (a and b) or c: one of /nc or /python3, and one of " -e " or /python3.
    assert literals == {frozenset({"/nc", "/python3"}), frozenset({" -e ", "/python3"})}

    rule = ruleset_of(EDGE_RULES[-2]).rules[0]
    assert [[atom.literal for atom in clause] for clause in rule.needs] == [["/sh"]]


def test_a_value_all_selections_share_does_not_make_every_event_a_candidate() -> None:
    # SigmaHQ's auditd rules repeat ``type: EXECVE`` in every selection; what tells the
    # selections apart is each one's ``a0``. Too many combinations to distribute in full must
    # not leave only the shared clause, which every exec event holds.
    rule = {
        "zip": {"type": "EXECVE", "a0": "zip"},
        "gzip": {"type": "EXECVE", "a0": "gzip", "a1": "-k"},
        "tar": {"type": "EXECVE", "a0": "tar", "a1|contains": "-c"},
        "condition": "1 of zip or 1 of gzip or 1 of tar",
    }
    ruleset = ruleset_of(rule)
    start = {"event.category": ["process"], "event.type": ["start"], "type": "EXECVE"}
    everyday = {**start, "a0": "ls", "a1": "-c"}
    attack = {**start, "a0": "tar", "a1": "-czf"}
    assert ruleset._plan(everyday).prefilter.candidates(everyday) == []
    assert ruleset.match(attack) == ruleset.rules
    assert compare(ruleset, [everyday, attack, {**start, "a0": "gzip", "a1": "-k"}])[0] == []


KEYWORD_LISTS = [
    pytest.param(["evil", "BAD thing"], False, id="infixes"),
    pytest.param(["wget * - http* | perl", "a?c", "x*"], False, id="patterns"),
    pytest.param(["AbC", "q*Z"], True, id="cased"),
    pytest.param(["ΣΊΣΥΦΟΣ", "line\nbreak"], False, id="separator-in-keyword"),
    pytest.param(["*"], False, id="any"),
]
TEXT_LISTS = [
    [],
    ["nothing here"],
    ["an EVIL one", "x"],
    ["wget a - http://b | perl"],
    ["wget a\n - http://b | PERL"],  # the separator inside one string
    ["wget a", " - http://b | perl"],  # must not match across two strings
    ["abc", "AbC", "aXc"],
    ["q then z", "q then Z"],
    ["σίσυφος", "line", "break"],
    ["line\nbreak"],
]


@pytest.mark.parametrize(("keywords", "cased"), KEYWORD_LISTS)
def test_joined_keyword_search_equals_search_per_string(keywords: list[str], cased: bool) -> None:
    values = [SigmaString(keyword) for keyword in keywords]
    each = compile_values(values, cased=cased, keyword=True)
    joined = compile_keywords(values, cased=cased)
    for texts in TEXT_LISTS:
        assert joined(texts) is any(each(text) for text in texts), texts


def test_events_with_unhashable_log_source_fields_are_matched_too() -> None:
    # Log sources are remembered by the fields that decide them; a reader may leave a mapping
    # there, which cannot be a key: such events are worked out each time, never refused.
    ruleset = ruleset_of(sel(Image__endswith="/curl"))
    odd = {
        "event.category": ["process"],
        "event.type": ["start"],
        "vigil.sigma.category": [{"not": "hashable"}],
        "process.executable": "/usr/bin/curl",
    }
    assert [r.title for r in ruleset.match(odd)] == ["rule 0"]
    assert ruleset.match(odd) == ruleset.match_all_rules(odd)
