"""Which filesystems to mark, and directory file handles turned back into paths.

fanotify in FID mode names a directory by ``(fsid, file handle)``. :class:`PathResolver` keeps
one descriptor per marked filesystem, opened on a mount of that filesystem's root, and resolves
handles with ``open_by_handle_at`` plus ``readlink`` of ``/proc/self/fd/N``. Directory paths are
cached; the sensor drops cache entries when a directory is deleted or renamed.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass

from vigil.agent.fanotify import api

log = logging.getLogger(__name__)

MOUNTINFO = "/proc/self/mountinfo"

# Filesystems without files worth watching or without stable file handles.
PSEUDO_FILESYSTEMS = frozenset(
    {
        "autofs",
        "binfmt_misc",
        "bpf",
        "cgroup",
        "cgroup2",
        "configfs",
        "debugfs",
        "devpts",
        "devtmpfs",
        "efivarfs",
        "fusectl",
        "hugetlbfs",
        "mqueue",
        "nsfs",
        "proc",
        "pstore",
        "rpc_pipefs",
        "securityfs",
        "selinuxfs",
        "sysfs",
        "tracefs",
    }
)


@dataclass(frozen=True)
class Mount:
    """One line of ``/proc/self/mountinfo``: device, root inside the filesystem, mount point."""

    device: int
    root: str
    mount_point: str
    fstype: str


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as three-digit octal escapes.
    out = field
    for code in ("040", "011", "012", "134"):
        out = out.replace("\\" + code, chr(int(code, 8)))
    return out


def read_mounts(mountinfo: str = MOUNTINFO) -> list[Mount]:
    """Parse ``mountinfo`` into :class:`Mount` entries, in file order."""
    mounts = []
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            fields = line.split()
            if "-" not in fields:
                continue
            dash = fields.index("-")
            major, minor = (int(part) for part in fields[2].split(":"))
            mounts.append(
                Mount(
                    device=os.makedev(major, minor),
                    root=_unescape(fields[3]),
                    mount_point=_unescape(fields[4]),
                    fstype=fields[dash + 1],
                )
            )
    return mounts


def existing_ancestor(path: str) -> str:
    """``path`` made absolute and real, or its nearest existing ancestor if it is missing."""
    current = os.path.realpath(path)
    while not os.path.exists(current):
        current = os.path.dirname(current)
    return current


def mount_of(path: str, mounts: list[Mount]) -> Mount:
    """The mount to reach the filesystem holding ``path`` through, preferring its root.

    Raises:
        LookupError: No mount in ``mounts`` has the device of ``path``.
    """
    device = os.stat(existing_ancestor(path)).st_dev
    candidates = [mount for mount in mounts if mount.device == device]
    if not candidates:
        raise LookupError(f"no mount in {MOUNTINFO} holds {path}")
    # A mount of the filesystem's root yields whole paths; the shortest mount point is the one
    # other paths are seen through.
    return min(candidates, key=lambda mount: (mount.root != "/", len(mount.mount_point)))


class PathResolver:
    """Resolve ``(fsid, directory handle)`` to a path, with a bounded cache of directories.

    Args:
        cache_size: Most directory paths remembered.
    """

    def __init__(self, cache_size: int = 16384) -> None:
        self.cache_size = cache_size
        self._mount_fds: dict[bytes, int] = {}
        self._cache: OrderedDict[tuple[bytes, bytes], str] = OrderedDict()
        self._by_path: dict[str, tuple[bytes, bytes]] = {}
        self.lookups = 0
        self.hits = 0

    def add_filesystem(self, mount_point: str) -> bytes:
        """Open ``mount_point`` as the way into its filesystem; returns that filesystem's fsid."""
        fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fsid = api.fsid_of(fd)
        previous = self._mount_fds.pop(fsid, None)
        if previous is not None:
            os.close(previous)
        self._mount_fds[fsid] = fd
        return fsid

    def close(self) -> None:
        """Close the filesystem descriptors and forget the cache."""
        for fd in self._mount_fds.values():
            os.close(fd)
        self._mount_fds.clear()
        self._cache.clear()
        self._by_path.clear()

    def directory(self, fsid: bytes, handle: bytes) -> str | None:
        """The current path of the directory ``handle`` names; ``None`` if it is gone."""
        key = (fsid, handle)
        self.lookups += 1
        cached = self._cache.get(key)
        if cached is not None:
            self.hits += 1
            self._cache.move_to_end(key)
            return cached
        mount_fd = self._mount_fds.get(fsid)
        if mount_fd is None:
            return None
        try:
            fd = api.open_by_handle(mount_fd, handle)
        except OSError:
            return None
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        finally:
            os.close(fd)
        if path.endswith(" (deleted)") or not path.startswith("/"):
            return None
        self._remember(key, path)
        return path

    def _remember(self, key: tuple[bytes, bytes], path: str) -> None:
        stale = self._by_path.pop(path, None)
        if stale is not None and stale != key:
            self._cache.pop(stale, None)
        self._cache[key] = path
        self._by_path[path] = key
        while len(self._cache) > self.cache_size:
            _, dropped = self._cache.popitem(last=False)
            self._by_path.pop(dropped, None)

    def forget(self, path: str) -> None:
        """Drop the cached directory at ``path`` (it was deleted)."""
        key = self._by_path.pop(path, None)
        if key is not None:
            self._cache.pop(key, None)

    def forget_tree(self, path: str) -> None:
        """Drop ``path`` and every cached directory below it (it was renamed)."""
        prefix = path.rstrip("/") + "/"
        for cached in [p for p in self._by_path if p == path or p.startswith(prefix)]:
            self.forget(cached)
