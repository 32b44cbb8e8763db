"""Raw kernel audit records for Sigma's auditd rules: file watches, single syscalls, user messages.

SigmaHQ's ``service: auditd`` rules look at single audit records (``type: PATH`` with ``name``,
``type: SYSCALL`` with ``SYSCALL``, ``exe``, ``comm``, ``key``, ``type: SERVICE_STOP`` with
``unit``...). This sensor attaches to the agent's audit hub (shared with ``process_audit`` and
``network_audit``) with the rules those records need, and emits every record of every audit event
its rules produce as one event, in the shape the offline ``audit.log`` reader gives
(:mod:`vigil.agent.audit.record_view`, the same code), with ``event.module: auditd``: the server
runs the auditd rules on them unchanged.

What it asks the kernel for:

- File watches, as ``auditctl -w PATH -p PERM`` loads them, keyed ``vigil_watch``: the files
  and folders SigmaHQ's PATH rules name (:mod:`vigil.agent.audit.watches`), for writes and
  attribute changes (``wa``), and for reads (``r``) of the files that system discovery reads. A
  folder is watched with everything under it. A file that does not exist is watched when its
  folder exists: the kernel arms the watch when the file is created, and creating
  ``/etc/ld.so.preload`` or a BPFDoor pid file is the very thing to see. Symbolic links are
  resolved first (a watch is on an inode); the records name the path the program used.
- Syscall rules keyed ``vigil_syscall`` for :data:`DEFAULT_SYSCALLS` (``syslog`` only for the
  actions that clear the kernel log or silence the console); ``sysinfo`` and ``delete_module``
  can be asked for (``sysinfo`` is called all the time by ordinary programs).
- No rule for messages from user space: the kernel relays them to the audit daemon anyway. The
  types in :data:`DEFAULT_USER_RECORDS` are emitted.

Neither watches nor syscall rules record execs (the process sensor does): ``x`` is refused as a
watch permission and exec syscalls cannot be asked for. A burst of identical events (the same
program, syscall and paths) is cut after ``repeat_limit`` a minute and counted as ``suppressed``.

Options (``SensorContext.options``):
    watches: replaces the default watches; a list of paths (``wa``), or of mappings
        ``{path: ..., perm: r|w|a...}``. A path may hold ``*``; one ending in ``/`` must be an
        existing folder.
    extra_watches: the same, added to the watches.
    syscalls: replaces :data:`DEFAULT_SYSCALLS` (names from
        :data:`vigil.agent.audit.rules.SINGLE_CALLS`).
    user_records: replaces :data:`DEFAULT_USER_RECORDS` (``[]`` for none).
    max_watches: most watch rules loaded (1-4096, default 256); the rest are counted.
    repeat_limit: identical events kept per minute (0 keeps all; default 20).
    audit_backlog_limit, audit_rcvbuf: as for ``process_audit``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from vigil.agent.audit import rules
from vigil.agent.audit.hub import (
    Subscription,
    audit_options,
    event_unique,
    int_option,
)
from vigil.agent.audit.netlink import AuditNetlinkError
from vigil.agent.audit.reassembly import AuditEvent
from vigil.agent.audit.record_view import record_events
from vigil.agent.audit.records import AUDIT_PATH, AUDIT_SYSCALL, RECORD_TYPES, value_text
from vigil.agent.audit.sensor import AuditSensor
from vigil.agent.audit.watches import DEFAULT_WATCHES, WatchTarget, parse_watches, resolve
from vigil.agent.errors import AgentError
from vigil.agent.processes import ProcessTable, process_fields
from vigil.agent.sensors.base import SensorContext

log = logging.getLogger(__name__)

WATCH_KEY = "vigil_watch"
SYSCALL_KEY = "vigil_syscall"
COUNTERS = (
    "events",
    "watch_events",
    "syscall_events",
    "user_records",
    "suppressed",
    "watches",
    "watches_skipped",
    "watches_refused",
    "syscall_rules",
)


# lnx_auditd_susp_special_file_creation_via_mknod_syscall (mknod; mknodat for what libc calls),
# lnx_auditd_disable_aslr_protection, lnx_auditd_audio_capture, lnx_auditd_load_module_insmod,
# lnx_auditd_clean_disable_dmesg_logs_via_syslog.
DEFAULT_SYSCALLS = (
    "mknod",
    "mknodat",
    "personality",
    "memfd_create",
    "init_module",
    "finit_module",
    "syslog",
)
# lnx_auditd_create_account (ADD_USER), lnx_auditd_disable_system_firewall (SERVICE_STOP),
# lnx_auditd_keylogging_with_pam_d (TTY, USER_TTY).
DEFAULT_USER_RECORDS = (
    "ADD_USER",
    "DEL_USER",
    "ADD_GROUP",
    "DEL_GROUP",
    "SERVICE_START",
    "SERVICE_STOP",
    "USER_TTY",
    "TTY",
)
DEFAULT_MAX_WATCHES = 256
DEFAULT_REPEAT_LIMIT = 20
REPEAT_WINDOW = 60.0


def _names(sensor: str, name: str, value: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise AgentError(f"{sensor} option {name} takes a list of names from {', '.join(allowed)}")
    unknown = [item for item in value if item not in allowed]
    if unknown:
        raise AgentError(
            f"{sensor} option {name}: {', '.join(unknown)} not known; use some of "
            f"{', '.join(allowed)}"
        )
    return tuple(dict.fromkeys(value))


class RepeatLimiter:
    """Keeps at most ``limit`` events of one signature per ``window`` seconds.

    Memory is bounded: the table is emptied when it holds ``max_keys`` signatures.
    """

    def __init__(self, limit: int, window: float = REPEAT_WINDOW, max_keys: int = 4096) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._seen: dict[tuple[str, ...], tuple[float, int]] = {}

    def allow(self, signature: tuple[str, ...], now: float | None = None) -> bool:
        """Whether an event of ``signature`` is kept (and count it)."""
        if self.limit <= 0:
            return True
        now = time.monotonic() if now is None else now
        start, count = self._seen.get(signature, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        if len(self._seen) >= self.max_keys and signature not in self._seen:
            self._seen.clear()
        self._seen[signature] = (start, count + 1)
        return count < self.limit


def _signature(event: AuditEvent, syscall_fields: dict[str, str]) -> tuple[str, ...]:
    names = tuple(record.fields.get("name", "") for record in event.all(AUDIT_PATH))
    return (
        syscall_fields.get("exe", ""),
        syscall_fields.get("syscall", ""),
        syscall_fields.get("key", ""),
        *names,
    )


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A nested document from flat fields; a raw audit field named like an ECS namespace
    (``process``) is kept under ``auditd.fields`` instead of clashing with it."""
    doc: dict[str, Any] = {}
    dotted = []
    for name, value in flat.items():
        if "." in name:
            dotted.append((name.split("."), value))
        else:
            doc[name] = value  # most fields: the record's own, by their audit names
    clashes = [parts[0] for parts, _ in dotted if parts[0] in doc]
    for name in clashes:
        if not isinstance(doc[name], dict):
            dotted.append((["auditd", "fields", name], doc.pop(name)))
    for parts, value in dotted:
        node = doc
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return doc


class AuditRecordsSensor(AuditSensor):
    """Emits each raw audit record of watched files, chosen syscalls and user-space messages.

    Events have ``event.module: auditd`` and the record's own fields (``type``, ``name``,
    ``SYSCALL``, ``exe``, ``comm``, ``key``, ``a0``...), as the offline auditd reader gives them,
    plus the host, the agent and ``process.entity_id`` when the process table knows the process.
    """

    name = "audit_records"
    supported_os = ("linux",)
    requires_root = True
    version = "1"
    shed_order = 40

    def __init__(self, context: SensorContext) -> None:
        super().__init__(context)
        self._names: dict[int, dict[int, str]] = {}
        self._table: ProcessTable | None = None
        self._limiter = RepeatLimiter(DEFAULT_REPEAT_LIMIT)
        self._user_types: tuple[str, ...] = ()
        self.targets: list[WatchTarget] = []
        self.skipped: list[str] = []

    def start(self) -> None:
        """Resolve the watches and attach to the audit hub with the watch and syscall rules.

        Raises:
            AgentError: An option is invalid or the kernel refused a change; every change made
                has been undone.
        """
        try:
            subscription = self._subscription()
            backlog, rcvbuf = audit_options(self.name, self.context.options)
        except AgentError as exc:
            self.set_state("failed", str(exc))
            raise
        self._table = self.context.processes
        self.attach(subscription, backlog, rcvbuf)
        watches = self.counters.get("watches", 0)
        message = (
            f"kernel audit: {watches} file watches, {self.counters['syscall_rules']} syscall "
            f"rules, user records {', '.join(self._user_types) or 'none'}"
        )
        if self.skipped:
            message += f"; nothing to watch at {len(self.skipped)} paths"
        self.set_state("running", message)
        log.info("audit_records running: %s", message)

    def _subscription(self) -> Subscription:
        options = self.context.options
        watches = list(DEFAULT_WATCHES)
        if "watches" in options:
            watches = parse_watches(self.name, "watches", options["watches"])
        watches += parse_watches(self.name, "extra_watches", options.get("extra_watches", []))
        calls = _names(
            self.name, "syscalls", options.get("syscalls", list(DEFAULT_SYSCALLS)),
            rules.SINGLE_CALLS,
        )  # fmt: skip
        self._user_types = _names(
            self.name, "user_records", options.get("user_records", list(DEFAULT_USER_RECORDS)),
            DEFAULT_USER_RECORDS,
        )  # fmt: skip
        limit = int_option(self.name, options, "max_watches", DEFAULT_MAX_WATCHES, (1, 4096))
        repeats = int_option(self.name, options, "repeat_limit", DEFAULT_REPEAT_LIMIT, (0, 10**6))
        self._limiter = RepeatLimiter(repeats)
        try:
            self.targets, self.skipped, over = resolve(watches, limit)
            syscall_rules = rules.single_call_rules(calls, SYSCALL_KEY) if calls else []
        except ValueError as exc:
            raise AgentError(f"{self.name}: {exc}") from None
        if over:
            log.warning("audit_records: %d watches over max_watches=%d are not loaded", over, limit)
        for counter in COUNTERS:
            self.count(counter, 0)
        self.count("watches", len(self.targets))
        self.count("watches_skipped", len(self.skipped) + over)
        self.count("syscall_rules", len(syscall_rules))
        self._names = rules.syscall_names()
        watch_rules = [
            rules.watch_rule(target.path, target.perm, WATCH_KEY, target.directory)
            for target in self.targets
        ]
        return Subscription(
            name=self.name,
            rules=watch_rules + syscall_rules,
            syscalls={},
            handle=self._handle,
            keys=frozenset({WATCH_KEY, SYSCALL_KEY}),
            record_types=frozenset(RECORD_TYPES[name] for name in self._user_types),
            on_refused=self._refused,
        )

    def _refused(self, rule: rules.AuditRule, exc: AuditNetlinkError) -> None:
        kinds = (rules.AUDIT_WATCH, rules.AUDIT_DIR)
        path = next((value for field, _op, value in rule.fields if field in kinds), None)
        if path is None:
            raise exc  # a syscall rule: the kernel should know every one of them
        self.count("watches_refused")
        self.count("watches", -1)
        log.warning("audit_records cannot watch %s: %s", path, exc)

    # --- dispatch thread --------------------------------------------------------------------

    def _handle(self, event: AuditEvent) -> None:
        syscall = event.first(AUDIT_SYSCALL)
        if syscall is None:
            kind = "user_records"
        else:
            key = value_text(syscall.fields.get("key")) or ""
            kind = "watch_events" if key.startswith(WATCH_KEY) else "syscall_events"
            if not self._limiter.allow(_signature(event, syscall.fields)):
                self.count("suppressed")
                return
        flats = record_events(event, syscall_names=self._names, warn=self._warn)
        live = self._live_fields(event, syscall.fields if syscall is not None else None)
        unique = f"{self.context.agent_id}:{event_unique(event)}"
        for index, flat in enumerate(flats):
            flat.update(live)
            flat["event.id"] = hashlib.sha256(f"{unique}:{index}".encode()).hexdigest()[:32]
            self.context.emit(nest(flat))
        self.count("events", len(flats))
        self.count(kind)

    def _live_fields(self, event: AuditEvent, syscall: dict[str, str] | None) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "host.id": self.context.host_id,
            "host.name": self.context.host_name,
            "agent.id": self.context.agent_id,
        }
        pid = syscall.get("pid", "") if syscall is not None else ""
        if self._table is None or not pid.isdigit():
            return fields
        ticks = event.annotations.get("pid_ticks")
        process = process_fields(
            self._table, int(pid), ticks if isinstance(ticks, int) else None, syscall or {}
        )
        if "entity_id" in process:
            fields["process.entity_id"] = process["entity_id"]
        parent = process.get("parent", {}).get("entity_id")
        if parent:
            fields["process.parent.entity_id"] = parent
        return fields

    def _warn(self, kind: str, message: str) -> None:
        self.count(f"{kind}_errors")
        log.warning("audit_records: %s", message)
