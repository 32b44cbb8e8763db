"""The one owner of kernel audit in the agent: netlink socket, settings, rule sets and threads.

Only one process can be the audit daemon, and records go only to the socket that registered, so
every audit sensor shares one :class:`AuditHub`. A sensor attaches a :class:`Subscription`
naming its rules and the syscalls it wants; the first one to attach raises the backlog limit,
registers the agent as the audit daemon and enables audit, and the last one to detach restores
exactly what was changed. Sensors can be switched on and off independently.

Two threads serve every subscriber. The receive thread reads and reassembles records and, while
the process behind a syscall still exists, reads what only ``/proc`` can tell (start ticks, and
whatever a subscriber's ``on_syscall`` hook wants, such as a socket's local address). The
dispatch thread hands each complete event to its subscriber: an event keyed ``vigil`` to the one
that asked for its syscall, an event keyed ``vigil_<name>`` to the one that asked for that key,
and an event without a SYSCALL record (a message from user space, such as ``ADD_USER``) to the
one that asked for its record type.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vigil.agent.audit import netlink, rules
from vigil.agent.audit.reassembly import AuditEvent, Reassembler
from vigil.agent.audit.records import (
    AUDIT_SYSCALL,
    AuditRecord,
    RecordParseError,
    parse_record,
    value_text,
)
from vigil.agent.errors import AgentError, NotApplicable
from vigil.agent.processes import boot_time, read_stat

log = logging.getLogger(__name__)

QUEUE_LIMIT = 65536
# Records read from the socket in one go, at most; events are queued per such batch.
RECV_BATCH = 64
# How long the receive thread waits for a record before it looks at timers and the stop flag.
RECV_WAIT = 0.25
# Longest a complete event waits in the receive thread before it is handed to dispatch.
DISPATCH_DELAY = 0.02
STATUS_INTERVAL = 2.0
DEFAULT_BACKLOG_LIMIT = 8192
BACKLOG_RANGE = (64, 65536)
DEFAULT_RCVBUF = 8 * 1024 * 1024
RCVBUF_RANGE = (64 * 1024, 256 * 1024 * 1024)
HUB_COUNTERS = ("records", "lost", "backlog", "parse_errors", "overflows", "dropped")

EventHandler = Callable[[AuditEvent], None]
SyscallHook = Callable[[AuditEvent, AuditRecord], None]
RefusedHook = Callable[[rules.AuditRule, netlink.AuditNetlinkError], None]


@dataclass
class Subscription:
    """What one sensor wants from the hub.

    Attributes:
        name: The sensor's name, for logs and errors.
        rules: Audit rules to load while attached (keyed ``vigil`` or ``vigil_*``).
        syscalls: For each ``AUDIT_ARCH_*`` value, the syscall numbers whose events keyed
            ``vigil`` are routed to this sensor.
        handle: Called on the dispatch thread with each complete event routed to this sensor.
        on_syscall: Called on the receive thread when the SYSCALL record of one of those
            syscalls arrives, with the event so far; must be quick. Facts it reads go into
            ``event.annotations``.
        tap: Called on the dispatch thread with every event, whatever its syscall.
        keys: Rule keys (``vigil_*``) whose events are routed to this sensor, whatever their
            syscall; no other sensor may ask for the same key.
        record_types: Types of standalone records (events without a SYSCALL record, such as
            user-space messages) routed to this sensor.
        on_refused: Called with a rule the kernel refused and the error, instead of failing
            the attach: for sensors whose rules do not depend on each other (file watches).
    """

    name: str
    rules: list[rules.AuditRule]
    syscalls: Mapping[int, frozenset[int]]
    handle: EventHandler
    on_syscall: SyscallHook | None = None
    tap: EventHandler | None = None
    keys: frozenset[str] = frozenset()
    record_types: frozenset[int] = frozenset()
    on_refused: RefusedHook | None = None


@dataclass
class _Changes:
    """What the hub changed in the kernel, so exactly that can be undone."""

    previous: netlink.AuditStatus | None = None
    rules: dict[str, list[bytes]] = field(default_factory=dict)
    pid_registered: bool = False
    enabled_changed: bool = False
    backlog_changed: bool = False


def _read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return str(int(boot_time()))


BOOT_ID = _read_boot_id()


def event_unique(event: AuditEvent) -> str:
    """Text naming an audit event uniquely on this host, for ``event.id`` (see ``event_base``)."""
    seconds, millis, serial = event.event_id
    return f"audit:{BOOT_ID}:{seconds}.{millis:03d}:{serial}"


def int_option(
    sensor: str, options: Mapping[str, Any], name: str, default: int, bounds: tuple[int, int]
) -> int:
    """An integer option of ``sensor`` within ``bounds``.

    Raises:
        AgentError: The value is not an integer in range; the message gives the range.
    """
    value = options.get(name, default)
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise AgentError(
            f"{sensor} option {name}={value!r} is invalid: use an integer from {low} to "
            f"{high} (default {default})"
        )
    return value


def audit_options(sensor: str, options: Mapping[str, Any]) -> tuple[int, int]:
    """The ``audit_backlog_limit`` and ``audit_rcvbuf`` options every audit sensor takes.

    Raises:
        AgentError: An option is out of range.
    """
    backlog = int_option(
        sensor, options, "audit_backlog_limit", DEFAULT_BACKLOG_LIMIT, BACKLOG_RANGE
    )
    rcvbuf = int_option(sensor, options, "audit_rcvbuf", DEFAULT_RCVBUF, RCVBUF_RANGE)
    return backlog, rcvbuf


def check_available(sensor: str) -> None:
    """Raise NotApplicable when kernel audit cannot be used here, naming ``sensor``.

    Checks the platform, root, the syscall table, the audit socket, the lock and whether
    another audit daemon holds audit (this agent's own hub does not count).
    """
    if not sys.platform.startswith("linux"):
        raise NotApplicable(f"{sensor} needs Linux kernel audit (this is {sys.platform})")
    if os.geteuid() != 0:
        raise NotApplicable(f"{sensor} needs root to configure kernel audit; run the agent as root")
    try:
        rules.arches_for()
    except KeyError:
        raise NotApplicable(
            f"{sensor} does not know the syscall numbers of {os.uname().machine}"
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
    if status.enabled == netlink.AUDIT_ENABLED_LOCKED:
        raise NotApplicable("kernel audit configuration is locked (enabled=2) until reboot")
    if status.pid and status.pid != os.getpid() and os.path.exists(f"/proc/{status.pid}"):
        raise NotApplicable(
            f"another audit daemon (pid {status.pid}) owns kernel audit; stop it (auditd?) "
            f"to use {sensor}"
        )


class AuditHub:
    """Kernel audit shared by the audit sensors of this process (see the module doc)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # The receive thread polls status on the control socket while attach/detach use it.
        self._control_lock = threading.Lock()
        self._subs: dict[str, Subscription] = {}
        self._routes: dict[tuple[int, int], Subscription] = {}
        self._key_routes: dict[str, Subscription] = {}
        self._type_routes: dict[int, Subscription] = {}
        self._changes = _Changes()
        self._baseline: Path | None = None
        self._control: netlink.AuditSocket | None = None
        self._events: netlink.AuditSocket | None = None
        self._stop = threading.Event()
        # Events go to the dispatch thread in batches (those closed by one read of the socket);
        # at most QUEUE_LIMIT events wait, counted in _pending.
        self._queue: queue.Queue[list[AuditEvent] | None] = queue.Queue()
        self._pending = 0
        self._threads: list[threading.Thread] = []
        self._counters: dict[str, int] = {}
        self._lost_base = 0
        self.backlog_limit = 0
        self.failure: str | None = None

    @property
    def attached(self) -> list[str]:
        """Names of the attached sensors."""
        with self._lock:
            return list(self._subs)

    def counters(self) -> dict[str, int]:
        """The hub's counters: records read, kernel ``lost`` since start, backlog, errors."""
        with self._lock:
            return dict(self._counters)

    def _count(self, counter: str, by: int = 1) -> None:
        with self._lock:
            self._counters[counter] = self._counters.get(counter, 0) + by

    def attach(
        self, sub: Subscription, backlog: int, rcvbuf: int, baseline: Path | None = None
    ) -> None:
        """Load ``sub``'s rules and route its syscalls to it; the first attach starts audit.

        Args:
            sub: What the sensor wants.
            backlog: Kernel backlog limit while running (used by the first attach only).
            rcvbuf: Netlink receive buffer in bytes (first attach only).
            baseline: A file keeping the audit settings found before the first change, so an
                agent killed without stopping restores them at its next stop (first attach).

        Raises:
            AgentError: The sensor is attached already, or the kernel refused a change; every
                change this call made has been undone.
        """
        with self._lock:
            if sub.name in self._subs:
                raise AgentError(f"{sub.name} is attached to kernel audit already; stop it first")
            taken = {key for other in self._subs.values() for key in other.keys} & sub.keys
            if taken:
                raise AgentError(f"{sub.name} asks for audit keys another sensor has: {taken}")
            bad = [key for key in sub.keys if key == rules.RULE_KEY or not rules.is_vigil_key(key)]
            if bad:
                raise AgentError(f"{sub.name} asks for audit keys {bad}; use vigil_<name> keys")
            first = not self._subs
        if first:
            self._baseline = baseline
            self._start(sub, backlog, rcvbuf)
        else:
            if backlog != self.backlog_limit:
                log.info(
                    "%s asked for audit backlog limit %d; keeping %d set by the first sensor",
                    sub.name,
                    backlog,
                    self.backlog_limit,
                )
            self._add_rules(sub)
        with self._lock:
            self._subs[sub.name] = sub
            self._rebuild_routes()

    def _rebuild_routes(self) -> None:
        self._routes = {
            (arch, number): sub
            for sub in self._subs.values()
            for arch, numbers in sub.syscalls.items()
            for number in numbers
        }
        self._key_routes = {key: sub for sub in self._subs.values() for key in sub.keys}
        self._type_routes = {kind: sub for sub in self._subs.values() for kind in sub.record_types}

    def _add_rules(self, sub: Subscription) -> None:
        added = self._changes.rules.setdefault(sub.name, [])
        try:
            for rule in sub.rules:
                data = rule.pack()
                try:
                    with self._control_lock:
                        assert self._control is not None
                        self._control.add_rule(data)
                except netlink.AuditNetlinkError as exc:
                    if sub.on_refused is None:
                        raise
                    sub.on_refused(rule, exc)
                    continue
                added.append(data)
        except Exception as exc:
            problems = self._delete_rules(sub.name)
            message = f"{sub.name} could not load its audit rules: {exc}"
            if problems:
                message += "; removing them again also failed: " + "; ".join(problems)
            raise AgentError(message) from exc

    def _delete_rules(self, name: str) -> list[str]:
        problems = []
        for data in self._changes.rules.pop(name, []):
            try:
                with self._control_lock:
                    if self._control is not None:
                        self._control.delete_rule(data)
            except (OSError, AgentError) as exc:
                log.warning("could not delete an audit rule of %s: %s", name, exc)
                problems.append(f"delete rule of {name}: {exc}")
        return problems

    def _start(self, sub: Subscription, backlog: int, rcvbuf: int) -> None:
        self._counters = dict.fromkeys(HUB_COUNTERS, 0)
        self._pending = 0
        self.failure = None
        try:
            self._configure(sub, backlog, rcvbuf)
        except Exception as exc:
            problems = self._restore()
            message = f"{sub.name} could not start: {exc}"
            if problems:
                message += "; restoring audit also failed: " + "; ".join(problems)
            raise AgentError(message) from exc
        self.backlog_limit = backlog
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._receive_loop, name="vigil-audit-recv", daemon=True),
            threading.Thread(target=self._dispatch_loop, name="vigil-audit-emit", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _configure(self, sub: Subscription, backlog: int, rcvbuf: int) -> None:
        self._changes = _Changes()
        self._control = control = netlink.AuditSocket()
        previous = self._settings_to_restore(control.get_status())
        self._changes.previous = previous
        self._lost_base = previous.lost
        if previous.enabled == netlink.AUDIT_ENABLED_LOCKED:
            raise AgentError("kernel audit configuration is locked (enabled=2) until reboot")

        self._remove_stale_rules(control)
        if previous.backlog_limit != backlog:
            control.set_status(netlink.AUDIT_STATUS_BACKLOG_LIMIT, backlog_limit=backlog)
            self._changes.backlog_changed = True
        self._add_rules(sub)

        # Records go to the socket that registered the pid, so register on the event socket.
        self._events = netlink.AuditSocket(rcvbuf=rcvbuf)
        self._events.set_status(netlink.AUDIT_STATUS_PID, pid=os.getpid())
        self._changes.pid_registered = True
        if previous.enabled != 1:
            control.set_status(netlink.AUDIT_STATUS_ENABLED, enabled=1)
            self._changes.enabled_changed = True
        log.debug("audit netlink receive buffer is %d bytes", self._events.rcvbuf)

    def _settings_to_restore(self, found: netlink.AuditStatus) -> netlink.AuditStatus:
        """The settings to put back at stop: saved ones when an earlier run died holding audit.

        An agent killed with SIGKILL leaves audit enabled with its backlog limit; the settings
        it found are still in the baseline file, and those are the ones to restore.
        """
        if self._baseline is None:
            return found
        try:
            saved = json.loads(self._baseline.read_text())
        except FileNotFoundError:
            saved = None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable audit baseline %s: %s", self._baseline, exc)
            saved = None
        if isinstance(saved, dict) and {"enabled", "backlog_limit"} <= set(saved):
            log.warning(
                "an earlier run did not restore kernel audit; will restore enabled=%s "
                "backlog_limit=%s as it found them",
                saved["enabled"],
                saved["backlog_limit"],
            )
            return dataclasses.replace(
                found, enabled=int(saved["enabled"]), backlog_limit=int(saved["backlog_limit"])
            )
        self._baseline.write_text(
            json.dumps({"enabled": found.enabled, "backlog_limit": found.backlog_limit})
        )
        return found

    @staticmethod
    def _remove_stale_rules(control: netlink.AuditSocket) -> None:
        # Rules keyed "vigil" or "vigil_*" (and the PROCTITLE exclusion) belong to the hub by
        # contract; any loaded now were
        # left by an agent that died without stopping, and would double every event.
        for data in control.list_rules():
            rule = rules.AuditRule.unpack(data)
            if rules.is_vigil_rule(rule):
                log.warning("removing an audit rule (key %r) left by an earlier run", rule.key)
                control.delete_rule(data)

    def detach(self, name: str) -> list[str]:
        """Unload ``name``'s rules; the last detach stops audit and restores every setting.

        Returns:
            What could not be restored (empty when all went well).
        """
        with self._lock:
            if self._subs.pop(name, None) is None:
                return []
            last = not self._subs
            self._rebuild_routes()
        if not last:
            return self._delete_rules(name)
        # Stop generating records first, then drain what the kernel still holds, then let go.
        problems = self._restore(generation_only=True)
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = []
        return problems + self._restore()

    def _restore(self, generation_only: bool = False) -> list[str]:
        """Undo recorded changes, newest first; returns what could not be undone.

        With ``generation_only`` only audit generation is undone (enabled flag, rules), so the
        receive thread can drain what the kernel still holds before the pid is released.
        """
        changes, control = self._changes, self._control
        previous = changes.previous
        if control is None or previous is None:
            if not generation_only:
                self._close_sockets()
            return []
        problems: list[str] = []
        if changes.enabled_changed:
            problems += self._try(
                f"enabled={previous.enabled}",
                lambda: control.set_status(netlink.AUDIT_STATUS_ENABLED, enabled=previous.enabled),
            )
        changes.enabled_changed = False
        for name in list(changes.rules):
            problems += self._delete_rules(name)
        if generation_only:
            return problems
        if changes.pid_registered:
            problems += self._try(
                "pid=0", lambda: control.set_status(netlink.AUDIT_STATUS_PID, pid=0)
            )
        if changes.backlog_changed:
            problems += self._try(
                f"backlog_limit={previous.backlog_limit}",
                lambda: control.set_status(
                    netlink.AUDIT_STATUS_BACKLOG_LIMIT, backlog_limit=previous.backlog_limit
                ),
            )
        changes.pid_registered = changes.backlog_changed = False
        self._close_sockets()
        if not problems and self._baseline is not None:
            self._baseline.unlink(missing_ok=True)
        return problems

    def _try(self, what: str, step: Callable[[], None]) -> list[str]:
        try:
            with self._control_lock:
                step()
        except (OSError, AgentError) as exc:
            log.warning("could not restore audit %s: %s", what, exc)
            return [f"{what}: {exc}"]
        return []

    def _close_sockets(self) -> None:
        with self._control_lock:
            for sock in (self._events, self._control):
                if sock is not None:
                    sock.close()
            self._events = self._control = None

    # --- receive thread -------------------------------------------------------------------

    def _receive_loop(self) -> None:
        assert self._events is not None
        sock = self._events
        sock.sock.settimeout(RECV_WAIT)
        waiting = RECV_WAIT
        reassembler = Reassembler()
        next_status = next_expire = time.monotonic()
        # Closed events wait here up to DISPATCH_DELAY (or until RECV_BATCH of them): waking
        # the dispatch thread for each event costs more than handling it.
        pending: list[AuditEvent] = []
        dispatch_at = 0.0
        try:
            while not self._stop.is_set():
                try:
                    messages = sock.receive_many(RECV_BATCH)
                except TimeoutError:
                    messages = []
                except OSError as exc:
                    if not netlink.is_enobufs(exc):
                        raise
                    self._count("overflows")
                    log.warning("audit netlink socket overflowed; records were lost")
                    messages = []
                now = time.monotonic()
                if messages:
                    done: list[AuditEvent] = []
                    taken = 0
                    for message in messages:
                        taken += self._take(message, reassembler, done)
                    if taken:
                        self._count("records", taken)
                    if done:
                        if not pending:
                            dispatch_at = now + DISPATCH_DELAY
                        pending += done
                if pending and (len(pending) >= RECV_BATCH or now >= dispatch_at):
                    self._enqueue(pending)
                    pending = []
                wait = DISPATCH_DELAY if pending else RECV_WAIT
                if wait != waiting:
                    sock.sock.settimeout(wait)
                    waiting = wait
                if now >= next_expire:
                    next_expire = now + 0.5
                    expired = reassembler.expire()
                    if expired:
                        self._enqueue(pending + expired)  # keep the order events closed in
                        pending = []
                if now >= next_status:
                    next_status = now + STATUS_INTERVAL
                    self._poll_status()
            rest, pending = pending + reassembler.flush(), []
            if rest:
                self._enqueue(rest)
        except Exception as exc:
            log.warning("kernel audit receive thread failed: %s", exc)
            log.debug("receive thread traceback", exc_info=True)
            self.failure = f"receiving audit records failed: {exc}; restart the audit sensors"
        finally:
            if pending:
                self._enqueue(pending)
            self._queue.put(None)

    def _take(
        self, message: netlink.NetlinkMessage, reassembler: Reassembler, done: list[AuditEvent]
    ) -> int:
        """Parse one message into ``reassembler``, adding closed events to ``done``.

        Returns:
            1 when the message was an audit record, else 0 (for the ``records`` counter).
        """
        if message.type < netlink.FIRST_RECORD_TYPE or message.type == netlink.AUDIT_REPLACE:
            return 0
        try:
            record = parse_record(message.type, message.payload.decode("utf-8", "surrogateescape"))
        except RecordParseError as exc:
            self._count("parse_errors")
            log.warning("skipping audit record: %s", exc)
            return 1
        event, closed = reassembler.add(record)
        if record.type == AUDIT_SYSCALL:
            self._annotate(event, record)
        if closed:
            done.extend(closed)
        return 1

    def _annotate(self, event: AuditEvent, record: AuditRecord) -> None:
        # Read /proc now: a short-lived process may be gone by the time the event is handled.
        # The parent's start ticks are read by the hook of the sensors that use them (execs):
        # one /proc read less for every other syscall.
        pid = record.fields.get("pid", "")
        if pid.isdigit():
            stat = read_stat(int(pid))
            annotations = event.annotations
            annotations["pid_stat"] = stat
            annotations["pid_ticks"] = None if stat is None else stat.start_ticks
        sub = self._route(record)
        if sub is not None and sub.on_syscall is not None:
            try:
                sub.on_syscall(event, record)
            except Exception:
                self._count("hook_errors")
                log.debug("%s on_syscall hook failed", sub.name, exc_info=True)

    def _route(self, record: AuditRecord) -> Subscription | None:
        fields = record.fields
        try:
            key = (int(fields["arch"], 16), int(fields["syscall"]))
        except (KeyError, ValueError):
            return None
        return self._routes.get(key)

    def _enqueue(self, events: list[AuditEvent]) -> None:
        with self._lock:
            room = QUEUE_LIMIT - self._pending
            if room < len(events):
                dropped = len(events) - max(room, 0)
                self._counters["dropped"] = self._counters.get("dropped", 0) + dropped
                events = events[: max(room, 0)]
            self._pending += len(events)
        if events:
            self._queue.put(events)

    def _poll_status(self) -> None:
        with self._control_lock:
            if self._control is None:
                return
            try:
                status = self._control.get_status()
            except AgentError as exc:
                self._count("status_errors")
                log.debug("audit status poll failed: %s", exc)
                return
        with self._lock:
            self._counters["lost"] = status.lost - self._lost_base
            self._counters["backlog"] = status.backlog

    # --- dispatch thread --------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            with self._lock:
                self._pending -= len(batch)
                subs = list(self._subs.values())
            taps = [sub for sub in subs if sub.tap is not None]
            for event in batch:
                for sub in taps:
                    assert sub.tap is not None
                    self._call(sub, sub.tap, event, "tap_errors")
                owner = self._owner(event)
                if owner is not None:
                    self._call(owner, owner.handle, event, "handler_errors")

    def _owner(self, event: AuditEvent) -> Subscription | None:
        """The subscriber of an event: by syscall (key ``vigil``), by key, or by record type."""
        syscall = event.first(AUDIT_SYSCALL)
        if syscall is None:
            kind = event.records[0].type if event.records else None
            return None if kind is None else self._type_routes.get(kind)
        try:
            key = value_text(syscall.fields.get("key"))
        except RecordParseError:
            return None
        if key is None or not rules.is_vigil_key(key):
            return None
        first = key.split(rules.KEY_SEPARATOR, 1)[0]
        if first == rules.RULE_KEY:
            return self._route(syscall)
        return self._key_routes.get(first)

    def _call(self, sub: Subscription, handler: EventHandler, event: AuditEvent, what: str) -> None:
        try:
            handler(event)
        except (RecordParseError, KeyError, ValueError) as exc:
            self._count("parse_errors")
            log.warning("%s skipped audit event %s: %s", sub.name, event.event_id, exc)
            log.debug("audit event %s records: %s", event.event_id, event.records)
        except Exception:
            self._count(what)
            log.warning("%s failed on audit event %s", sub.name, event.event_id)
            log.debug("handler traceback", exc_info=True)


# The file, in the agent's state folder, that keeps the audit settings found at start.
AUDIT_BASELINE = "audit-baseline.json"

HUB = AuditHub()
"""The agent's audit hub; sensors attach to it rather than opening audit themselves."""
