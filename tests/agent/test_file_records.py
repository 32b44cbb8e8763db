"""Parsing of fanotify event buffers, on hand-built buffers in the kernel's layout."""

from __future__ import annotations

import struct

import pytest

from vigil.agent.fanotify import api
from vigil.agent.fanotify.records import (
    INFO_DFID_NAME,
    INFO_NEW_DFID_NAME,
    INFO_OLD_DFID_NAME,
    DirEntry,
    RecordError,
    parse,
)

FSID = b"\x01\x02\x03\x04\x05\x06\x07\x08"
HANDLE = struct.pack("=Ii", 8, 1) + b"\xaa" * 8


def _record(info_type: int, name: bytes) -> bytes:
    body = FSID + HANDLE + name + b"\0"
    body += b"\0" * (-(len(body) + 4) % 4)
    return struct.pack("=BBH", info_type, 0, len(body) + 4) + body


def _event(mask: int, pid: int, *records: bytes, version: int = 3) -> bytes:
    info = b"".join(records)
    return struct.pack("=IBBHQii", 24 + len(info), version, 0, 24, mask, -1, pid) + info


def test_a_buffer_yields_each_event_with_its_entries() -> None:
    buffer = _event(api.FAN_CREATE, 41, _record(INFO_DFID_NAME, b"new.txt")) + _event(
        api.FAN_RENAME,
        42,
        _record(INFO_OLD_DFID_NAME, b"old"),
        _record(INFO_NEW_DFID_NAME, b"caf\xc3\xa9"),
    )

    created, renamed = list(parse(buffer))

    assert (created.mask, created.pid) == (api.FAN_CREATE, 41)
    assert created.entry == DirEntry(FSID, HANDLE, "new.txt")
    assert renamed.entry is None
    assert renamed.old == DirEntry(FSID, HANDLE, "old")
    assert renamed.new == DirEntry(FSID, HANDLE, "café")


def test_an_overflow_event_has_no_entries() -> None:
    (event,) = parse(_event(api.FAN_Q_OVERFLOW, -1))
    assert event.mask == api.FAN_Q_OVERFLOW and event.entry is None


@pytest.mark.parametrize(
    ("buffer", "message"),
    [
        (_event(api.FAN_CREATE, 1, version=2), "metadata version 2 is not 3"),
        (_event(api.FAN_CREATE, 1, _record(INFO_DFID_NAME, b"x"))[:-4], "overruns the read"),
    ],
    ids=["old-version", "truncated"],
)
def test_malformed_buffers_are_refused(buffer: bytes, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        list(parse(buffer))


def test_permission_classes_cannot_be_requested() -> None:
    with pytest.raises(ValueError, match="only notification groups"):
        api.init(0x04)
