"""Parse what a fanotify group in ``FAN_REPORT_DFID_NAME`` mode returns from ``read``.

Each event is a ``struct fanotify_event_metadata`` followed by info records. In this mode a
record names a directory by file handle and an entry in it by name: ``DFID_NAME`` for ordinary
events, ``OLD_DFID_NAME`` and ``NEW_DFID_NAME`` for ``FAN_RENAME``. See fanotify(7) and
``linux/fanotify.h``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from vigil.agent.fanotify.api import FAN_NOFD, METADATA_VERSION

INFO_DFID_NAME = 2
INFO_DFID = 3
INFO_OLD_DFID_NAME = 10
INFO_NEW_DFID_NAME = 12

_METADATA = struct.Struct("=IBBHQii")
_INFO_HEADER = struct.Struct("=BBH")
_HANDLE_BYTES = struct.Struct("=I")
# Info header (4), fsid (8), then struct file_handle: handle_bytes (4), handle_type (4), bytes.
_FSID_AT = 4
_HANDLE_AT = 12
_HANDLE_HEADER = 8


class RecordError(ValueError):
    """A fanotify buffer is malformed or has an unknown metadata version."""


@dataclass(frozen=True, slots=True)
class DirEntry:
    """A directory, by filesystem id and raw ``struct file_handle``, and a name in it."""

    fsid: bytes
    handle: bytes
    name: str


@dataclass(frozen=True, slots=True)
class RawEvent:
    """One fanotify event: its mask, the reporting thread group and its directory entries.

    ``entry`` is the ``DFID_NAME`` record; ``old`` and ``new`` are set on ``FAN_RENAME``.
    """

    mask: int
    pid: int
    entry: DirEntry | None = None
    old: DirEntry | None = None
    new: DirEntry | None = None


def _entry(record: bytes) -> DirEntry:
    (size,) = _HANDLE_BYTES.unpack_from(record, _HANDLE_AT)
    name_at = _HANDLE_AT + _HANDLE_HEADER + size
    if name_at > len(record):
        raise RecordError(f"file handle of {size} bytes overruns its {len(record)}-byte record")
    raw_name = record[name_at:].split(b"\0", 1)[0]
    return DirEntry(
        fsid=record[_FSID_AT:_HANDLE_AT],
        handle=record[_HANDLE_AT:name_at],
        name=os.fsdecode(raw_name),
    )


def parse(buffer: bytes) -> Iterator[RawEvent]:
    """Yield the events in one ``read`` of a fanotify descriptor.

    Event file descriptors (absent in FID modes) are closed so none can leak.

    Raises:
        RecordError: The buffer is truncated or the metadata version is not 3.
    """
    offset = 0
    end = len(buffer)
    while offset + _METADATA.size <= end:
        event_len, version, _, metadata_len, mask, fd, pid = _METADATA.unpack_from(buffer, offset)
        if version != METADATA_VERSION:
            raise RecordError(
                f"fanotify metadata version {version} is not {METADATA_VERSION}: "
                "this agent does not understand the running kernel's format"
            )
        if event_len < metadata_len or offset + event_len > end:
            raise RecordError(f"fanotify event of {event_len} bytes overruns the read buffer")
        if fd != FAN_NOFD and fd >= 0:
            os.close(fd)
        entry = old = new = None
        at = offset + metadata_len
        stop = offset + event_len
        while at + _INFO_HEADER.size <= stop:
            info_type, _, info_len = _INFO_HEADER.unpack_from(buffer, at)
            if info_len < _INFO_HEADER.size or at + info_len > stop:
                raise RecordError(f"fanotify info record of {info_len} bytes overruns its event")
            if info_type in (INFO_DFID_NAME, INFO_DFID):
                entry = _entry(buffer[at : at + info_len])
            elif info_type == INFO_OLD_DFID_NAME:
                old = _entry(buffer[at : at + info_len])
            elif info_type == INFO_NEW_DFID_NAME:
                new = _entry(buffer[at : at + info_len])
            at += info_len
        yield RawEvent(mask, pid, entry, old, new)
        offset += event_len
