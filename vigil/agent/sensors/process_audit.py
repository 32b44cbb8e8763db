"""Process start and end from the kernel audit subsystem.

The sensor loads exit-filter rules for execve, execveat and exit_group (key ``vigil``), raises
the audit backlog limit to a bounded value, enables audit and registers itself as the audit
daemon, so the kernel unicasts every record to its netlink socket. One thread receives and
reassembles records and reads start ticks from ``/proc`` while the process still exists; a
second thread turns each event into an ECS document and emits it. ``stop`` (and a failed
``start``) restores exactly the settings the sensor changed.

The agent's own threads never exec, so recording every exec on the host, the agent's children
included, cannot feed back into itself.

Options (``SensorContext.options``):
    audit_backlog_limit: kernel backlog limit while running (64-65536, default 8192).
    audit_rcvbuf: netlink receive buffer in bytes (default 8 MiB).
    on_audit_event: callable given every reassembled :class:`AuditEvent`, for sensors that
        want raw audit records; it runs on the sensor's thread and must be quick.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vigil.agent.audit import netlink, rules
from vigil.agent.audit.reassembly import AuditEvent, Reassembler
from vigil.agent.audit.records import (
    AUDIT_CWD,
    AUDIT_EXECVE,
    AUDIT_PROCTITLE,
    AUDIT_SYSCALL,
    RecordParseError,
    execve_args,
    parse_record,
    proctitle_args,
    value_text,
)
from vigil.agent.errors import AgentError, NotApplicable
from vigil.agent.processes import (
    ExecutableHasher,
    ProcessInstance,
    ProcessTable,
    boot_time,
    epoch_to_ticks,
    event_base,
    parent_fields,
    read_start_ticks,
    ticks_to_epoch,
    user_fields,
)
from vigil.agent.sensors.base import Sensor, SensorContext
from vigil.schema.ecs import iso

log = logging.getLogger(__name__)

DEFAULT_BACKLOG_LIMIT = 8192
BACKLOG_RANGE = (64, 65536)
DEFAULT_RCVBUF = 8 * 1024 * 1024
RCVBUF_RANGE = (64 * 1024, 256 * 1024 * 1024)
QUEUE_LIMIT = 65536
STATUS_INTERVAL = 2.0
PRUNE_INTERVAL = 60.0

AuditCallback = Callable[[AuditEvent], None]


@dataclass
class _Changes:
    """What this sensor changed in the kernel, so exactly that can be undone."""

    previous: netlink.AuditStatus | None = None
    rules: list[bytes] = field(default_factory=list)
    pid_registered: bool = False
    enabled_changed: bool = False
    backlog_changed: bool = False


def _int_option(options: dict[str, Any], name: str, default: int, bounds: tuple[int, int]) -> int:
    value = options.get(name, default)
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise AgentError(
            f"process_audit option {name}={value!r} is invalid: use an integer from {low} to "
            f"{high} (default {default})"
        )
    return value


def _read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return str(int(boot_time()))


class ProcessAuditSensor(Sensor):
    """Emits ``process`` start (exec) and end (exit) events from the kernel audit subsystem.

    Exec events carry the exact argv, executable, working directory, SHA-256 of the
    executable, users, and the parent linked by entity id; exit events carry the exit code.
    """

    name = "process_audit"
    supported_os = ("linux",)
    requires_root = True
    version = "1"

    def __init__(self, context: SensorContext) -> None:
        super().__init__(context)
        self._changes = _Changes()
        self._control: netlink.AuditSocket | None = None
        self._events: netlink.AuditSocket | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue[AuditEvent | None] = queue.Queue(QUEUE_LIMIT)
        self._threads: list[threading.Thread] = []
        self._hasher = ExecutableHasher()
        self._table: ProcessTable | None = None
        self._callback: AuditCallback | None = None
        self._boot = boot_time()
        self._boot_id = _read_boot_id()
        self._exec_syscalls: dict[int, frozenset[int]] = {}
        self._exit_syscalls: dict[int, int] = {}
        self._lost_base = 0
        # The receive thread polls status on the control socket while stop() restores with it.
        self._control_lock = threading.Lock()

    def check_compatible(self) -> None:
        """Raise NotApplicable off Linux, without root, or when audit is locked or taken."""
        if not sys.platform.startswith("linux"):
            raise NotApplicable(
                f"process_audit needs Linux (this is {sys.platform}); use process_poll"
            )
        if os.geteuid() != 0:
            raise NotApplicable(
                "process_audit needs root to configure kernel audit; run the agent as root or "
                "use process_poll"
            )
        try:
            rules.arches_for()
        except KeyError:
            raise NotApplicable(
                f"process_audit does not know the syscall numbers of {os.uname().machine}"
            ) from None
        try:
            control = netlink.AuditSocket()
        except netlink.AuditNetlinkError as exc:
            raise NotApplicable(str(exc)) from None
        try:
            status = control.get_status()
        except netlink.AuditNetlinkError as exc:
            raise NotApplicable(str(exc)) from None
        finally:
            control.close()
        if status.enabled == 2:
            raise NotApplicable(
                "kernel audit configuration is locked (enabled=2) until reboot; use process_poll"
            )
        if status.pid and status.pid != os.getpid() and os.path.exists(f"/proc/{status.pid}"):
            raise NotApplicable(
                f"another audit daemon (pid {status.pid}) owns kernel audit; stop it (auditd?) "
                "or use process_poll"
            )

    def start(self) -> None:
        """Configure kernel audit, scan ``/proc`` and start the receive and emit threads.

        Raises:
            AgentError: An option is invalid or the kernel refused a change; every change
                already made has been undone.
        """
        options = self.context.options
        try:
            backlog = _int_option(
                options, "audit_backlog_limit", DEFAULT_BACKLOG_LIMIT, BACKLOG_RANGE
            )
            rcvbuf = _int_option(options, "audit_rcvbuf", DEFAULT_RCVBUF, RCVBUF_RANGE)
            callback = options.get("on_audit_event")
            if callback is not None and not callable(callback):
                raise AgentError(
                    "process_audit option on_audit_event must be a callable taking an AuditEvent"
                )
        except AgentError as exc:
            self.set_state("failed", str(exc))
            raise
        self._callback = callback
        self._exec_syscalls = rules.exec_syscalls()
        self._exit_syscalls = rules.exit_syscalls()
        for counter in ("events", "records", "lost", "backlog", "parse_errors"):
            self.count(counter, 0)

        if self.context.processes is None:
            self.context.processes = ProcessTable(self.context.agent_id)
        self._table = self.context.processes
        self._table.scan()

        try:
            self._configure(backlog, rcvbuf)
        except Exception as exc:
            problems = self._restore()
            message = f"process_audit could not start: {exc}"
            if problems:
                message += "; restoring audit also failed: " + "; ".join(problems)
            self.set_state("failed", message)
            raise AgentError(message) from exc

        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._receive_loop, name="vigil-audit-recv", daemon=True),
            threading.Thread(target=self._emit_loop, name="vigil-audit-emit", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.set_state("running", f"kernel audit, backlog limit {backlog}")
        log.info(
            "process_audit running: %d audit rules loaded, backlog limit %d",
            len(self._changes.rules),
            backlog,
        )

    def _configure(self, backlog: int, rcvbuf: int) -> None:
        self._changes = _Changes()
        self._control = control = netlink.AuditSocket()
        previous = control.get_status()
        self._changes.previous = previous
        self._lost_base = previous.lost
        if previous.enabled == 2:
            raise AgentError("kernel audit configuration is locked (enabled=2) until reboot")

        self._remove_stale_rules(control)
        if previous.backlog_limit != backlog:
            control.set_status(netlink.AUDIT_STATUS_BACKLOG_LIMIT, backlog_limit=backlog)
            self._changes.backlog_changed = True
        for rule in rules.process_rules():
            data = rule.pack()
            control.add_rule(data)
            self._changes.rules.append(data)

        # Records go to the socket that registered the pid, so register on the event socket.
        self._events = netlink.AuditSocket(rcvbuf=rcvbuf)
        self._events.set_status(netlink.AUDIT_STATUS_PID, pid=os.getpid())
        self._changes.pid_registered = True
        if previous.enabled != 1:
            control.set_status(netlink.AUDIT_STATUS_ENABLED, enabled=1)
            self._changes.enabled_changed = True
        log.debug("audit netlink receive buffer is %d bytes", self._events.rcvbuf)

    def _remove_stale_rules(self, control: netlink.AuditSocket) -> None:
        # Rules keyed "vigil" belong to this sensor by contract; any loaded now were left by an
        # agent that died without stopping, and would double every event.
        for data in control.list_rules():
            if rules.AuditRule.unpack(data).key == rules.RULE_KEY:
                log.warning(
                    "removing an audit rule keyed %r left by an earlier run", rules.RULE_KEY
                )
                control.delete_rule(data)

    def stop(self) -> None:
        """Stop the threads and restore every audit setting this sensor changed.

        Raises:
            AgentError: A setting could not be restored; the message names it.
        """
        problems = self._restore(generation_only=True)
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = []
        problems += self._restore()
        if problems:
            message = "process_audit stopped but could not restore: " + "; ".join(problems)
            self.set_state("failed", message)
            raise AgentError(message + "; check with AUDIT_GET / AUDIT_LIST_RULES and fix by hand")
        self.set_state("stopped")

    def _restore(self, generation_only: bool = False) -> list[str]:
        """Undo recorded changes, newest first; returns what could not be undone.

        With ``generation_only`` only audit generation is undone (enabled flag, rules), so the
        receive thread can drain what the kernel still holds before the pid is released.
        """
        changes, control = self._changes, self._control
        problems: list[str] = []
        previous = changes.previous
        if control is None or previous is None:
            if not generation_only:
                self._close_sockets()
            return problems
        steps: list[tuple[str, Callable[[], None]]] = []
        if changes.enabled_changed:
            steps.append(
                (
                    f"enabled={previous.enabled}",
                    lambda: control.set_status(
                        netlink.AUDIT_STATUS_ENABLED, enabled=previous.enabled
                    ),
                )
            )
        for data in changes.rules:
            steps.append(("delete rule", functools.partial(control.delete_rule, data)))
        if not generation_only:
            if changes.pid_registered:
                steps.append(
                    (
                        "pid=0",
                        lambda: control.set_status(netlink.AUDIT_STATUS_PID, pid=0),
                    )
                )
            if changes.backlog_changed:
                steps.append(
                    (
                        f"backlog_limit={previous.backlog_limit}",
                        lambda: control.set_status(
                            netlink.AUDIT_STATUS_BACKLOG_LIMIT,
                            backlog_limit=previous.backlog_limit,
                        ),
                    )
                )
        for what, step in steps:
            try:
                with self._control_lock:
                    step()
            except (OSError, AgentError) as exc:
                log.warning("could not restore audit %s: %s", what, exc)
                problems.append(f"{what}: {exc}")
        changes.enabled_changed = False
        changes.rules = []
        if not generation_only:
            changes.pid_registered = changes.backlog_changed = False
            self._close_sockets()
        return problems

    def _close_sockets(self) -> None:
        for sock in (self._events, self._control):
            if sock is not None:
                sock.close()
        self._events = self._control = None

    # --- receive thread -------------------------------------------------------------------

    def _receive_loop(self) -> None:
        assert self._events is not None
        sock = self._events
        sock.sock.settimeout(0.25)
        reassembler = Reassembler()
        next_status = next_expire = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    messages = sock.receive()
                except TimeoutError:
                    messages = []
                except OSError as exc:
                    if not netlink.is_enobufs(exc):
                        raise
                    self.count("overflows")
                    log.warning("audit netlink socket overflowed; records were lost")
                    messages = []
                for message in messages:
                    self._take(message, reassembler)
                now = time.monotonic()
                if now >= next_expire:
                    next_expire = now + 0.5
                    for event in reassembler.expire():
                        self._enqueue(event)
                if now >= next_status:
                    next_status = now + STATUS_INTERVAL
                    self._poll_status()
            for event in reassembler.flush():
                self._enqueue(event)
        except Exception as exc:
            log.warning("process_audit receive thread failed: %s", exc)
            log.debug("receive thread traceback", exc_info=True)
            self.set_state("failed", f"receiving audit records failed: {exc}; restart the sensor")
        finally:
            self._queue.put(None)

    def _take(self, message: netlink.NetlinkMessage, reassembler: Reassembler) -> None:
        if message.type < netlink.FIRST_RECORD_TYPE or message.type == netlink.AUDIT_REPLACE:
            return
        self.count("records")
        try:
            record = parse_record(message.type, message.payload.decode("utf-8", "surrogateescape"))
        except RecordParseError as exc:
            self.count("parse_errors")
            log.warning("skipping audit record: %s", exc)
            return
        event, closed = reassembler.add(record)
        if record.type == AUDIT_SYSCALL:
            # Read start ticks now: a short-lived process may be gone by the time we emit.
            for key in ("pid", "ppid"):
                value = record.fields.get(key, "")
                if value.isdigit():
                    event.annotations[key + "_ticks"] = read_start_ticks(int(value))
        for done in closed:
            self._enqueue(done)

    def _enqueue(self, event: AuditEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.count("dropped")

    def _poll_status(self) -> None:
        with self._control_lock:
            if self._control is None:
                return
            try:
                status = self._control.get_status()
            except AgentError as exc:
                self.count("status_errors")
                log.debug("audit status poll failed: %s", exc)
                return
        with self._lock:
            self.counters["lost"] = status.lost - self._lost_base
            self.counters["backlog"] = status.backlog

    # --- emit thread ------------------------------------------------------------------------

    def _emit_loop(self) -> None:
        next_prune = time.monotonic() + PRUNE_INTERVAL
        while True:
            event = self._queue.get()
            if event is None:
                return
            if self._callback is not None:
                try:
                    self._callback(event)
                except Exception:
                    self.count("callback_errors")
                    log.debug("on_audit_event callback failed", exc_info=True)
            try:
                self._handle(event)
            except (RecordParseError, KeyError, ValueError) as exc:
                self.count("parse_errors")
                log.warning("skipping audit event %s: %s", event.event_id, exc)
                log.debug("audit event %s records: %s", event.event_id, event.records)
            if time.monotonic() >= next_prune and self._table is not None:
                next_prune = time.monotonic() + PRUNE_INTERVAL
                self._table.prune()

    def _handle(self, event: AuditEvent) -> None:
        syscall = event.first(AUDIT_SYSCALL)
        if syscall is None or value_text(syscall.fields.get("key")) != rules.RULE_KEY:
            return
        arch = int(syscall.fields["arch"], 16)
        number = int(syscall.fields["syscall"])
        if number in self._exec_syscalls.get(arch, ()):
            if syscall.fields.get("success") == "no":
                self.count("exec_failed")
                return
            document = self._exec_document(event, syscall.fields)
        elif number == self._exit_syscalls.get(arch):
            document = self._exit_document(event, syscall.fields)
        else:
            return
        self.context.emit(document)
        self.count("events")

    def _start_ticks(self, event: AuditEvent, key: str) -> int | None:
        ticks = event.annotations.get(key)
        return ticks if isinstance(ticks, int) else None

    def _exec_document(self, event: AuditEvent, fields: dict[str, str]) -> dict[str, Any]:
        assert self._table is not None
        pid, ppid = int(fields["pid"]), int(fields["ppid"])
        ticks = self._start_ticks(event, "pid_ticks")
        if ticks is None:
            ticks = epoch_to_ticks(event.timestamp, self._boot)
            self.count("start_ticks_fallback")

        execve = event.all(AUDIT_EXECVE)
        proctitle = event.first(AUDIT_PROCTITLE)
        if execve:
            args = execve_args(execve)
        elif proctitle is not None:
            args = proctitle_args(proctitle.fields.get("proctitle", ""))
        else:
            args = []
        cwd_record = event.first(AUDIT_CWD)
        cwd = value_text(cwd_record.fields.get("cwd")) if cwd_record else None
        executable = value_text(fields.get("exe"))
        name = os.path.basename(executable) if executable else value_text(fields.get("comm"))
        command_line = " ".join(args)

        parent = self._table.resolve(ppid, self._start_ticks(event, "ppid_ticks"))
        if parent is None:
            self.count("parent_unknown")
        instance = ProcessInstance(
            pid=pid,
            start_ticks=ticks,
            entity_id=self._table.entity_id(pid, ticks),
            executable=executable,
            name=name,
            command_line=command_line,
            args=tuple(args),
            ppid=ppid,
            parent_entity_id=parent.entity_id if parent else None,
        )
        self._table.put(instance)

        process: dict[str, Any] = {
            "entity_id": instance.entity_id,
            "pid": pid,
            "executable": executable,
            "name": name,
            "args": args,
            "args_count": len(args),
            "command_line": command_line,
            "working_directory": cwd,
            "start": iso(datetime.fromtimestamp(ticks_to_epoch(ticks, self._boot), UTC)),
            "parent": parent_fields(ppid, parent),
        }
        digest = self._hasher.sha256(executable, pid)
        if digest:
            process["hash"] = {"sha256": digest}
        user = user_fields(fields.get("uid"))
        if user:
            process["user"] = user
        document = self._base(event, "start", "exec")
        document["process"] = process
        document["user"] = self._users(fields)
        return document

    def _exit_document(self, event: AuditEvent, fields: dict[str, str]) -> dict[str, Any]:
        assert self._table is not None
        pid, ppid = int(fields["pid"]), int(fields["ppid"])
        instance = self._table.resolve(pid, self._start_ticks(event, "pid_ticks"))
        process: dict[str, Any] = {"pid": pid}
        if instance is not None:
            self._table.mark_exited(pid, instance.start_ticks)
            process.update(
                entity_id=instance.entity_id,
                executable=instance.executable,
                name=instance.name,
                command_line=instance.command_line,
            )
        else:
            self.count("exit_unknown_process")
        # exit_group(status): the exit code is the low byte of its first argument.
        process["exit_code"] = int(fields.get("a0", "0"), 16) & 0xFF
        process["end"] = iso(datetime.fromtimestamp(event.timestamp, UTC))
        process["parent"] = {"pid": ppid}
        if instance is not None and instance.parent_entity_id:
            process["parent"]["entity_id"] = instance.parent_entity_id
        document = self._base(event, "end", "exit")
        document["process"] = {k: v for k, v in process.items() if v is not None}
        document["user"] = self._users(fields)
        return document

    def _users(self, fields: dict[str, str]) -> dict[str, Any]:
        users: dict[str, Any] = user_fields(fields.get("uid"))
        effective = user_fields(fields.get("euid"))
        if effective:
            users["effective"] = effective
        audit = user_fields(fields.get("auid"))
        if audit:
            users["audit"] = audit
        return users

    def _base(self, event: AuditEvent, event_type: str, action: str) -> dict[str, Any]:
        seconds, millis, serial = event.event_id
        unique = f"audit:{self._boot_id}:{seconds}.{millis:03d}:{serial}"
        return event_base(self.context, event.timestamp, event_type, action, unique)
