"""ctypes bindings for fanotify_init, fanotify_mark, open_by_handle_at and fstatfs.

Only notification groups are exposed: this module has no way to create a permission group
(``FAN_CLASS_CONTENT``/``FAN_CLASS_PRE_CONTENT``), whose unanswered events would stall the
processes touching marked files; the exec guard's permission group lives apart, in
``permission``. Constants are the kernel ABI of ``linux/fanotify.h``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import struct

log = logging.getLogger(__name__)

FAN_ATTRIB = 0x00000004
FAN_CLOSE_WRITE = 0x00000008
FAN_MOVED_FROM = 0x00000040
FAN_MOVED_TO = 0x00000080
FAN_CREATE = 0x00000100
FAN_DELETE = 0x00000200
FAN_OPEN_EXEC = 0x00001000
FAN_Q_OVERFLOW = 0x00004000
FAN_RENAME = 0x10000000
FAN_ONDIR = 0x40000000

FAN_CLOEXEC = 0x00000001
FAN_NONBLOCK = 0x00000002
FAN_CLASS_NOTIF = 0x00000000
FAN_UNLIMITED_QUEUE = 0x00000010
FAN_REPORT_DIR_FID = 0x00000400
FAN_REPORT_NAME = 0x00000800
FAN_REPORT_DFID_NAME = FAN_REPORT_DIR_FID | FAN_REPORT_NAME

FAN_MARK_ADD = 0x00000001
FAN_MARK_REMOVE = 0x00000002
FAN_MARK_FILESYSTEM = 0x00000100

FAN_NOFD = -1
METADATA_VERSION = 3

# The only group class this module creates; permission classes are deliberately absent.
_NOTIFICATION_ONLY = FAN_CLASS_NOTIF


class FanotifyError(OSError):
    """A fanotify or file-handle system call failed; ``errno`` says why."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


_LIBC = _libc()
_init = _LIBC.fanotify_init
_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_init.restype = ctypes.c_int
_mark = _LIBC.fanotify_mark
_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
_mark.restype = ctypes.c_int
_open_by_handle = _LIBC.open_by_handle_at
_open_by_handle.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
_open_by_handle.restype = ctypes.c_int
_fstatfs = _LIBC.fstatfs
_fstatfs.restype = ctypes.c_int

AT_FDCWD = -100


class _StatFs(ctypes.Structure):
    # glibc's struct statfs (non-LFS names, word-sized counters).
    _fields_ = [
        ("f_type", ctypes.c_long),
        ("f_bsize", ctypes.c_long),
        ("f_blocks", ctypes.c_ulong),
        ("f_bfree", ctypes.c_ulong),
        ("f_bavail", ctypes.c_ulong),
        ("f_files", ctypes.c_ulong),
        ("f_ffree", ctypes.c_ulong),
        ("f_fsid", ctypes.c_int * 2),
        ("f_namelen", ctypes.c_long),
        ("f_frsize", ctypes.c_long),
        ("f_flags", ctypes.c_long),
        ("f_spare", ctypes.c_long * 4),
    ]


_fstatfs.argtypes = [ctypes.c_int, ctypes.POINTER(_StatFs)]


def _fail(call: str, target: str) -> FanotifyError:
    code = ctypes.get_errno()
    return FanotifyError(code, f"{call} failed on {target}: {os.strerror(code)}")


def init(report_flags: int, event_flags: int = os.O_RDONLY | os.O_LARGEFILE) -> int:
    """Create a notification-class fanotify group and return its descriptor.

    Args:
        report_flags: ``FAN_REPORT_*``, ``FAN_UNLIMITED_QUEUE``, ``FAN_NONBLOCK`` and similar;
            any class bit is refused.
        event_flags: Open flags of event file descriptors (unused in FID reporting modes).

    Raises:
        FanotifyError: The kernel refused (``EINVAL``: flag unsupported, ``EPERM``: no
            ``CAP_SYS_ADMIN``, ``ENOSYS``: fanotify not built in).
        ValueError: ``report_flags`` asked for a permission class.
    """
    if report_flags & 0x0C:
        raise ValueError("only notification groups (FAN_CLASS_NOTIF) are allowed")
    fd: int = _init(_NOTIFICATION_ONLY | FAN_CLOEXEC | report_flags, event_flags | os.O_CLOEXEC)
    if fd < 0:
        raise _fail("fanotify_init", f"flags {report_flags:#x}")
    return fd


def mark_filesystem(fd: int, mask: int, path: str, remove: bool = False) -> None:
    """Add (or remove) a ``FAN_MARK_FILESYSTEM`` mark for ``mask`` on the filesystem of ``path``.

    Raises:
        FanotifyError: The kernel refused the mark (``EINVAL``: an event bit is unsupported,
            ``EXDEV``/``EOPNOTSUPP``/``ENODEV``: the filesystem cannot report file handles).
    """
    flags = (FAN_MARK_REMOVE if remove else FAN_MARK_ADD) | FAN_MARK_FILESYSTEM
    if _mark(fd, flags, mask, AT_FDCWD, os.fsencode(path)) < 0:
        raise _fail("fanotify_mark", path)


def open_by_handle(mount_fd: int, handle: bytes, flags: int = os.O_PATH) -> int:
    """Open the object a raw ``struct file_handle`` names, on the filesystem of ``mount_fd``.

    Raises:
        FanotifyError: ``ESTALE`` when the object no longer exists, others as the kernel says.
    """
    fd: int = _open_by_handle(mount_fd, handle, flags | os.O_CLOEXEC)
    if fd < 0:
        raise _fail("open_by_handle_at", f"mount fd {mount_fd}")
    return fd


def fsid_of(fd: int) -> bytes:
    """The filesystem id of the filesystem holding ``fd``, as fanotify reports it (8 bytes)."""
    info = _StatFs()
    if _fstatfs(fd, ctypes.byref(info)) < 0:
        raise _fail("fstatfs", f"fd {fd}")
    return struct.pack("=ii", info.f_fsid[0], info.f_fsid[1])


def is_unsupported(exc: OSError) -> bool:
    """Whether ``exc`` means the kernel or filesystem lacks a feature (not a transient fault)."""
    return exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENODEV, errno.EXDEV, errno.ENOSYS)
