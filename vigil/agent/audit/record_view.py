"""Audit events as Sigma's ``auditd`` rules see them: one flat event per record.

SigmaHQ's ``product: linux, service: auditd`` rules are written against single audit records:
``type: EXECVE`` with ``a0``, ``a1``...; ``type: SYSCALL`` with ``exe``, ``comm``, ``key``,
``SYSCALL``; ``type: PATH`` with ``name``; ``type: SERVICE_STOP`` with ``unit``. So each record
becomes one event carrying its own fields by their audit names, with string values decoded
(quoted or hex, as the kernel writes them) and EXECVE arguments as whole strings (``a1[0]``,
``a1[1]``... joined into ``a1``). A user-space message keeps its ``msg='...'`` text and also
gets the fields inside it (``unit``, ``op``, ``acct``, ``exe``...), as ``ausearch -i`` shows them.

Every record's event also carries what the whole audit event knows: time, ``process.*`` from
SYSCALL/EXECVE/CWD (or from the message itself for a user-space record), ``user.*``. The EXECVE
record of a successful exec is also a ``process``/``start`` event, so Sigma's Linux
``process_creation`` rules see audit-logged execs too.

``SYSCALL``, the syscall's name, is what enriched logs (``log_format = ENRICHED``) append after a
``0x1d`` byte, with other upper-case interpreted fields; those are kept when present. Otherwise
the name is looked up in a table of syscall numbers when one is given.

The offline reader of ``audit.log`` files (:mod:`vigil.logsources.auditd`) and the live
``audit_records`` sensor both build their events here, so a rule sees the same event either way.

References:
    Linux ``kernel/audit.c`` and ``kernel/auditsc.c``; auditd ``audit.log`` format;
    Sigma ``rules/linux/auditd``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from vigil.agent.audit.reassembly import AuditEvent
from vigil.agent.audit.records import (
    AUDIT_CWD,
    AUDIT_EXECVE,
    AUDIT_PROCTITLE,
    AUDIT_SYSCALL,
    AuditRecord,
    RecordParseError,
    execve_args,
    proctitle_args,
    value_text,
)
from vigil.schema.ecs import iso_epoch

Event = dict[str, Any]
TypeName = Callable[[AuditRecord], str]
Warn = Callable[[str, str], None]

_ENRICHED = re.compile(r"""([A-Z][A-Z0-9_]*)=("[^"]*"|\S*)""")
# key=value inside a user-space message's msg='...' (no single quote can occur in it).
_MESSAGE_FIELD = re.compile(r"""([\w-]+)=("[^"]*"|\S*)""")
# Fields the kernel writes as untrusted strings: quoted text, or hex when they have spaces,
# quotes or control characters (audit_log_untrustedstring). Other bare values are numbers.
STRING_FIELDS = frozenset(
    ("name", "exe", "comm", "cwd", "proctitle", "key", "cmd", "data", "path", "dir", "file",
     "new", "old", "acct", "grantors", "op", "res", "terminal", "hostname", "addr", "exe_path")
)  # fmt: skip
_EXECVE_ARG = re.compile(r"a\d+(?:\[\d+\]|_len)?$")


def record_events(
    audit_event: AuditEvent,
    *,
    type_name: TypeName | None = None,
    syscall_names: Mapping[int, Mapping[int, str]] | None = None,
    warn: Warn | None = None,
) -> list[Event]:
    """One flat event per record of ``audit_event``, in record order.

    Args:
        audit_event: A reassembled audit event.
        type_name: The ``type`` of a record; by default its name from the record type number.
        syscall_names: For each ``AUDIT_ARCH_*`` value, syscall number to name, for ``SYSCALL``
            when the record does not carry it already.
        warn: Called with a kind and a message for each problem (arguments that do not
            decode); the record's event is still returned without what could not be read.
    """
    argv = _argv(audit_event, warn)
    context = event_context(audit_event, argv)
    syscall = audit_event.first(AUDIT_SYSCALL)
    started = syscall is not None and syscall.fields.get("success") == "yes"
    events = []
    for record in audit_event.records:
        event = dict(context)
        event["type"] = type_name(record) if type_name is not None else record.type_name
        event.update(record_fields(record))
        if record.type == AUDIT_SYSCALL and "SYSCALL" not in event and syscall_names:
            name = _syscall_name(record.fields, syscall_names)
            if name is not None:
                event["SYSCALL"] = name
        if record.type == AUDIT_EXECVE and argv is not None:
            event.update({f"a{index}": arg for index, arg in enumerate(argv)})
            if started:
                event["event.category"] = ["process"]
                event["event.type"] = ["start"]
        if record.type == AUDIT_PROCTITLE and "proctitle" in record.fields:
            event["proctitle"] = " ".join(proctitle_args(record.fields["proctitle"]))
        events.append(event)
    return events


def event_context(audit_event: AuditEvent, argv: list[str] | None = None) -> Event:
    """The fields every record of ``audit_event`` shares: time, source, process and users."""
    seconds, millis, serial = audit_event.event_id
    context: Event = {
        "@timestamp": iso_epoch(audit_event.timestamp),
        "host.os.type": "linux",
        "event.kind": "event",
        "event.module": "auditd",
        "auditd.log.sequence": serial,
    }
    syscall = audit_event.first(AUDIT_SYSCALL)
    if syscall is not None:
        fields = syscall.fields
        for name, ecs in (("exe", "process.executable"), ("comm", "process.name")):
            text = _text(fields.get(name))
            if text is not None:
                context[ecs] = text
        _numbers(context, fields, (("pid", "process.pid"), ("ppid", "process.parent.pid")))
        _copy(context, fields, (("uid", "user.id"), ("euid", "user.effective.id")))
        _copy(context, fields, (("auid", "user.audit.id"),))
    elif audit_event.records:
        # A message from user space (ADD_USER, SERVICE_STOP...) names its sender itself.
        fields = record_fields(audit_event.records[0])
        if isinstance(fields.get("exe"), str) and fields["exe"].startswith("/"):
            context["process.executable"] = fields["exe"]
        _numbers(context, fields, (("pid", "process.pid"),))
        _copy(context, fields, (("uid", "user.id"), ("auid", "user.audit.id")))
    cwd = audit_event.first(AUDIT_CWD)
    if cwd is not None:
        text = _text(cwd.fields.get("cwd"))
        if text is not None:
            context["process.working_directory"] = text
    if argv is not None:
        context["process.args"] = argv
        context["process.command_line"] = " ".join(argv)
    return context


def record_fields(record: AuditRecord) -> dict[str, Any]:
    """A record's own fields by their audit names, string values decoded.

    EXECVE arguments are left out (:func:`record_events` puts the whole arguments back); the
    fields inside a user-space message's ``msg='...'`` are added unless the record has them.
    """
    fields: dict[str, Any] = {}
    execve = record.type == AUDIT_EXECVE
    for name, value in record.fields.items():
        if execve and _EXECVE_ARG.match(name):
            continue  # replaced by the whole arguments
        fields[name] = _value(name, value)
    message = record.fields.get("msg", "")
    if len(message) >= 2 and message[0] == message[-1] == "'":
        for name, value in _MESSAGE_FIELD.findall(message[1:-1]):
            fields.setdefault(name, _value(name, value))
    _, separator, enriched = record.raw.partition("\x1d")
    if separator:
        for name, value in _ENRICHED.findall(enriched):
            fields[name] = value[1:-1] if value.startswith('"') else value
    return fields


def _value(name: str, value: str) -> Any:
    if name in STRING_FIELDS:
        text = _text(value)
        return "" if text is None else _split_keys(name, text)
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _argv(audit_event: AuditEvent, warn: Warn | None) -> list[str] | None:
    records = audit_event.all(AUDIT_EXECVE)
    if not records:
        return None
    try:
        return execve_args(records)
    except RecordParseError as exc:
        if warn is not None:
            warn("execve_args", str(exc))
        return None


def _syscall_name(fields: dict[str, str], names: Mapping[int, Mapping[int, str]]) -> str | None:
    try:
        return names.get(int(fields["arch"], 16), {}).get(int(fields["syscall"]))
    except (KeyError, ValueError):
        return None


def _numbers(context: Event, fields: Mapping[str, Any], pairs: tuple[tuple[str, str], ...]) -> None:
    for name, ecs in pairs:
        value = fields.get(name)
        if isinstance(value, str) and value.isdigit():
            context[ecs] = int(value)


def _copy(context: Event, fields: Mapping[str, Any], pairs: tuple[tuple[str, str], ...]) -> None:
    for name, ecs in pairs:
        if name in fields:
            context[ecs] = fields[name]


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
