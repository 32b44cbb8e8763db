"""Process lineage: which process instance holds each pid, keyed by stable entity ids.

A process instance is ``(pid, start ticks)``, where start ticks is field 22 of
``/proc/<pid>/stat`` (clock ticks from boot to the fork). ``vigil.schema.ecs.entity_id`` turns it
into ``process.entity_id``; the kill responder recomputes the same id from ``/proc`` before it
acts, so every sensor must derive it with :func:`read_start_ticks` and nothing else.

The table maps each pid to the latest instance seen there. It is filled by :meth:`scan` at
sensor start and updated by every exec, so parents that existed before the agent started are
linked too. An exec keeps the pid and the start ticks of its fork, so it keeps the entity id of
the forked process while its executable and command line change.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from vigil.schema.ecs import entity_id, iso

if TYPE_CHECKING:
    from vigil.agent.sensors.base import SensorContext

log = logging.getLogger(__name__)

PROC = "/proc"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` the agent uses."""

    pid: int
    comm: str
    ppid: int
    start_ticks: int


def read_stat(pid: int, proc: str = PROC) -> ProcStat | None:
    """Read ``/proc/<pid>/stat``; ``None`` when the process is gone or unreadable."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: it ends at the last ')'.
    close = data.rfind(b")")
    rest = data[close + 2 :].split()
    if close < 0 or len(rest) < 20:
        return None
    comm = data[data.find(b"(") + 1 : close].decode("utf-8", errors="backslashreplace")
    return ProcStat(pid, comm, int(rest[1]), int(rest[19]))


def read_start_ticks(pid: int, proc: str = PROC) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``: clock ticks from boot to the process's start.

    This is the value ``process.entity_id`` is built from; ``None`` if the process is gone.
    """
    stat = read_stat(pid, proc)
    return None if stat is None else stat.start_ticks


def boot_time() -> float:
    """The boot moment in seconds since the epoch, on the clock ``/proc`` start ticks count."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def ticks_to_epoch(start_ticks: int, booted: float) -> float:
    """Convert start ticks to seconds since the epoch."""
    return booted + start_ticks / CLOCK_TICKS


def epoch_to_ticks(moment: float, booted: float) -> int:
    """Convert seconds since the epoch to ticks since boot (the fallback for a gone process)."""
    return max(0, int((moment - booted) * CLOCK_TICKS))


@dataclass(frozen=True)
class ProcessInstance:
    """One process instance and what the agent knows about its current program."""

    pid: int
    start_ticks: int
    entity_id: str
    executable: str | None = None
    name: str | None = None
    command_line: str | None = None
    args: tuple[str, ...] = ()
    ppid: int | None = None
    parent_entity_id: str | None = None
    exited: bool = False


def _read_link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _read_cmdline(pid: int, proc: str) -> list[str]:
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return []
    if not raw:
        return []
    return [
        part.decode("utf-8", errors="backslashreplace") for part in raw.rstrip(b"\0").split(b"\0")
    ]


class ProcessTable:
    """Thread-safe map of pid to the latest known :class:`ProcessInstance`.

    Args:
        agent_id: The agent id entity ids are derived with.
        proc: Where procfs is mounted.
    """

    def __init__(self, agent_id: str, proc: str = PROC) -> None:
        self.agent_id = agent_id
        self.proc = proc
        self._by_pid: dict[int, ProcessInstance] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_pid)

    def entity_id(self, pid: int, start_ticks: int) -> str:
        """The entity id of the instance ``(pid, start_ticks)`` on this agent."""
        return entity_id(self.agent_id, pid, start_ticks)

    def get(self, pid: int) -> ProcessInstance | None:
        """The latest instance known at ``pid``, without checking ``/proc``."""
        with self._lock:
            return self._by_pid.get(pid)

    def put(self, instance: ProcessInstance) -> None:
        """Record ``instance`` as the one now holding its pid."""
        with self._lock:
            self._by_pid[instance.pid] = instance

    def from_proc(self, pid: int) -> ProcessInstance | None:
        """Describe the process now at ``pid`` from ``/proc`` (not stored); ``None`` if gone."""
        stat = read_stat(pid, self.proc)
        if stat is None:
            return None
        args = _read_cmdline(pid, self.proc)
        executable = _read_link(f"{self.proc}/{pid}/exe")
        name = os.path.basename(executable) if executable else stat.comm
        return ProcessInstance(
            pid=pid,
            start_ticks=stat.start_ticks,
            entity_id=self.entity_id(pid, stat.start_ticks),
            executable=executable,
            name=name,
            command_line=" ".join(args) if args else None,
            args=tuple(args),
            ppid=stat.ppid,
        )

    def scan(self) -> int:
        """Fill the table from every process in ``/proc``; returns how many were found."""
        found: dict[int, ProcessInstance] = {}
        for entry in os.listdir(self.proc):
            if entry.isdigit():
                instance = self.from_proc(int(entry))
                if instance is not None:
                    found[instance.pid] = instance
        for pid, instance in found.items():
            parent = found.get(instance.ppid or 0)
            if parent is not None:
                found[pid] = replace(instance, parent_entity_id=parent.entity_id)
        with self._lock:
            self._by_pid.update(found)
        log.debug("process table filled with %d processes from %s", len(found), self.proc)
        return len(found)

    def resolve(self, pid: int, live_ticks: int | None) -> ProcessInstance | None:
        """The instance at ``pid`` as of an event, given the start ticks read for that event.

        ``live_ticks`` is what ``/proc/<pid>/stat`` said when the event arrived (``None`` if the
        process was already gone). A table entry whose start ticks differ belongs to an earlier
        process that held the pid and is never returned; the process now at the pid (a fork
        that did not exec, say) is read from ``/proc`` and stored instead. Without ``/proc``,
        the table entry is trusted: events arrive in order, so it is the latest holder.
        """
        known = self.get(pid)
        if known is not None and (live_ticks is None or known.start_ticks == live_ticks):
            return known
        if live_ticks is None:
            return None
        current = self.from_proc(pid)
        if current is None or current.start_ticks != live_ticks:
            # Gone or replaced since the event: all we know is its identity.
            current = ProcessInstance(pid, live_ticks, self.entity_id(pid, live_ticks))
        self.put(current)
        return current

    def mark_exited(self, pid: int, start_ticks: int) -> None:
        """Note that the instance ``(pid, start_ticks)`` ended; :meth:`prune` drops it later."""
        with self._lock:
            known = self._by_pid.get(pid)
            if known is not None and known.start_ticks == start_ticks:
                self._by_pid[pid] = replace(known, exited=True)

    def prune(self) -> int:
        """Drop exited entries and entries whose pid now holds another or no process.

        Returns:
            How many entries were dropped.
        """
        with self._lock:
            snapshot = list(self._by_pid.items())
        stale = [
            pid
            for pid, instance in snapshot
            if instance.exited or read_start_ticks(pid, self.proc) != instance.start_ticks
        ]
        with self._lock:
            for pid in stale:
                instance = self._by_pid.get(pid)
                if instance is not None and (
                    instance.exited or read_start_ticks(pid, self.proc) != instance.start_ticks
                ):
                    del self._by_pid[pid]
        return len(stale)


HASH_SIZE_LIMIT = 100 * 1024 * 1024


class ExecutableHasher:
    """SHA-256 of executables, cached by ``(device, inode, mtime, size)``.

    A file rewritten in place gets a new mtime and is hashed again; files larger than
    ``size_limit`` are not hashed (their hash is ``None``).

    Args:
        size_limit: Largest file hashed, in bytes.
        cache_size: Most files remembered.
    """

    def __init__(self, size_limit: int = HASH_SIZE_LIMIT, cache_size: int = 4096) -> None:
        self.size_limit = size_limit
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[int, int, int, int], str | None] = OrderedDict()
        self._lock = threading.Lock()
        self.hashed = 0
        self.skipped = 0

    def sha256(self, path: str | None, pid: int | None = None) -> str | None:
        """Hash the executable at ``path``.

        When ``pid`` still runs ``path``, the file is read through ``/proc/<pid>/exe``, which
        reaches it across mount namespaces and after it was replaced or deleted.

        Returns:
            The lowercase hex digest, or ``None`` if the file is unreadable or too large.
        """
        candidates = []
        if pid is not None and path and _read_link(f"{PROC}/{pid}/exe") == path:
            candidates.append(f"{PROC}/{pid}/exe")
        if path:
            candidates.append(path.removesuffix(" (deleted)"))
        for candidate in candidates:
            try:
                fd = os.open(candidate, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                return self._hash_fd(fd)
            except OSError:
                log.debug("cannot hash %s", candidate, exc_info=True)
            finally:
                os.close(fd)
        return None

    def _hash_fd(self, fd: int) -> str | None:
        info = os.fstat(fd)
        key = (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        digest: str | None = None
        if info.st_size > self.size_limit:
            self.skipped += 1
        else:
            hasher = hashlib.sha256()
            with os.fdopen(os.dup(fd), "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    hasher.update(block)
            digest = hasher.hexdigest()
            self.hashed += 1
        with self._lock:
            self._cache[key] = digest
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return digest


def _os_type() -> str:
    """ECS ``host.os.type`` of this host."""
    if sys.platform.startswith("linux"):
        return "linux"
    return {"darwin": "macos", "win32": "windows"}.get(sys.platform, sys.platform)


def event_base(
    context: SensorContext, moment: float, event_type: str, action: str, unique: str
) -> dict[str, Any]:
    """The ECS fields every process event shares: time, event, host and agent.

    Args:
        context: The emitting sensor's context (agent and host identity).
        moment: Event time, seconds since the epoch.
        event_type: ``start`` or ``end``.
        action: ``exec`` or ``exit``.
        unique: Text naming this event uniquely on this agent; ``event.id`` is its hash, so a
            re-sent event keeps its id and the server can drop the duplicate.
    """
    digest = hashlib.sha256(f"{context.agent_id}:{unique}".encode()).hexdigest()[:32]
    return {
        "@timestamp": iso(datetime.fromtimestamp(moment, UTC)),
        "event": {
            "kind": "event",
            "category": ["process"],
            "type": [event_type],
            "action": action,
            "id": digest,
        },
        "host": {"id": context.host_id, "name": context.host_name, "os": {"type": _os_type()}},
        "agent": {"id": context.agent_id},
    }


def parent_fields(ppid: int | None, parent: ProcessInstance | None) -> dict[str, Any]:
    """``process.parent`` from the parent's table entry (pid only when it is unknown)."""
    fields: dict[str, Any] = {} if ppid is None else {"pid": ppid}
    if parent is not None:
        fields["entity_id"] = parent.entity_id
        for key in ("executable", "name", "command_line"):
            value = getattr(parent, key)
            if value is not None:
                fields[key] = value
    return fields


_user_names: dict[int, str | None] = {}


def user_fields(uid: int | str | None) -> dict[str, str]:
    """ECS ``{"id", "name"}`` of a uid; empty for an unset uid (``4294967295``, ``-1``)."""
    if uid is None or not str(uid).isdigit() or int(uid) == 0xFFFFFFFF:
        return {}
    number = int(uid)
    if number not in _user_names:
        try:
            _user_names[number] = pwd.getpwuid(number).pw_name
        except KeyError:
            _user_names[number] = None
    name = _user_names[number]
    return {"id": str(number), "name": name} if name else {"id": str(number)}
