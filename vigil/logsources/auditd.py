"""Raw Linux audit logs (``/var/log/audit/audit.log``) as events for Sigma's auditd rules.

Sigma's ``product: linux, service: auditd`` rules are written against single audit records:
``type: EXECVE`` with ``a0``, ``a1``...; ``type: SYSCALL`` with ``exe``, ``comm``, ``key``,
``SYSCALL``; ``type: PATH`` with ``name``. So each record becomes one event carrying its own
fields by their audit names, with string values decoded (quoted or hex, as the kernel writes
them) and EXECVE arguments as whole strings (``a1[0]``, ``a1[1]``... joined into ``a1``).

Records are first grouped into their audit event by ``msg=audit(<time>:<serial>)`` (with
:mod:`vigil.agent.audit.reassembly`, the agent's own reassembler), so every record's event also
carries what the whole event knows: time, ``process.*`` from SYSCALL/EXECVE/CWD, ``user.*``.
The EXECVE record of a successful exec is also a ``process``/``start`` event, so Sigma's Linux
``process_creation`` rules see audit-logged execs too.

Enriched logs (``log_format = ENRICHED``) append interpreted fields after a ``0x1d`` byte
(``SYSCALL=execve AUID="alice"``); those upper-case fields are kept as well.

References:
    Linux ``kernel/audit.c`` and ``kernel/auditsc.c``; auditd ``audit.log`` format;
    Sigma ``rules/linux/auditd``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vigil.agent.audit.reassembly import AuditEvent, Reassembler
from vigil.agent.audit.records import (
    AUDIT_CWD,
    AUDIT_EXECVE,
    AUDIT_PROCTITLE,
    AUDIT_SYSCALL,
    AuditRecord,
    RecordParseError,
    execve_args,
    parse_log_line,
    parse_record,
    proctitle_args,
    value_text,
)
from vigil.logsources.base import Event, Reader, first_line
from vigil.logsources.errors import CorruptFile
from vigil.schema.ecs import iso_epoch

logger = logging.getLogger(__name__)

_LINE = re.compile(r"^(?:node=\S+ )?type=(?P<name>\w+(?:\[\d+\])?) msg=audit\(\d+\.\d+:\d+\)")
_NODE = re.compile(r"^node=(\S+) ")
_ENRICHED = re.compile(r"""([A-Z][A-Z0-9_]*)=("[^"]*"|\S*)""")
# Fields the kernel writes as untrusted strings: quoted text, or hex when they have spaces,
# quotes or control characters (audit_log_untrustedstring). Other bare values are numbers.
_STRING_FIELDS = frozenset(
    ("name", "exe", "comm", "cwd", "proctitle", "key", "cmd", "data", "path", "dir", "file",
     "new", "old", "acct", "grantors", "op", "res", "terminal", "hostname", "addr", "exe_path")
)  # fmt: skip
_EXECVE_ARG = re.compile(r"a\d+(?:\[\d+\]|_len)?$")
# Open audit events kept while reading; records of one event are close together in a file.
_MAX_OPEN = 4096


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
            # A record type the agent's parser has no number for (USER_CMD, ADD_USER...):
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
        argv = self._argv(path, audit_event)
        context = self._context(
            path, shown, audit_event, argv, nodes.pop(audit_event.event_id, None)
        )
        syscall = audit_event.first(AUDIT_SYSCALL)
        started = syscall is not None and syscall.fields.get("success") == "yes"
        for record in audit_event.records:
            event = dict(context)
            event["type"] = names.pop(id(record), record.type_name)
            event.update(self._fields(path, record))
            if record.type == AUDIT_EXECVE and argv is not None:
                event.update({f"a{index}": arg for index, arg in enumerate(argv)})
                if started:
                    event["event.category"] = ["process"]
                    event["event.type"] = ["start"]
            if record.type == AUDIT_PROCTITLE and "proctitle" in record.fields:
                event["proctitle"] = " ".join(proctitle_args(record.fields["proctitle"]))
            yield event

    def _context(
        self,
        path: Path,
        shown: str,
        audit_event: AuditEvent,
        argv: list[str] | None,
        node: str | None,
    ) -> Event:
        seconds, millis, serial = audit_event.event_id
        context: Event = {
            "@timestamp": iso_epoch(audit_event.timestamp),
            "log.file.path": shown,
            "host.os.type": "linux",
            "event.kind": "event",
            "event.module": "auditd",
            "auditd.log.sequence": serial,
        }
        if node is not None:
            context["host.name"] = node
        syscall = audit_event.first(AUDIT_SYSCALL)
        if syscall is not None:
            fields = syscall.fields
            for name, ecs in (("exe", "process.executable"), ("comm", "process.name")):
                text = _text(fields.get(name))
                if text is not None:
                    context[ecs] = text
            for name, ecs in (
                ("pid", "process.pid"),
                ("ppid", "process.parent.pid"),
                ("uid", "user.id"),
                ("euid", "user.effective.id"),
                ("auid", "user.audit.id"),
            ):
                if name in fields:
                    context[ecs] = fields[name]
        cwd = audit_event.first(AUDIT_CWD)
        if cwd is not None:
            text = _text(cwd.fields.get("cwd"))
            if text is not None:
                context["process.working_directory"] = text
        if argv is not None:
            context["process.args"] = argv
            context["process.command_line"] = " ".join(argv)
        return context

    def _argv(self, path: Path, audit_event: AuditEvent) -> list[str] | None:
        records = audit_event.all(AUDIT_EXECVE)
        if not records:
            return None
        try:
            return execve_args(records)
        except RecordParseError as exc:
            self.warn(path, "execve_args", str(exc))
            return None

    def _fields(self, path: Path, record: AuditRecord) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        execve = record.type == AUDIT_EXECVE
        for name, value in record.fields.items():
            if execve and _EXECVE_ARG.match(name):
                continue  # replaced by the whole arguments
            if name in _STRING_FIELDS:
                text = _text(value)
                fields[name] = "" if text is None else _split_keys(name, text)
            elif len(value) >= 2 and value[0] == value[-1] == '"':
                fields[name] = value[1:-1]
            else:
                fields[name] = value
        _, separator, enriched = record.raw.partition("\x1d")
        if separator:
            for name, value in _ENRICHED.findall(enriched):
                fields[name] = value[1:-1] if value.startswith('"') else value
        return fields


def _text(value: str | None) -> str | None:
    # A bare value that is not hex is written as it is (res=success, op=add_rule).
    try:
        return value_text(value)
    except RecordParseError:
        return value


def _split_keys(name: str, text: str) -> Any:
    # Several audit rule keys on one record are joined with 0x01.
    if name == "key" and "\x01" in text:
        return text.split("\x01")
    return text
