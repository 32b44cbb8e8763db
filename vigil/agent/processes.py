"""Process lineage: which process instance holds each pid, keyed by stable entity ids.

A process instance is ``(pid, start ticks)``, where start ticks is field 22 of
``/proc/<pid>/stat`` (clock ticks from boot to the fork). ``vigil.schema.ecs.entity_id`` turns it
into ``process.entity_id``; the kill responder recomputes the same id from ``/proc`` before it
acts, so every sensor must derive it with :func:`read_start_ticks` and nothing else.

The table maps each pid to the latest instance seen there. It is filled by :meth:`scan` at
sensor start and updated by every fork and exec, so parents that existed before the agent started
are linked too. An exec keeps the pid and the start ticks of its fork, so it keeps the entity id
of the forked process while its executable and command line change; a fork that never execs gets
an entry of its own (:meth:`ProcessTable.fork`) holding its parent's program and a link to it.

Each instance also carries what the agent knows of its ids (:class:`Creds`), its session and
controlling terminal, and its cgroup with the container id found in it (:func:`container_id`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import re
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from vigil.agent.audit.records import value_text
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
    session: int = 0
    tty_nr: int = 0


def read_stat(pid: int, proc: str = PROC) -> ProcStat | None:
    """Read ``/proc/<pid>/stat``; ``None`` when the process is gone or unreadable."""
    # os.open/os.read: half the cost of open() and its buffered file object, on a path read
    # several times for every short-lived process. The file is well under one read's size.
    try:
        fd = os.open(f"{proc}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # comm may contain spaces and parentheses: it ends at the last ')'.
    close = data.rfind(b")")
    rest = data[close + 2 :].split()
    if close < 0 or len(rest) < 20:
        return None
    comm = data[data.find(b"(") + 1 : close].decode("utf-8", errors="backslashreplace")
    return ProcStat(pid, comm, int(rest[1]), int(rest[19]), int(rest[3]), int(rest[4]))


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


def tty_device(tty_nr: int) -> tuple[int, int] | None:
    """``(major, minor)`` of a ``tty_nr`` from ``/proc/<pid>/stat``; ``None`` without a tty.

    The encoding is the kernel's ``new_encode_dev``: minor bits 0-7 and 20-31, major 8-19.
    """
    if tty_nr <= 0:
        return None
    return (tty_nr >> 8) & 0xFFF, (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)


@dataclass(frozen=True)
class Creds:
    """The ids of a process: real, effective, saved and filesystem uid and gid."""

    uid: int
    euid: int
    suid: int
    fsuid: int
    gid: int
    egid: int
    sgid: int
    fsgid: int

    @classmethod
    def from_audit(cls, fields: dict[str, str]) -> Creds | None:
        """The ids an audit SYSCALL record reports (as of the syscall's exit)."""
        try:
            return cls(*(int(fields[name]) for name in _CRED_NAMES))
        except (KeyError, ValueError):
            return None


_CRED_NAMES = ("uid", "euid", "suid", "fsuid", "gid", "egid", "sgid", "fsgid")


@dataclass(frozen=True)
class Caps:
    """Capability sets of a process, as bit masks."""

    effective: int
    permitted: int
    inheritable: int


def read_status(pid: int, proc: str = PROC) -> tuple[Creds | None, Caps | None]:
    """Ids and capabilities from ``/proc/<pid>/status``; ``None`` for what is unreadable."""
    try:
        with open(f"{proc}/{pid}/status", "rb") as handle:
            data = handle.read()
    except OSError:
        return None, None
    values: dict[bytes, list[bytes]] = {}
    for line in data.splitlines():
        name, _sep, rest = line.partition(b":")
        if name in (b"Uid", b"Gid", b"CapEff", b"CapPrm", b"CapInh"):
            values[name] = rest.split()
    creds = caps = None
    if len(values.get(b"Uid", ())) == 4 and len(values.get(b"Gid", ())) == 4:
        creds = Creds(*(int(v) for v in values[b"Uid"] + values[b"Gid"]))
    if all(len(values.get(name, ())) == 1 for name in (b"CapEff", b"CapPrm", b"CapInh")):
        caps = Caps(*(int(values[name][0], 16) for name in (b"CapEff", b"CapPrm", b"CapInh")))
    return creds, caps


# Container runtimes name a container's cgroup after its 64-hex id: docker-<id>.scope
# (systemd driver), /docker/<id> (cgroupfs driver), cri-containerd-<id>.scope, crio-<id>.scope,
# libpod-<id>.scope (podman), /kubepods/.../<id> (runtime not named).
_CONTAINER = re.compile(
    r"(?:^|[/-])(docker|cri-containerd|containerd|crio|libpod)?"
    r"[-/]?([0-9a-f]{64})(?:\.scope)?(?:/|$)"
)
_RUNTIMES = {
    "docker": "docker",
    "cri-containerd": "containerd",
    "containerd": "containerd",
    "crio": "cri-o",
    "libpod": "podman",
}


def read_cgroup(pid: int, proc: str = PROC) -> str | None:
    """The process's cgroup path: the v2 entry (``0::``), else the first v1 entry's path."""
    try:
        with open(f"{proc}/{pid}/cgroup", "rb") as handle:
            lines = handle.read().decode("utf-8", errors="backslashreplace").splitlines()
    except OSError:
        return None
    paths = [line.split(":", 2) for line in lines if line.count(":") >= 2]
    for hierarchy, _controllers, path in paths:
        if hierarchy == "0":
            return path
    return paths[0][2] if paths else None


def container_id(cgroup: str | None) -> tuple[str, str | None] | None:
    """``(container id, runtime)`` from a cgroup path, or ``None`` outside a container.

    The runtime is ``docker``, ``containerd``, ``cri-o`` or ``podman`` when the path names it.
    """
    if not cgroup:
        return None
    found = None
    for match in _CONTAINER.finditer(cgroup):
        found = match  # the innermost id wins (a container inside a pod's cgroup)
    if found is None:
        return None
    return found.group(2), _RUNTIMES.get(found.group(1) or "")


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
    creds: Creds | None = None
    caps: Caps | None = None
    session: int | None = None
    tty_nr: int = 0
    cgroup: str | None = None


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
        creds, caps = read_status(pid, self.proc)
        return ProcessInstance(
            pid=pid,
            start_ticks=stat.start_ticks,
            entity_id=self.entity_id(pid, stat.start_ticks),
            executable=executable,
            name=name,
            command_line=" ".join(args) if args else None,
            args=tuple(args),
            ppid=stat.ppid,
            creds=creds,
            caps=caps,
            session=stat.session,
            tty_nr=stat.tty_nr,
            cgroup=read_cgroup(pid, self.proc),
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
        the agent did not see, say) is read from ``/proc`` and stored instead, linked to its
        parent, which is resolved the same way. Without ``/proc``,
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
        elif current.ppid:
            # The live parent started before its child; an older holder of its pid did not.
            parent = self.resolve(current.ppid, read_start_ticks(current.ppid, self.proc))
            if parent is not None and parent.start_ticks <= current.start_ticks:
                current = replace(current, parent_entity_id=parent.entity_id)
        self.put(current)
        return current

    def fork(self, parent: ProcessInstance, child: ProcStat) -> ProcessInstance | None:
        """Record the child ``parent`` forked, read from ``/proc`` right after the fork.

        The child runs its parent's program until it execs, so it gets the parent's program,
        ids and cgroup, a link to the parent, and its own session and terminal from ``child``.
        Nothing is recorded when ``child`` is not the parent's child (its pid was reused by
        another process before it was read), or when the pid already holds that instance.

        Returns:
            The new entry, or ``None`` when nothing was recorded.
        """
        if child.ppid != parent.pid or child.start_ticks < parent.start_ticks:
            return None
        known = self.get(child.pid)
        if known is not None and known.start_ticks == child.start_ticks:
            return None
        instance = replace(
            parent,
            pid=child.pid,
            start_ticks=child.start_ticks,
            entity_id=self.entity_id(child.pid, child.start_ticks),
            ppid=parent.pid,
            parent_entity_id=parent.entity_id,
            exited=False,
            session=child.session,
            tty_nr=child.tty_nr,
        )
        self.put(instance)
        return instance

    def update(self, pid: int, start_ticks: int, **changes: Any) -> ProcessInstance | None:
        """Change fields of the entry ``(pid, start_ticks)``; ``None`` if that is not known."""
        with self._lock:
            known = self._by_pid.get(pid)
            if known is None or known.start_ticks != start_ticks:
                return None
            updated = replace(known, **changes)
            self._by_pid[pid] = updated
            return updated

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


def process_fields(
    table: ProcessTable, pid: int, live_ticks: int | None, syscall: dict[str, str]
) -> dict[str, Any]:
    """ECS ``process`` of the process behind an audit event: identity, program, parent, context.

    Args:
        table: The shared process table.
        pid: The process id the event names.
        live_ticks: Its start ticks read from ``/proc`` when the event arrived (see
            :meth:`ProcessTable.resolve`).
        syscall: The event's SYSCALL record; its ``exe`` and ``comm`` name the program when
            the process was gone before the agent could learn it.
    """
    instance = table.resolve(pid, live_ticks)
    fields: dict[str, Any] = {"pid": pid}
    executable = value_text(syscall.get("exe"))
    if executable:
        fields["executable"] = executable
        fields["name"] = os.path.basename(executable)
    if instance is None:
        return fields
    fields["entity_id"] = instance.entity_id
    for key in ("executable", "name", "command_line"):
        value = getattr(instance, key)
        if value is not None:
            fields[key] = value
    parent: dict[str, Any] = {} if instance.ppid is None else {"pid": instance.ppid}
    if instance.parent_entity_id:
        parent["entity_id"] = instance.parent_entity_id
    if parent:
        fields["parent"] = parent
    fields.update(context_fields(table, instance))
    return fields


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


def context_fields(table: ProcessTable, instance: ProcessInstance) -> dict[str, Any]:
    """``process.tty``, ``process.session_leader`` and ``process.cgroup`` of an instance.

    The session leader is the process whose pid is the session id; a pid stays allocated while
    a session uses it as its id, so the entry at that pid is the leader (or is gone).
    """
    fields: dict[str, Any] = {}
    device = tty_device(instance.tty_nr)
    if device is not None:
        fields["tty"] = {"char_device": {"major": device[0], "minor": device[1]}}
    if instance.session:
        sid = instance.session
        leader = instance if sid == instance.pid else table.get(sid)
        if leader is None:
            leader = table.resolve(sid, read_start_ticks(sid, table.proc))
        if leader is not None:
            fields["session_leader"] = {"pid": leader.pid, "entity_id": leader.entity_id}
    if instance.cgroup:
        fields["cgroup"] = {"path": instance.cgroup}
    return fields


def container_fields(instance: ProcessInstance | None) -> dict[str, Any]:
    """ECS ``container`` (id and runtime) of an instance; empty outside a container."""
    found = container_id(instance.cgroup if instance else None)
    if found is None:
        return {}
    ident, runtime = found
    return {"id": ident, "runtime": runtime} if runtime else {"id": ident}


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


def audit_users(fields: dict[str, str]) -> dict[str, Any]:
    """ECS ``user`` from an audit SYSCALL record: real, ``effective`` and ``audit`` (login) uid."""
    users: dict[str, Any] = user_fields(fields.get("uid"))
    effective = user_fields(fields.get("euid"))
    if effective:
        users["effective"] = effective
    audit = user_fields(fields.get("auid"))
    if audit:
        users["audit"] = audit
    return users
