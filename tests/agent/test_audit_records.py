"""Record parsing, EXECVE decoding and reassembly, on real audit.log lines from go-libaudit."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.agent.audit.reassembly import Reassembler
from vigil.agent.audit.records import (
    AUDIT_EXECVE,
    AUDIT_SYSCALL,
    RecordParseError,
    decode_bytes,
    execve_args,
    parse_log_line,
    parse_record,
    proctitle_args,
    value_text,
)
from vigil.agent.audit.rules import AuditRule, process_rules

LIBAUDIT = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "linux-logs" / "go-libaudit"
)


def _lines(name: str) -> list[str]:
    path = LIBAUDIT / name
    if not path.exists():
        pytest.skip(f"shared test data missing: {path}")
    return path.read_text(errors="surrogateescape").splitlines()


def _line_with(name: str, needle: str) -> str:
    return next(line for line in _lines(name) if needle in line)


def test_execve_hex_argument_is_decoded() -> None:
    line = _line_with("auparse/testdata/audit-rhel7.log", 'a0="jq"')
    record = parse_log_line(line)
    assert record.type == AUDIT_EXECVE
    assert record.event_id == (1491946471, 575, 1075898)
    args = execve_args([record])
    assert args[:2] == ["jq", "."]
    assert args[2].startswith('{\n        "dev": "08:01",')
    assert args[2].endswith("}")


def test_execve_quoted_arguments() -> None:
    line = _line_with("auparse/testdata/audit-rhel7.log", 'a0="grep"')
    assert execve_args([parse_log_line(line)]) == [
        "grep",
        "--color=auto",
        "-e",
        "[:alpha:]",
        "/etc/passwd",
    ]


def test_syscall_record_fields_and_hex_exe() -> None:
    line = _lines("testdata/normal.log")[0]
    record = parse_log_line(line)
    assert record.type == AUDIT_SYSCALL
    assert record.fields["syscall"] == "42"
    assert value_text(record.fields["exe"]) == "/usr/bin/python2.7;58d1ccfb (deleted)"
    assert value_text(record.fields["key"]) is None  # key=(null)


def test_reassembly_groups_interleaved_records_by_id() -> None:
    reassembler = Reassembler()
    for line in _lines("testdata/out_of_order.log"):
        reassembler.add(parse_log_line(line))
    events = {event.event_id: event for event in reassembler.flush()}
    grep = events[(1492037291, 36, 59)]
    cat = events[(1492037291, 38, 60)]
    assert [r.type_name for r in cat.records] == ["SYSCALL", "EXECVE", "CWD", "PATH", "PATH"]
    assert execve_args(grep.all(AUDIT_EXECVE)) == ["grep", "--color=auto", "mapping"]
    assert len(events[(1492037298, 883, 61)].records) == 4


def test_eoe_closes_an_event() -> None:
    reassembler = Reassembler()
    _event, closed = reassembler.add(parse_record(1307, 'audit(10.002:7): cwd="/"'))
    assert closed == []
    _event, closed = reassembler.add(parse_record(1320, "audit(10.002:7): "))
    assert [e.event_id for e in closed] == [(10, 2, 7)] and closed[0].complete
    assert len(reassembler) == 0


def test_idle_event_without_eoe_expires() -> None:
    now = [100.0]
    reassembler = Reassembler(max_age=2.0, clock=lambda: now[0])
    reassembler.add(parse_record(1305, 'audit(10.002:8): op=add_rule key="vigil" res=1'))
    assert reassembler.expire() == []
    now[0] += 3
    assert [e.event_id for e in reassembler.expire()] == [(10, 2, 8)]


def test_split_long_argument_across_records() -> None:
    first = parse_record(
        1309, 'audit(1.000:5): argc=3 a0="ls" a1_len=10 a1[0]=68656C6C6F a1[1]="world"'
    )
    second = parse_record(1309, "audit(1.000:5): a2=6120622027")
    assert execve_args([first, second]) == ["ls", "helloworld", "a b '"]


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        pytest.param(b"plain", "plain", id="ascii"),
        pytest.param("café".encode(), "café", id="utf8-kept"),
        pytest.param(b"\xffz", "\\xffz", id="invalid-byte-backslash-escaped"),
        pytest.param(b"a\nb", "a\nb", id="newline-kept"),
    ],
)
def test_decode_bytes(raw: bytes, text: str) -> None:
    assert decode_bytes(raw) == text


def test_proctitle_is_split_on_nul() -> None:
    assert proctitle_args("2F62696E2F7368002D6300747275650000") == ["/bin/sh", "-c", "true"]


@pytest.mark.parametrize(
    ("record_type", "body", "match"),
    [
        pytest.param(1309, "argc=1 a0=zz", "no audit\\(\\) id", id="no-header"),
        pytest.param(1309, 'audit(1.000:1): argc=2 a0="x"', "no a1", id="missing-arg"),
        pytest.param(1309, "audit(1.000:1): argc=1 a0=XYZ", "neither quoted nor hex", id="bad"),
    ],
)
def test_bad_records_raise_clear_errors(record_type: int, body: str, match: str) -> None:
    with pytest.raises(RecordParseError, match=match):
        execve_args([parse_record(record_type, body)])


def test_rules_pack_unpack_round_trip() -> None:
    for rule in process_rules("x86_64"):
        assert AuditRule.unpack(rule.pack()) == rule
        assert rule.key == "vigil"
    b64, b32 = process_rules("x86_64")
    assert b64.syscalls == {59, 322, 231} and b32.syscalls == {11, 358, 252}


def test_fields_are_parsed_on_first_use_and_records_stay_immutable() -> None:
    text = 'audit(1700000000.123:42): arch=c000003e syscall=59 exe="/bin/ls" key="vigil"'
    record = parse_record(1300, text)
    assert (record.type, record.event_id, record.raw) == (1300, (1700000000, 123, 42), text)
    assert record.fields == {
        "arch": "c000003e",
        "syscall": "59",
        "exe": '"/bin/ls"',
        "key": '"vigil"',
    }
    assert record.fields is record.fields  # parsed once
    assert record == parse_record(1300, text)
    assert record != parse_record(1302, text)
    with pytest.raises(AttributeError):
        record.type = 1302  # type: ignore[misc]
    assert "exe" in repr(record)
