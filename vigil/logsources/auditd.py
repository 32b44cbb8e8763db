"""Raw Linux audit logs (``/var/log/audit/audit.log``) as events for Sigma's auditd rules.

Sigma's ``product: linux, service: auditd`` rules are written against single audit records, so
each record becomes one flat event with its own fields by their audit names. Records are first
grouped into their audit event by ``msg=audit(<time>:<serial>)`` (with
:mod:`vigil.agent.audit.reassembly`, the agent's own reassembler); the events are then built by
:func:`vigil.agent.audit.record_view.record_events`, the same code the live ``audit_records``
sensor uses, so a rule sees the same event offline and live. See that module for the fields.

Enriched logs (``log_format = ENRICHED``) carry ``SYSCALL=<name>``; for raw logs the name is
looked up in the agent's table of syscall numbers, which covers the syscalls the agent audits
(exec, fork, id changes, sockets, mknod, personality, memfd_create, module loading, syslog,
sysinfo) on x86_64, i386, aarch64 and arm. Other syscalls of a raw log have no ``SYSCALL``.

References:
    Linux ``kernel/audit.c`` and ``kernel/auditsc.c``; auditd ``audit.log`` format;
    Sigma ``rules/linux/auditd``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

from vigil.agent.audit.reassembly import AuditEvent, Reassembler
from vigil.agent.audit.record_view import record_events
from vigil.agent.audit.records import (
    AuditRecord,
    RecordParseError,
    parse_log_line,
    parse_record,
)
from vigil.agent.audit.rules import all_syscall_names
from vigil.logsources.base import Event, Reader, first_line
from vigil.logsources.errors import CorruptFile

logger = logging.getLogger(__name__)

_LINE = re.compile(r"^(?:node=\S+ )?type=(?P<name>\w+(?:\[\d+\])?) msg=audit\(\d+\.\d+:\d+\)")
_NODE = re.compile(r"^node=(\S+) ")
# Open audit events kept while reading; records of one event are close together in a file.
_MAX_OPEN = 4096
_SYSCALL_NAMES = all_syscall_names()


class AuditdReader(Reader):
    """Raw ``audit.log`` files (one ``type=... msg=audit(...)`` record per line)."""

    name = "auditd"
    reads = "Linux audit logs (audit.log): one event per record, for Sigma auditd rules"
    priority = 40

    @classmethod
    def detect(cls, path: Path) -> bool:
        """The first line is an audit record: ``type=NAME msg=audit(time:serial)``."""
        return _LINE.match(first_line(path)) is not None

    def read(self, path: Path) -> Iterator[Event]:
        """Yield one flat event per audit record, grouped and annotated by audit event.

        Raises:
            CorruptFile: The file cannot be opened.
        """
        shown = str(path)
        reassembler = Reassembler(max_age=float("inf"), max_open=_MAX_OPEN, clock=lambda: 0.0)
        names: dict[int, str] = {}
        nodes: dict[tuple[int, int, int], str] = {}
        try:
            handle = path.open(encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            raise CorruptFile(f"{path}: cannot be opened ({exc}); check permissions") from exc
        with handle:
            for number, line in enumerate(handle, start=1):
                line = line.rstrip("\n")
                if not line:
                    continue
                self.records += 1
                record = self._parse(path, number, line, names)
                if record is None:
                    continue
                node = _NODE.match(line)
                if node is not None:
                    nodes[record.event_id] = node.group(1)
                _event, closed = reassembler.add(record)
                for audit_event in closed:
                    yield from self._events(path, shown, audit_event, names, nodes)
        for audit_event in reassembler.flush():
            yield from self._events(path, shown, audit_event, names, nodes)

    def _parse(
        self, path: Path, number: int, line: str, names: dict[int, str]
    ) -> AuditRecord | None:
        match = _LINE.match(line)
        if match is None:
            self.warn(path, "not_audit_record", f"line {number}: {line[:80]!r}")
            return None
        body = line[match.start("name") - len("type=") :]
        try:
            record = parse_log_line(body)
        except RecordParseError:
            # A record type the agent's parser has no number for (USER_CMD, CRED_ACQ...):
            # read its fields all the same and remember its name.
            try:
                record = parse_record(0, body[body.index("msg=") + 4 :])
            except RecordParseError as exc:
                self.warn(path, "audit_record", f"line {number}: {exc}")
                return None
        names[id(record)] = match.group("name")
        return record

    def _events(
        self,
        path: Path,
        shown: str,
        audit_event: AuditEvent,
        names: dict[int, str],
        nodes: dict[tuple[int, int, int], str],
    ) -> Iterator[Event]:
        node = nodes.pop(audit_event.event_id, None)
        events = record_events(
            audit_event,
            type_name=lambda record: names.pop(id(record), record.type_name),
            syscall_names=_SYSCALL_NAMES,
            warn=lambda kind, message: self.warn(path, kind, message),
        )
        for event in events:
            event["log.file.path"] = shown
            if node is not None:
                event["host.name"] = node
            yield event
