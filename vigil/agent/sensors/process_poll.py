"""Process start and end by polling the process list with psutil: the fallback sensor.

Used without root or off Linux, where kernel audit is out of reach. It compares snapshots of
the process list, so it misses every process shorter than the poll interval, sees the argv of
the moment rather than of the exec, and knows no exit codes; its health says so with the state
``degraded``. On Linux entity ids come from ``/proc/<pid>/stat`` start ticks exactly as the audit
sensor derives them; elsewhere from psutil's create time in hundredths of a second.

Options (``SensorContext.options``):
    poll_interval: seconds between snapshots (0.1-60, default 1.0).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import psutil

from vigil.agent.errors import AgentError
from vigil.agent.processes import (
    ExecutableHasher,
    ProcessInstance,
    ProcessTable,
    boot_time,
    event_base,
    parent_fields,
    read_start_ticks,
    ticks_to_epoch,
    user_fields,
)
from vigil.agent.sensors.base import NEVER_SHED, Sensor, SensorContext
from vigil.schema.ecs import iso

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 1.0
INTERVAL_RANGE = (0.1, 60.0)
_ATTRS = ["pid", "ppid", "name", "exe", "cmdline", "cwd", "create_time", "uids"]

Key = tuple[int, int]


@dataclass
class _Seen:
    """A process in one snapshot, with what the lineage table does not keep."""

    instance: ProcessInstance
    cwd: str | None
    uid: int | None
    euid: int | None


def _start_key(pid: int, create_time: float) -> int:
    if sys.platform.startswith("linux"):
        ticks = read_start_ticks(pid)
        if ticks is not None:
            return ticks
    return int(create_time * 100)


class ProcessPollSensor(Sensor):
    """Emits ``process`` start and end events by diffing psutil snapshots (degraded mode)."""

    name = "process_poll"
    shed_order = NEVER_SHED
    supported_os = ("linux", "darwin", "windows")
    requires_root = False
    version = "1"

    def __init__(self, context: SensorContext) -> None:
        super().__init__(context)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._known: dict[Key, _Seen] = {}
        self._boot = boot_time() if sys.platform.startswith("linux") else 0.0
        self._hasher = ExecutableHasher()
        self._table: ProcessTable | None = None
        self._interval = DEFAULT_INTERVAL

    def check_compatible(self) -> None:
        """Polling runs wherever psutil does, which is everywhere Vigil installs."""

    def start(self) -> None:
        """Take the first snapshot (no events for processes already running) and start polling.

        Raises:
            AgentError: The ``poll_interval`` option is invalid.
        """
        interval = self.context.options.get("poll_interval", DEFAULT_INTERVAL)
        low, high = INTERVAL_RANGE
        if isinstance(interval, bool) or not isinstance(interval, int | float):
            interval = -1.0
        if not low <= interval <= high:
            message = (
                f"process_poll option poll_interval={self.context.options['poll_interval']!r} "
                f"is invalid: use seconds from {low} to {high} (default {DEFAULT_INTERVAL})"
            )
            self.set_state("failed", message)
            raise AgentError(message)
        self._interval = float(interval)
        if self.context.processes is None:
            self.context.processes = ProcessTable(self.context.agent_id)
        self._table = self.context.processes
        for counter in ("events", "polls", "errors"):
            self.count(counter, 0)

        self._known = self._snapshot()
        for seen in self._known.values():
            self._table.put(seen.instance)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="vigil-process-poll", daemon=True)
        self._thread.start()
        self.set_state(
            "degraded",
            f"polling processes every {self._interval:g} s with psutil (no kernel audit): "
            "processes shorter than that are missed, argv is read after the exec, no exit codes",
        )

    def stop(self) -> None:
        """Stop polling; nothing in the kernel was changed."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval + 5)
            self._thread = None
        self.set_state("stopped")

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._poll()
            except Exception as exc:
                self.count("errors")
                log.warning("process_poll snapshot failed: %s", exc)
                log.debug("snapshot traceback", exc_info=True)

    def _snapshot(self) -> dict[Key, _Seen]:
        assert self._table is not None
        found: dict[Key, _Seen] = {}
        for proc in psutil.process_iter(_ATTRS):
            info = proc.info
            if info.get("create_time") is None:
                continue
            pid = info["pid"]
            start = _start_key(pid, info["create_time"])
            args = list(info.get("cmdline") or [])
            uids = info.get("uids")
            instance = ProcessInstance(
                pid=pid,
                start_ticks=start,
                entity_id=self._table.entity_id(pid, start),
                executable=info.get("exe") or None,
                name=info.get("name"),
                command_line=" ".join(args),
                args=tuple(args),
                ppid=info.get("ppid"),
            )
            found[(pid, start)] = _Seen(
                instance,
                info.get("cwd"),
                uids.real if uids else None,
                uids.effective if uids else None,
            )
        return found

    def _poll(self) -> None:
        assert self._table is not None
        now = time.time()
        current = self._snapshot()
        self.count("polls")
        for key in sorted(current.keys() - self._known.keys(), key=lambda k: k[1]):
            seen = current[key]
            ppid = seen.instance.ppid
            parent = self._table.get(ppid) if ppid is not None else None
            if parent is not None and read_start_ticks(parent.pid) not in (
                None,
                parent.start_ticks,
            ):
                parent = None  # the pid now holds another process
            if parent is not None:
                seen.instance = replace(seen.instance, parent_entity_id=parent.entity_id)
            self._table.put(seen.instance)
            self.context.emit(self._start_document(seen, parent))
            self.count("events")
        for key in self._known.keys() - current.keys():
            instance = self._known[key].instance
            self._table.mark_exited(instance.pid, instance.start_ticks)
            self.context.emit(self._end_document(instance, now))
            self.count("events")
        self._known = current

    def _start_document(self, seen: _Seen, parent: ProcessInstance | None) -> dict[str, Any]:
        instance = seen.instance
        moment = instance.start_ticks / 100
        if sys.platform.startswith("linux"):
            moment = ticks_to_epoch(instance.start_ticks, self._boot)
        process: dict[str, Any] = {
            "entity_id": instance.entity_id,
            "pid": instance.pid,
            "executable": instance.executable,
            "name": instance.name,
            "args": list(instance.args),
            "args_count": len(instance.args),
            "command_line": instance.command_line,
            "working_directory": seen.cwd,
            "start": iso(datetime.fromtimestamp(moment, UTC)),
            "parent": parent_fields(instance.ppid, parent),
        }
        digest = self._hasher.sha256(instance.executable, instance.pid)
        if digest:
            process["hash"] = {"sha256": digest}
        user = user_fields(seen.uid)
        if user:
            process["user"] = user
        users: dict[str, Any] = dict(user)
        effective = user_fields(seen.euid)
        if effective:
            users["effective"] = effective
        unique = f"poll:{instance.entity_id}:start"
        document = event_base(self.context, moment, "start", "exec", unique)
        document["process"] = {k: v for k, v in process.items() if v is not None}
        document["user"] = users
        return document

    def _end_document(self, instance: ProcessInstance, now: float) -> dict[str, Any]:
        process: dict[str, Any] = {
            "entity_id": instance.entity_id,
            "pid": instance.pid,
            "executable": instance.executable,
            "name": instance.name,
            "command_line": instance.command_line,
            "end": iso(datetime.fromtimestamp(now, UTC)),
            "parent": {"pid": instance.ppid},
        }
        if instance.parent_entity_id:
            process["parent"]["entity_id"] = instance.parent_entity_id
        document = event_base(self.context, now, "end", "exit", f"poll:{instance.entity_id}:end")
        document["process"] = {k: v for k, v in process.items() if v is not None}
        return document
