"""Parse kernel audit records: the event id, ``key=value`` fields and encoded values.

A record arrives as ``audit(<sec>.<msec>:<serial>): key=value ...`` over netlink (its type is in
the netlink header) or as ``type=<NAME> msg=audit(...): ...`` in an ``audit.log``. The kernel
writes a string value in double quotes when it is printable ASCII without spaces or quotes, and
as upper-case hex otherwise (``audit_log_untrustedstring`` in ``kernel/audit.c``); EXECVE
arguments follow ``audit_log_execve_info`` in ``kernel/auditsc.c``.

Bytes are turned into text with :func:`decode_bytes`: valid UTF-8 is kept as it is, and any byte
that is not part of valid UTF-8 becomes the four characters ``\\xNN`` (Python's
``backslashreplace``). This keeps every event JSON- and UTF-8-safe for the spool, the server and
storage; the price is that a literal ``\\xff`` typed in an argument reads the same as the raw byte
0xff. The original bytes of an argument are never needed downstream, so we accept that.
"""

from __future__ import annotations

import re

from vigil.agent.errors import AgentError

RECORD_TYPES: dict[str, int] = {
    # Messages from user space that the kernel relays (shadow-utils, systemd, pam_tty_audit).
    "ADD_USER": 1114,
    "DEL_USER": 1115,
    "ADD_GROUP": 1116,
    "DEL_GROUP": 1117,
    "USER_TTY": 1124,
    "SERVICE_START": 1130,
    "SERVICE_STOP": 1131,
    # Kernel records.
    "SYSCALL": 1300,
    "PATH": 1302,
    "SOCKETCALL": 1304,
    "CONFIG_CHANGE": 1305,
    "SOCKADDR": 1306,
    "CWD": 1307,
    "EXECVE": 1309,
    "TTY": 1319,
    "EOE": 1320,
    "CAPSET": 1322,
    "PROCTITLE": 1327,
}
TYPE_NAMES: dict[int, str] = {number: name for name, number in RECORD_TYPES.items()}

AUDIT_SYSCALL = RECORD_TYPES["SYSCALL"]
AUDIT_PATH = RECORD_TYPES["PATH"]
AUDIT_SOCKETCALL = RECORD_TYPES["SOCKETCALL"]
AUDIT_SOCKADDR = RECORD_TYPES["SOCKADDR"]
AUDIT_CAPSET = RECORD_TYPES["CAPSET"]
AUDIT_CWD = RECORD_TYPES["CWD"]
AUDIT_EXECVE = RECORD_TYPES["EXECVE"]
AUDIT_EOE = RECORD_TYPES["EOE"]
AUDIT_PROCTITLE = RECORD_TYPES["PROCTITLE"]

_HEADER = re.compile(r"audit\((\d+)\.(\d+):(\d+)\):\s?")
_LOG_TYPE = re.compile(r"type=(\w+)\s+msg=")
# key=value where value is "double quoted", 'single quoted' or a bare token.
_FIELD = re.compile(r"""([\w\[\]-]+)=("[^"]*"|'[^']*'|\S*)""")
_HEX = re.compile(r"[0-9A-Fa-f]*")
_ARG = re.compile(r"a(\d+)(?:\[(\d+)\]|(_len))?$")
_UNKNOWN_TYPE = re.compile(r"UNKNOWN\[(\d+)\]")


class RecordParseError(AgentError):
    """An audit record could not be parsed; the message quotes the start of the record."""


class AuditRecord:
    """One record: its type, the id of its event, and its fields with values as written.

    The ``key=value`` fields are parsed on first use of :attr:`fields`: most records of an
    event (PATH, PROCTITLE...) are never looked into, and splitting them is most of the cost
    of a record. Records are immutable and compare equal when all their parts are equal.
    """

    __slots__ = ("type", "seconds", "millis", "serial", "raw", "_fields", "_body")

    type: int
    seconds: int
    millis: int
    serial: int
    raw: str
    _fields: dict[str, str] | None
    _body: str | None

    def __init__(
        self,
        type: int,  # noqa: A002 - the field is named after the record type, as before
        seconds: int,
        millis: int,
        serial: int,
        fields: dict[str, str] | None = None,
        raw: str = "",
        *,
        body: str | None = None,
    ) -> None:
        setter = object.__setattr__
        setter(self, "type", type)
        setter(self, "seconds", seconds)
        setter(self, "millis", millis)
        setter(self, "serial", serial)
        setter(self, "raw", raw)
        setter(self, "_fields", fields if fields is not None or body is not None else {})
        setter(self, "_body", body)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"AuditRecord is immutable: cannot set {name}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"AuditRecord is immutable: cannot delete {name}")

    @property
    def fields(self) -> dict[str, str]:
        """The ``key=value`` fields, values exactly as written (quoted, hex or bare)."""
        fields = self._fields
        if fields is None:
            body = self._body or ""
            fields = dict(_FIELD.findall(body))
            object.__setattr__(self, "_fields", fields)
            object.__setattr__(self, "_body", None)
        return fields

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, AuditRecord)
        return (
            self.type == other.type
            and self.event_id == other.event_id
            and self.fields == other.fields
            and self.raw == other.raw
        )

    __hash__ = None  # type: ignore[assignment]  # like the dataclass it was: fields is a dict

    def __repr__(self) -> str:
        return (
            f"AuditRecord(type={self.type!r}, seconds={self.seconds!r}, millis={self.millis!r}, "
            f"serial={self.serial!r}, fields={self.fields!r}, raw={self.raw!r})"
        )

    @property
    def event_id(self) -> tuple[int, int, int]:
        """The ``(seconds, milliseconds, serial)`` all records of one event share."""
        return (self.seconds, self.millis, self.serial)

    @property
    def timestamp(self) -> float:
        """The event time as seconds since the epoch."""
        return self.seconds + self.millis / 1000

    @property
    def type_name(self) -> str:
        """The record type's name (``SYSCALL``), or ``UNKNOWN[n]``."""
        return TYPE_NAMES.get(self.type, f"UNKNOWN[{self.type}]")


def parse_record(record_type: int, text: str) -> AuditRecord:
    """Parse a record body as it arrives over netlink.

    Only the header is read here; the fields are split when first used.

    Args:
        record_type: The netlink message type, which is the audit record type.
        text: The body, ``audit(sec.msec:serial): key=value ...``.

    Raises:
        RecordParseError: The body has no ``audit(...)`` header.
    """
    text = text.rstrip("\0\n")
    match = _HEADER.search(text)
    if match is None:
        raise RecordParseError(f"audit record type {record_type} has no audit() id: {text[:80]!r}")
    # Enriched audit.log lines append interpreted fields after a 0x1d separator; drop them.
    body = text[match.end() :].split("\x1d", 1)[0]
    seconds, millis, serial = match.groups()
    return AuditRecord(record_type, int(seconds), int(millis), int(serial), None, text, body=body)


def parse_log_line(line: str) -> AuditRecord:
    """Parse one ``audit.log`` line (``type=NAME msg=audit(...): ...``).

    Raises:
        RecordParseError: The line has no ``type=`` or ``audit(...)`` part, or an unknown name.
    """
    match = _LOG_TYPE.match(line)
    if match is None:
        raise RecordParseError(f"audit.log line has no type=: {line[:80]!r}")
    name = match.group(1)
    unknown = _UNKNOWN_TYPE.match(name)
    record_type = int(unknown.group(1)) if unknown else RECORD_TYPES.get(name, 0)
    record = parse_record(record_type, line[match.end() :])
    if record_type == 0:
        raise RecordParseError(f"audit.log record type {name} is not one this parser knows")
    return record


def decode_bytes(data: bytes) -> str:
    """Bytes to text: UTF-8, with each invalid byte written as ``\\xNN`` (see module doc)."""
    return data.decode("utf-8", errors="backslashreplace")


def value_bytes(value: str) -> bytes | None:
    """The raw bytes of a field value: quoted text, or hex; ``None`` for ``(null)`` and ``?``.

    Raises:
        RecordParseError: A bare value is neither hex nor one of the null markers.
    """
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1].encode("utf-8", errors="surrogateescape")
    if value in ("(null)", "?", "(none)", ""):
        return None
    if len(value) % 2 or not _HEX.fullmatch(value):
        raise RecordParseError(f"audit value is neither quoted nor hex: {value[:80]!r}")
    return bytes.fromhex(value)


def value_text(value: str | None) -> str | None:
    """A string field (``exe``, ``cwd``, ``name``) decoded to text, or ``None`` when absent."""
    if value is None:
        return None
    raw = value_bytes(value)
    return None if raw is None else decode_bytes(raw)


def execve_args(records: list[AuditRecord]) -> list[str]:
    """The exact argv of one exec from its EXECVE record(s), in order.

    Handles the short form (``argc=2 a0="ls" a1=2D6C``) and the split form the kernel uses for
    long arguments (``a1_len=9000 a1[0]=... a1[1]=...``), which may span several records.

    Raises:
        RecordParseError: ``argc`` is missing, or an argument is missing or malformed.
    """
    argc: int | None = None
    whole: dict[int, bytes] = {}
    parts: dict[int, dict[int, bytes]] = {}
    for record in records:
        for key, value in record.fields.items():
            if key == "argc":
                argc = int(value)
                continue
            match = _ARG.match(key)
            if match is None:
                continue
            index = int(match.group(1))
            if match.group(3):  # aN_len only announces the split form
                continue
            data = value_bytes(value) or b""
            if match.group(2) is None:
                whole[index] = data
            else:
                parts.setdefault(index, {})[int(match.group(2))] = data
    if argc is None:
        raise RecordParseError("EXECVE record has no argc")
    args = []
    for index in range(argc):
        if index in whole:
            args.append(decode_bytes(whole[index]))
        elif index in parts:
            chunks = parts[index]
            args.append(decode_bytes(b"".join(chunks[i] for i in sorted(chunks))))
        else:
            raise RecordParseError(f"EXECVE record announces argc={argc} but has no a{index}")
    return args


def proctitle_args(value: str) -> list[str]:
    """The command line from a PROCTITLE record (NUL-separated, at most 128 bytes)."""
    raw = value_bytes(value) or b""
    return [decode_bytes(part) for part in raw.rstrip(b"\0").split(b"\0")]
