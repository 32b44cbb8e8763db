"""fanotify permission groups for exec blocking: create, mark, read and answer.

A permission group (``FAN_CLASS_CONTENT``) makes every process that triggers a marked event wait
until the group answers ``FAN_ALLOW`` or ``FAN_DENY``. That is how exec blocking refuses a
program, and also how a careless listener freezes a host: this module is used only by
:mod:`vigil.agent.respond.exec_guard`, which answers every event it reads, allows on any error,
and closes the group when its reader stops. Closing the descriptor makes the kernel allow every
event still waiting and drop every mark, so a closed group never leaves a process waiting.

Only ``FAN_OPEN_EXEC_PERM`` is ever marked. The group reports file descriptors (no FID mode), so
each event is one ``struct fanotify_event_metadata`` with an open descriptor of the file; the
answer is a ``struct fanotify_response`` written to the group. A denied exec fails with
``EPERM``. See fanotify(7), fanotify_mark(2) and ``linux/fanotify.h``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from dataclasses import dataclass

from vigil.agent.fanotify.api import (
    AT_FDCWD,
    FAN_CLOEXEC,
    FAN_MARK_ADD,
    FAN_MARK_REMOVE,
    FAN_NOFD,
    FAN_NONBLOCK,
    METADATA_VERSION,
    FanotifyError,
)
from vigil.agent.fanotify.records import RecordError

FAN_CLASS_CONTENT = 0x00000004
FAN_OPEN_EXEC_PERM = 0x00040000
FAN_EVENT_ON_CHILD = 0x08000000
FAN_MARK_ONLYDIR = 0x00000008
FAN_MARK_MOUNT = 0x00000010
FAN_ALLOW = 0x01
FAN_DENY = 0x02

_METADATA = struct.Struct("=IBBHQii")
_RESPONSE = struct.Struct("=iI")

_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_init = _LIBC.fanotify_init
_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_init.restype = ctypes.c_int
_mark = _LIBC.fanotify_mark
_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
_mark.restype = ctypes.c_int


@dataclass(frozen=True, slots=True)
class PermissionEvent:
    """One permission event: its mask, the file it opens (a descriptor) and the process.

    ``fd`` belongs to the reader, who must answer it with :func:`respond` and then close it.
    """

    mask: int
    fd: int
    pid: int


def _fail(call: str, target: str) -> FanotifyError:
    code = ctypes.get_errno()
    return FanotifyError(code, f"{call} failed on {target}: {os.strerror(code)}")


def init_exec_group() -> int:
    """Create a non-blocking permission group whose event descriptors are read-only.

    Raises:
        FanotifyError: The kernel refused (``EINVAL``: built without
            ``CONFIG_FANOTIFY_ACCESS_PERMISSIONS``, ``EPERM``: no ``CAP_SYS_ADMIN``).
    """
    flags = FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK
    event_flags = os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC | os.O_NOATIME
    fd: int = _init(flags, event_flags)
    if fd < 0:
        raise _fail("fanotify_init", "a permission group (FAN_CLASS_CONTENT)")
    return fd


def mark_directory(fd: int, path: str, remove: bool = False) -> None:
    """Add (or remove) an exec-permission mark on the directory ``path`` and its direct children.

    The mark sits on the directory's inode: files in subdirectories are not covered, and a
    directory that is deleted takes its mark with it.

    Raises:
        FanotifyError: ``ENOTDIR`` if ``path`` is not a directory, others as the kernel says.
    """
    flags = (FAN_MARK_REMOVE if remove else FAN_MARK_ADD) | FAN_MARK_ONLYDIR
    mask = FAN_OPEN_EXEC_PERM | FAN_EVENT_ON_CHILD
    if _mark(fd, flags, mask, AT_FDCWD, os.fsencode(path)) < 0:
        raise _fail("fanotify_mark", path)


def mark_mount(fd: int, path: str, remove: bool = False) -> None:
    """Add (or remove) an exec-permission mark on the whole mount holding ``path``.

    Every exec of a file on that mount (not on mounts below it) then waits for the group.

    Raises:
        FanotifyError: The kernel refused the mark.
    """
    flags = (FAN_MARK_REMOVE if remove else FAN_MARK_ADD) | FAN_MARK_MOUNT
    if _mark(fd, flags, FAN_OPEN_EXEC_PERM, AT_FDCWD, os.fsencode(path)) < 0:
        raise _fail("fanotify_mark", path)


def respond(fd: int, event_fd: int, allow: bool) -> None:
    """Answer one permission event: ``FAN_ALLOW`` or ``FAN_DENY``.

    Raises:
        OSError: The write failed (``ENOENT``: the event was already answered or its group
            closed).
    """
    os.write(fd, _RESPONSE.pack(event_fd, FAN_ALLOW if allow else FAN_DENY))


def parse(buffer: bytes) -> tuple[list[PermissionEvent], RecordError | None]:
    """Split one ``read`` of a permission group into events.

    Every event found before a malformed one is returned with the error, so the caller can
    still answer them; nothing after a malformed event can be trusted (the caller must then
    close the group, which allows whatever it could not answer).
    """
    events: list[PermissionEvent] = []
    offset = 0
    while offset + _METADATA.size <= len(buffer):
        event_len, version, _, metadata_len, mask, fd, pid = _METADATA.unpack_from(buffer, offset)
        if version != METADATA_VERSION:
            return events, RecordError(
                f"fanotify metadata version {version} is not {METADATA_VERSION}"
            )
        if event_len < metadata_len or event_len < _METADATA.size:
            return events, RecordError(f"fanotify event of {event_len} bytes is malformed")
        if fd != FAN_NOFD:
            events.append(PermissionEvent(mask, fd, pid))
        offset += event_len
    if offset != len(buffer):
        return events, RecordError(f"fanotify read of {len(buffer)} bytes ends mid-event")
    return events, None
