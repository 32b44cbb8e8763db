"""Process start, end, lineage and privilege changes from the kernel audit subsystem.

The sensor attaches to the agent's audit hub (:mod:`vigil.agent.audit.hub`, shared with
``network_audit``) with exit rules for execve, execveat and exit_group, for fork, vfork, clone
and clone3 (threads excluded), and for the set*uid, set*gid and capset calls. The first audit
sensor to start raises the backlog limit to a bounded value, enables audit and registers the
agent as the audit daemon; the last one to stop restores exactly what was changed.

Exec events carry argv, executable, working directory, hash, users, the parent by entity id,
the session leader, the controlling terminal and the container. A fork is not emitted: it adds
the child to the shared process table (linked to its parent), so a process that forks without
exec has a lineage entry for whatever it does next. A set*id or capset call that changes the
process's ids or capabilities is emitted as a ``change``; one that changes nothing is dropped.

The agent's own threads never exec, so recording every exec on the host, the agent's children
included, cannot feed back into itself.

Options (``SensorContext.options``):
    audit_backlog_limit: kernel backlog limit while running (64-65536, default 8192).
    audit_rcvbuf: netlink receive buffer in bytes (default 8 MiB).
    on_audit_event: callable given every reassembled :class:`AuditEvent`, for sensors that
        want raw audit records; it runs on the hub's dispatch thread and must be quick.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from vigil.agent.audit import privilege, rules
from vigil.agent.audit.hub import (
    HUB,
    Subscription,
    audit_options,
    event_unique,
)
from vigil.agent.audit.reassembly import AuditEvent
from vigil.agent.audit.records import (
    AUDIT_CAPSET,
    AUDIT_CWD,
    AUDIT_EXECVE,
    AUDIT_PROCTITLE,
    AUDIT_SYSCALL,
    AuditRecord,
    execve_args,
    proctitle_args,
    value_text,
)
from vigil.agent.audit.sensor import AuditSensor
from vigil.agent.errors import AgentError
from vigil.agent.processes import (
    Creds,
    ExecutableHasher,
    ProcessInstance,
    ProcessTable,
    ProcStat,
    audit_users,
    boot_time,
    container_fields,
    context_fields,
    epoch_to_ticks,
    event_base,
    parent_fields,
    process_fields,
    read_cgroup,
    read_stat,
    ticks_to_epoch,
    user_fields,
)
from vigil.agent.sensors.base import SensorContext
from vigil.schema.ecs import iso

log = logging.getLogger(__name__)

PRUNE_INTERVAL = 60.0
EXEC_CALLS = ("execve", "execveat")
PRIVILEGE_CALLS = (*rules.UID_CALLS, *rules.GID_CALLS, "capset")
COUNTERS = ("events", "forks", "fork_unlinked", "id_unchanged", "id_before_unknown")

AuditCallback = Callable[[AuditEvent], None]


class ProcessAuditSensor(AuditSensor):
    """Emits ``process`` start (exec), end (exit) and change (uid, gid, capabilities) events.

    Exec events carry the exact argv, executable, working directory, SHA-256 of the
    executable, users, the parent linked by entity id, session leader, tty and container; exit
    events carry the exit code; change events the ids or capabilities after and before.
    """

    name = "process_audit"
    supported_os = ("linux",)
    requires_root = True
    version = "2"

    def __init__(self, context: SensorContext) -> None:
        super().__init__(context)
        self._hasher = ExecutableHasher()
        self._table: ProcessTable | None = None
        self._boot = boot_time()
        self._names: dict[int, dict[int, str]] = {}
        self._next_prune = 0.0

    def start(self) -> None:
        """Scan ``/proc`` and attach to the audit hub with the process rules.

        Raises:
            AgentError: An option is invalid or the kernel refused a change; every change
                already made has been undone.
        """
        options = self.context.options
        try:
            backlog, rcvbuf = audit_options(self.name, options)
            callback = options.get("on_audit_event")
            if callback is not None and not callable(callback):
                raise AgentError(
                    "process_audit option on_audit_event must be a callable taking an AuditEvent"
                )
        except AgentError as exc:
            self.set_state("failed", str(exc))
            raise
        self._names = rules.syscall_names()
        for counter in COUNTERS:
            self.count(counter, 0)

        if self.context.processes is None:
            self.context.processes = ProcessTable(self.context.agent_id)
        self._table = self.context.processes
        self._table.scan()
        self._next_prune = time.monotonic() + PRUNE_INTERVAL

        calls = (*EXEC_CALLS, "exit_group", *rules.FORK_CALLS, *PRIVILEGE_CALLS)
        subscription = Subscription(
            name=self.name,
            rules=[
                *rules.process_rules(),
                *rules.lineage_rules(),
                *rules.privilege_rules(),
                rules.proctitle_exclusion(),
            ],
            syscalls={a.audit_arch: a.of(*calls) for a in rules.arches_for()},
            handle=self._handle,
            on_syscall=self._read_proc,
            tap=callback,
        )
        self.attach(subscription, backlog, rcvbuf)
        self.set_state("running", f"kernel audit, backlog limit {HUB.backlog_limit}")
        log.info(
            "process_audit running: %d audit rules loaded, backlog limit %d",
            len(subscription.rules),
            HUB.backlog_limit,
        )

    def _call(self, syscall: AuditRecord) -> str | None:
        fields = syscall.fields
        return self._names.get(int(fields["arch"], 16), {}).get(int(fields["syscall"]))

    # --- receive thread -------------------------------------------------------------------

    def _read_proc(self, event: AuditEvent, syscall: AuditRecord) -> None:
        """Read what is gone soon: the forked child's stat; the exec'd process's parent's
        start ticks and its cgroup."""
        call = self._call(syscall)
        pid = syscall.fields.get("pid", "")
        if call in rules.FORK_CALLS:
            child = int(syscall.fields.get("exit", "0"))
            if child > 0:
                event.annotations["child_stat"] = read_stat(child)
        elif call in EXEC_CALLS:
            ppid = syscall.fields.get("ppid", "")
            if ppid.isdigit():
                stat = read_stat(int(ppid))
                event.annotations["ppid_ticks"] = None if stat is None else stat.start_ticks
            if pid.isdigit():
                event.annotations["cgroup"] = read_cgroup(int(pid))

    # --- dispatch thread --------------------------------------------------------------------

    def _handle(self, event: AuditEvent) -> None:
        syscall = event.first(AUDIT_SYSCALL)
        assert syscall is not None and self._table is not None
        call = self._call(syscall)
        fields = syscall.fields
        document: dict[str, Any] | None = None
        if call in EXEC_CALLS:
            if fields.get("success") == "no":
                self.count("exec_failed")
                return
            document = self._exec_document(event, fields)
        elif call == "exit_group":
            document = self._exit_document(event, fields)
        elif call in rules.FORK_CALLS:
            self._fork(event, fields)
        elif call in PRIVILEGE_CALLS:
            document = self._privilege_document(event, call, fields)
        if document is not None:
            self.context.emit(document)
            self.count("events")
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_INTERVAL
            self._table.prune()

    def _fork(self, event: AuditEvent, fields: dict[str, str]) -> None:
        assert self._table is not None
        self.count("forks")
        child = event.annotations.get("child_stat")
        parent = self._table.resolve(int(fields["pid"]), self._start_ticks(event, "pid_ticks"))
        if parent is None or not isinstance(child, ProcStat):
            self.count("fork_unlinked")  # the child or the parent was gone when read
            return
        if self._table.fork(parent, child) is None and child.ppid != parent.pid:
            # A thread (clone3 cannot be filtered in the kernel) or a reused pid.
            self.count("fork_unlinked")

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
        stat = event.annotations.get("pid_stat")
        stat = stat if isinstance(stat, ProcStat) and stat.start_ticks == ticks else None
        cgroup = event.annotations.get("cgroup")
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
            creds=Creds.from_audit(fields),
            session=stat.session if stat else None,
            tty_nr=stat.tty_nr if stat else 0,
            cgroup=cgroup if isinstance(cgroup, str) else None,
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
            **context_fields(self._table, instance),
        }
        digest = self._hasher.sha256(executable, pid)
        if digest:
            process["hash"] = {"sha256": digest}
        user = user_fields(fields.get("uid"))
        if user:
            process["user"] = user
        document = self._base(event, "start", "exec")
        document["process"] = process
        document["user"] = audit_users(fields)
        container = container_fields(instance)
        if container:
            document["container"] = container
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
        document["user"] = audit_users(fields)
        return document

    def _privilege_document(
        self, event: AuditEvent, call: str, fields: dict[str, str]
    ) -> dict[str, Any] | None:
        assert self._table is not None
        pid = int(fields["pid"])
        ticks = self._start_ticks(event, "pid_ticks")
        known = self._table.get(pid)
        if known is not None and ticks is not None and known.start_ticks != ticks:
            known = None  # an earlier process that held the pid
        changed: dict[str, Any]
        if call == "capset":
            record = event.first(AUDIT_CAPSET)
            after = privilege.caps_from_record(record.fields) if record is not None else None
            before = known.caps if known is not None else None
            if after is None or after == before:
                self.count("id_unchanged")
                return None
            action = privilege.CAPABILITIES_CHANGE
            changed = privilege.caps_fields(after, before)
            if known is not None:
                self._table.update(pid, known.start_ticks, caps=after)
        else:
            change = privilege.id_change(call, fields, known.creds if known else None)
            if change is None:
                self.count("id_unchanged")
                return None
            if change.before is None:
                self.count("id_before_unknown")
            action = change.action
            changed = privilege.id_fields(change)
            if known is not None:
                self._table.update(pid, known.start_ticks, creds=change.after)

        process = process_fields(self._table, pid, ticks, fields)
        previous = changed.pop("previous", None)
        process.update(changed)
        if previous is not None:
            process["previous"] = previous
        document = self._base(event, "change", action)
        document["event"]["outcome"] = "success"
        document["process"] = process
        document["user"] = audit_users(fields)
        return document

    def _base(self, event: AuditEvent, event_type: str, action: str) -> dict[str, Any]:
        return event_base(self.context, event.timestamp, event_type, action, event_unique(event))
