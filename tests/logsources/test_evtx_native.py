"""The native EVTX flattener makes exactly the event the Python route makes, or hands over.

Every record of every shared ``.evtx`` file goes both ways and must come out key for key, in
the same order. Damaged text (cut short, bytes changed) must never crash it nor give an event
the Python route would not give: it returns None and the Python route decides.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import orjson
import pytest
from evtx import PyEvtxParser

from tests.logsources.data import DATA, needs_data
from vigil.logsources import evtxlog
from vigil.logsources._evtxflat import flatten  # not skipped when missing: the install builds it
from vigil.logsources.evtxlog import EvtxReader
from vigil.logsources.windows import (
    RESERVED_NAMES,
    from_evtx_json,
    profile_cache,
    profile_for,
)


def native(text: str) -> dict[str, object] | None:
    return flatten(text, "f.evtx", profile_cache(), profile_for, RESERVED_NAMES)


def python_route(text: str) -> dict[str, object] | None:
    try:
        return from_evtx_json(orjson.loads(text), "f.evtx")
    except (KeyError, TypeError, ValueError):
        return None


def record_texts(limit_files: int | None = None) -> list[str]:
    files = sorted(DATA.rglob("*.evtx"))[:limit_files]
    return [record["data"] for path in files for record in PyEvtxParser(str(path)).records_json()]


def assert_same_or_handed_over(text: str) -> bool:
    event = native(text)
    if event is None:
        return False
    expected = python_route(text)
    assert expected is not None, f"native accepted what the Python route refuses: {text!r}"
    assert list(event.items()) == list(expected.items())
    return True


@needs_data
def test_every_shared_record_gives_the_python_event_key_for_key() -> None:
    texts = record_texts()
    handed_over = 0
    for text in texts:
        event = native(text)
        if event is None:
            handed_over += 1
            continue
        expected = python_route(text)
        assert expected is not None
        assert list(event.items()) == list(expected.items())
    assert len(texts) > 6000
    # Only UserData records (19 of them) take the Python route.
    assert handed_over < len(texts) * 0.01


def test_shapes_the_python_route_owns_are_handed_over() -> None:
    base = (
        '{"Event":{"System":{"EventID":1,"Channel":"Microsoft-Windows-Sysmon/Operational",'
        '"TimeCreated":{"#attributes":{"SystemTime":"%s"}}},%s}}'
    )
    plain = base % ("2024-01-02T03:04:05.000000Z", '"EventData":{"Image":"C:\\\\a.exe"}')
    assert native(plain) == python_route(plain)
    limits = base % ("2024-01-02T03:04:05.000000Z", '"EventData":{"U":18446744073709551615,'
                     '"I":-9223372036854775808}')  # fmt: skip
    assert native(limits) == python_route(limits)
    assert (native(limits) or {})["U"] == 2**64 - 1
    for text in (
        base % ("2024-01-02T03:04:05.000000Z", '"UserData":{"X":{"A":"b"}}'),
        base % ("2024-01-02 03:04:05+02:00", '"EventData":{"Image":"a"}'),  # needs a parse
        base % ("2024-01-02T03:04:05.000000Z", '"EventData":{"Ratio":0.5}'),  # a float
        base % ("2024-01-02T03:04:05.000000Z", '"EventData":{"N":18446744073709551616}'),
        base % ("2024-01-02T03:04:05.000000Z", '"EventData":{"N":-9223372036854775809}'),
        base % ("2024-01-02T03:04:05.000000Z", '"EventData":{"Image":{"#text":{"x":1}}}'),
        base % ("2024-01-02T03:04:05.000000Z", '"EventData":{"Image":"\\ud800"}'),
    ):
        assert native(text) is None


def test_values_keep_their_json_types_and_null_becomes_empty() -> None:
    text = (
        '{"Event":{"System":{"EventID":{"#attributes":{"Qualifiers":0},"#text":7036},'
        '"Channel":null,"Computer":"pc","EventRecordID":123456789012345678},'
        '"EventData":{"Pid":-42,"Flag":true,"Empty":null,"Data":{"#text":["a",null,1]},'
        '"event":"hidden","a.b":"dotted","Quoted":"say \\"hi\\" \\u00e9\\ud83d\\ude00"}}}'
    )
    event = native(text)
    assert event is not None
    assert list(event.items()) == list((python_route(text) or {}).items())
    assert event["Pid"] == -42 and event["Flag"] is True and event["Empty"] == ""
    assert event["Data"] == ["a", None, 1]
    assert event["winlog.event_data.event"] == "hidden"
    assert event["winlog.event_data.a.b"] == "dotted"
    assert event["Quoted"] == 'say "hi" \u00e9\U0001f600'
    assert event["winlog.record_id"] == 123456789012345678
    assert event["EventID"] == 7036 and "Channel" not in event


def test_lists_in_events_are_not_shared_between_events() -> None:
    text = (
        '{"Event":{"System":{"EventID":1,"Channel":"Microsoft-Windows-Sysmon/Operational"},'
        '"EventData":{"Image":"a"}}}'
    )
    first, second = native(text), native(text)
    assert first is not None and second is not None
    first["event.category"].append("changed")  # type: ignore[attr-defined]
    assert second["event.category"] == ["process"]


@needs_data
def test_damaged_text_never_crashes_nor_invents_an_event() -> None:
    rng = random.Random(20261204)
    texts = record_texts(limit_files=25)
    for text in texts[:10]:
        for end in range(len(text)):
            assert_same_or_handed_over(text[:end])
    alphabet = '{}[]",:\\u0123456789abcdefnulltrue -.eE#\x00\x1f\u00e9'
    accepted = 0
    for _ in range(20000):
        chars = list(rng.choice(texts))
        for _ in range(rng.randrange(1, 4)):
            where = rng.randrange(len(chars))
            change = rng.randrange(3)
            if change == 0:
                chars[where] = rng.choice(alphabet)
            elif change == 1:
                del chars[where]
            else:
                chars.insert(where, rng.choice(alphabet))
        accepted += assert_same_or_handed_over("".join(chars))
    assert accepted > 1000  # most changes land in values the event keeps or skips


@needs_data
def test_reader_gives_the_same_events_without_the_native_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = DATA / "evtx-attack-samples"
    files = sorted(path.rglob("*.evtx"))[:20]
    with_native = [event for file in files for event in EvtxReader().read(file)]
    monkeypatch.setattr(evtxlog, "flatten", None)
    without = [event for file in files for event in EvtxReader().read(Path(file))]
    assert with_native == without
    assert len(with_native) > 100


@pytest.mark.parametrize(
    ("written", "pid"),
    [
        ("0x1fc", 508),
        ("0X1FC", 508),
        ("0x1_f", 31),  # as int(text, 16) reads it
        ("0x" + "f" * 40, 16**40 - 1),
        ("0x", "0x"),
        ("0xzz", "0xzz"),
        (" 0x1f", " 0x1f"),
        ("508", 508),
        ("0508", 508),
        ("508 ", "508 "),
        ("５０８", "５０８"),  # digits, but not ASCII ones
    ],
)
def test_security_pids_become_numbers_the_same_way(written: str, pid: object) -> None:
    record = {
        "Event": {
            "System": {"EventID": 4688, "Channel": "Security", "Computer": "pc"},
            "EventData": {"NewProcessId": written, "ProcessId": "0x4", "NewProcessName": "x"},
        }
    }
    text = json.dumps(record)
    assert assert_same_or_handed_over(text)
    event = native(text)
    assert event is not None
    assert (event["process.pid"], event["process.parent.pid"]) == (pid, 4)
    assert event["NewProcessId"] == written


@pytest.mark.parametrize(
    "order",
    [("é", "Ã©"), ("Ã©", "é")],
    ids=["utf8-first", "latin1-first"],
)
def test_one_byte_texts_read_in_place_are_the_same_texts(order: tuple[str, str]) -> None:
    # "Ã©" in Latin-1 has the bytes of "é" in UTF-8: a record of one-byte text must not take
    # the other's name from the cache of recurring names, nor its values.
    wide = "\U0001f600"  # makes a record's text wide, so it is read as UTF-8
    for name in order:
        for tail in ("", wide):
            record = {
                "Event": {
                    "System": {"EventID": 1, "Channel": "Microsoft-Windows-Sysmon/Operational"},
                    "EventData": {name: name + "\\" + name + tail, "Product": "Microsoft®"},
                }
            }
            text = json.dumps(record, ensure_ascii=False)
            assert assert_same_or_handed_over(text)
            event = native(text)
            assert event is not None
            assert event[name] == name + "\\" + name + tail and event["Product"] == "Microsoft®"


class RecordMaker:
    """Random records in the evtx JSON shape, odd values included, for parity checks."""

    TEXTS = ("C:\\Windows\\cmd.exe", "", "0x1a", "true", "deleteValue", 'a"\\\n\x01é\U0001f600')
    TEXTS += ("Microsoft® Windows®", "Ã©\\é", "\x7f\x80\xff")
    TEXTS += ("SHA1=AB,MD5=CD,SHA256=EF,IMPHASH=01", "MD5=,=x,SHA1,SHA256=a=b", "C:\\dir\\")
    TEXTS += ("/usr/bin/", "a/b\\c.exe", "\\")
    HEX_TEXTS = ("0x1fc", "0X1FC", "0x", "0xzz", "0x1_f", " 0x1f", "0x" + "f" * 40, "0x１", "547")
    HEX_TEXTS += ("0547", "9" * 40, "٥", "12 ", "0")
    NUMBERS = (0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1, 1.5, 4688)
    NAMES = (
        "Image", "CommandLine", "ProcessId", "event", "a.b", "TargetUserName", "IpAddress",
        "EventType", "Initiated", "Data", "#attributes", "NewProcessId", "x" * 70, "é名",
        "ProcessID", "DestPort", "DestAddress", "café", "Ã©", "é", "Hashes", "Hash",
        "TargetFilename", "ParentImage",
    )  # fmt: skip
    CHANNELS = ("Security", "Microsoft-Windows-Sysmon/Operational", "System", "", None, 5)
    EVENT_IDS = (1, 3, 7, 12, 15, 4688, 4624, 5156, 7036, "4688", None, True, 2**64)

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def value(self, depth: int = 0) -> object:
        kind = self.rng.randrange(7)
        if kind == 0:
            return self.rng.choice((None, True, False))
        if kind == 1:
            return self.rng.choice(self.NUMBERS)
        if kind == 2 and depth < 2:
            return [self.value(depth + 1) for _ in range(self.rng.randrange(4))]
        if kind == 3 and depth < 2:
            element: dict[str, object] = {"#attributes": {"Name": "n"}}
            if self.rng.random() < 0.7:
                element["#text"] = self.value(depth + 1)
            return element
        return self.rng.choice(self.TEXTS if self.rng.random() < 0.7 else self.HEX_TEXTS)

    def record(self) -> str:
        rng = self.rng
        event_id = rng.choice(self.EVENT_IDS)
        system = {
            "Provider": {"#attributes": {"Name": rng.choice(("P", None, 5))}},
            "EventID": {"#text": event_id} if rng.random() < 0.2 else event_id,
            "Level": self.value(),
            "TimeCreated": {
                "#attributes": {
                    "SystemTime": rng.choice(("2019-07-29T21:32:55.583667Z", "2019-07-29 21:32"))
                }
            },
            "EventRecordID": self.value(),
            "Channel": rng.choice(self.CHANNELS),
            "Computer": rng.choice(("pc", None, "")),
        }
        fields = list(system.items())
        rng.shuffle(fields)
        event: dict[str, object] = {"System": dict(fields[: rng.randrange(3, len(fields) + 1)])}
        if rng.random() < 0.9:
            names = [rng.choice(self.NAMES) for _ in range(rng.randrange(10))]
            event["EventData"] = {name: self.value() for name in names}
        else:
            event["UserData"] = {"Cleared": {"SubjectUserName": "u"}}
        return json.dumps({"Event": event}, ensure_ascii=rng.random() < 0.5)


def test_generated_records_of_odd_shapes_agree_or_are_handed_over() -> None:
    maker = RecordMaker(seed=5)
    accepted = sum(assert_same_or_handed_over(maker.record()) for _ in range(20000))
    assert accepted > 2000
