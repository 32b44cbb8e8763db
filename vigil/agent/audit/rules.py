"""Audit rules the audit sensors load, packed as ``struct audit_rule_data``.

Layout and constants from ``include/uapi/linux/audit.h``; syscall numbers from each
architecture's syscall table (``arch/x86/entry/syscalls``, ``include/uapi/asm-generic``,
``arch/arm/tools/syscall.tbl``).

Every rule carries the filter key ``vigil``, so rules left by an agent that died can be found and
removed. Rules are grouped into sets, one per kind of telemetry (:data:`PROCESS`,
:data:`LINEAGE`, :data:`PRIVILEGE`, :data:`NETWORK`); the audit hub loads the sets its sensors
ask for.
"""

from __future__ import annotations

import platform
import struct
from collections.abc import Mapping
from dataclasses import dataclass

AUDIT_FILTER_EXIT = 0x04
AUDIT_NEVER = 0
AUDIT_ALWAYS = 2

AUDIT_PID = 0
AUDIT_ARCH = 11
AUDIT_SUCCESS = 104
AUDIT_SADDR_FAM = 113
AUDIT_ARG0 = 200
AUDIT_FILTERKEY = 210

AUDIT_BIT_MASK = 0x08000000
AUDIT_NOT_EQUAL = 0x30000000
AUDIT_EQUAL = 0x40000000

AF_INET = 2
AF_INET6 = 10
CLONE_THREAD = 0x00010000

AUDIT_MAX_FIELDS = 64
AUDIT_BITMASK_SIZE = 64
_HEAD = struct.Struct(f"=3I{AUDIT_BITMASK_SIZE}I")
_FIELDS = struct.Struct(f"={AUDIT_MAX_FIELDS}I")
_BUFLEN = struct.Struct("=I")
RULE_FIXED_SIZE = _HEAD.size + 3 * _FIELDS.size + _BUFLEN.size

RULE_KEY = "vigil"

# Syscall groups by name; the hub dispatches an event to the sensor that asked for its group.
PROCESS = "process"
LINEAGE = "lineage"
PRIVILEGE = "privilege"
NETWORK = "network"

FORK_CALLS = ("fork", "vfork", "clone", "clone3")
UID_CALLS = ("setuid", "setreuid", "setresuid", "setfsuid")
GID_CALLS = ("setgid", "setregid", "setresgid", "setfsgid")
CONNECT_CALLS = ("connect",)
INBOUND_CALLS = ("bind", "accept", "accept4", "socketcall")


@dataclass(frozen=True)
class Arch:
    """One system-call ABI: its ``AUDIT_ARCH_*`` value and the numbers of the syscalls we watch.

    A name maps to several numbers where the ABI has more than one entry for it (the 16- and
    32-bit id calls of i386 and arm); a name the ABI lacks (``fork`` on aarch64) is left out.
    """

    name: str
    audit_arch: int
    numbers: Mapping[str, tuple[int, ...]]

    def of(self, *names: str) -> frozenset[int]:
        """The numbers of the named syscalls this ABI has."""
        return frozenset(nr for name in names for nr in self.numbers.get(name, ()))

    @property
    def names(self) -> dict[int, str]:
        """Syscall number to name."""
        return {nr: name for name, numbers in self.numbers.items() for nr in numbers}


def _table(**numbers: int | tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    return {k: (v,) if isinstance(v, int) else v for k, v in numbers.items()}


# The 32-bit ABIs of i386 and arm share these id-call numbers (16-bit call, then the 32-bit one).
_ID_CALLS_32 = _table(
    setuid=(23, 213),
    setgid=(46, 214),
    setreuid=(70, 203),
    setregid=(71, 204),
    setresuid=(164, 208),
    setresgid=(170, 210),
    setfsuid=(138, 215),
    setfsgid=(139, 216),
    capset=185,
)

X86_64 = Arch(
    "b64",
    0xC000003E,
    _table(
        execve=59,
        execveat=322,
        exit_group=231,
        fork=57,
        vfork=58,
        clone=56,
        clone3=435,
        setuid=105,
        setgid=106,
        setreuid=113,
        setregid=114,
        setresuid=117,
        setresgid=119,
        setfsuid=122,
        setfsgid=123,
        capset=126,
        connect=42,
        accept=43,
        bind=49,
        listen=50,
        accept4=288,
    ),
)
I386 = Arch(
    "b32",
    0x40000003,
    _table(
        execve=11,
        execveat=358,
        exit_group=252,
        fork=2,
        vfork=190,
        clone=120,
        clone3=435,
        **_ID_CALLS_32,
        socketcall=102,
        bind=361,
        connect=362,
        listen=363,
        accept4=364,
    ),
)
AARCH64 = Arch(
    "b64",
    0xC00000B7,
    _table(
        execve=221,
        execveat=281,
        exit_group=94,
        clone=220,
        clone3=435,
        setregid=143,
        setgid=144,
        setreuid=145,
        setuid=146,
        setresuid=147,
        setresgid=149,
        setfsuid=151,
        setfsgid=152,
        capset=91,
        bind=200,
        listen=201,
        accept=202,
        connect=203,
        accept4=242,
    ),
)
ARM = Arch(
    "b32",
    0x40000028,
    _table(
        execve=11,
        execveat=387,
        exit_group=248,
        fork=2,
        vfork=190,
        clone=120,
        clone3=435,
        **_ID_CALLS_32,
        bind=282,
        connect=283,
        listen=284,
        accept=285,
        accept4=366,
    ),
)

# The native ABI first, then the 32-bit compat ABI where the machine has one.
ARCHES_BY_MACHINE: dict[str, tuple[Arch, ...]] = {
    "x86_64": (X86_64, I386),
    "aarch64": (AARCH64, ARM),
}


@dataclass(frozen=True)
class AuditRule:
    """A parsed or built syscall rule: list, action, syscalls, ``(field, op, value)`` and key."""

    flags: int
    action: int
    syscalls: frozenset[int]
    fields: tuple[tuple[int, int, int | str], ...]

    @property
    def key(self) -> str | None:
        """The rule's filter key (``-k``), if it has one."""
        for field, _op, value in self.fields:
            if field == AUDIT_FILTERKEY and isinstance(value, str):
                return value
        return None

    def pack(self) -> bytes:
        """Encode as ``struct audit_rule_data`` for ``AUDIT_ADD_RULE``/``AUDIT_DEL_RULE``."""
        mask = [0] * AUDIT_BITMASK_SIZE
        for nr in self.syscalls:
            mask[nr // 32] |= 1 << (nr % 32)
        fields = [0] * AUDIT_MAX_FIELDS
        values = [0] * AUDIT_MAX_FIELDS
        flags = [0] * AUDIT_MAX_FIELDS
        buf = b""
        for i, (field, op, value) in enumerate(self.fields):
            fields[i], flags[i] = field, op
            if isinstance(value, str):
                encoded = value.encode()
                values[i] = len(encoded)
                buf += encoded
            else:
                values[i] = value
        return (
            _HEAD.pack(self.flags, self.action, len(self.fields), *mask)
            + _FIELDS.pack(*fields)
            + _FIELDS.pack(*values)
            + _FIELDS.pack(*flags)
            + _BUFLEN.pack(len(buf))
            + buf
        )

    @classmethod
    def unpack(cls, data: bytes) -> AuditRule:
        """Decode a ``struct audit_rule_data`` as ``AUDIT_LIST_RULES`` returns it.

        Only the filter key is decoded from the string buffer; other string fields (paths,
        security labels) are kept as their length, which is enough to tell rules apart.
        """
        head = _HEAD.unpack_from(data)
        rule_flags, action, count, mask = head[0], head[1], head[2], head[3:]
        offset = _HEAD.size
        fields = _FIELDS.unpack_from(data, offset)
        values = _FIELDS.unpack_from(data, offset + _FIELDS.size)
        ops = _FIELDS.unpack_from(data, offset + 2 * _FIELDS.size)
        buf = data[RULE_FIXED_SIZE:]
        syscalls = frozenset(
            word * 32 + bit
            for word in range(AUDIT_BITMASK_SIZE)
            for bit in range(32)
            if mask[word] >> bit & 1
        )
        parsed: list[tuple[int, int, int | str]] = []
        pos = 0
        for i in range(count):
            field, value, op = fields[i], values[i], ops[i]
            if field == AUDIT_FILTERKEY:
                parsed.append((field, op, buf[pos : pos + value].decode(errors="replace")))
                pos += value
            else:
                parsed.append((field, op, value))
        return cls(rule_flags, action, syscalls, tuple(parsed))


def arches_for(machine: str | None = None) -> tuple[Arch, ...]:
    """The ABIs to watch on ``machine`` (default: this one).

    Raises:
        KeyError: The machine is not one the sensor knows the syscall numbers of.
    """
    return ARCHES_BY_MACHINE[machine or platform.machine()]


def _rule(
    arch: Arch,
    syscalls: frozenset[int],
    *fields: tuple[int, int, int | str],
    action: int = AUDIT_ALWAYS,
    key: str = RULE_KEY,
) -> AuditRule:
    return AuditRule(
        flags=AUDIT_FILTER_EXIT,
        action=action,
        syscalls=syscalls,
        fields=(
            (AUDIT_ARCH, AUDIT_EQUAL, arch.audit_arch),
            *fields,
            (AUDIT_FILTERKEY, AUDIT_EQUAL, key),
        ),
    )


_SUCCESS = (AUDIT_SUCCESS, AUDIT_EQUAL, 1)


def process_rules(machine: str | None = None, key: str = RULE_KEY) -> list[AuditRule]:
    """Exit-filter rules for execve, execveat and exit_group, one per ABI, tagged with ``key``.

    Failed execs are recorded too (and counted by the sensor, not emitted).
    """
    return [
        _rule(arch, arch.of("execve", "execveat", "exit_group"), key=key)
        for arch in arches_for(machine)
    ]


def lineage_rules(machine: str | None = None, key: str = RULE_KEY) -> list[AuditRule]:
    """Successful fork, vfork, clone and clone3, except clone of a thread.

    A ``never`` rule for ``clone`` with ``CLONE_THREAD`` in its flags comes first (the first
    matching exit rule decides), so thread creation through ``clone`` costs no record. ``clone3``
    takes its flags in a structure audit cannot filter on; the hub's user skips its threads.
    """
    found = []
    for arch in arches_for(machine):
        found.append(
            _rule(
                arch,
                arch.of("clone"),
                (AUDIT_ARG0, AUDIT_BIT_MASK, CLONE_THREAD),
                action=AUDIT_NEVER,
                key=key,
            )
        )
        found.append(_rule(arch, arch.of(*FORK_CALLS), _SUCCESS, key=key))
    return found


def privilege_rules(machine: str | None = None, key: str = RULE_KEY) -> list[AuditRule]:
    """Successful uid, gid and capability changes (set*uid, set*gid, setfs*id, capset)."""
    return [
        _rule(arch, arch.of(*UID_CALLS, *GID_CALLS, "capset"), _SUCCESS, key=key)
        for arch in arches_for(machine)
    ]


def network_rules(
    machine: str | None = None, key: str = RULE_KEY, exclude_pid: int | None = None
) -> list[AuditRule]:
    """connect, accept, accept4, bind and listen on IPv4 and IPv6 sockets.

    ``saddr_fam`` filters on the family of the address the call passed or returned, so Unix,
    netlink and packet sockets cost no record. ``connect`` is recorded whether it succeeded or
    not (a non-blocking connect "fails" with ``EINPROGRESS``); bind and accept only on success.
    ``listen`` passes no address: it is recorded on success for every family and the reader
    drops non-IP sockets. ``exclude_pid`` (the agent itself) is never recorded, so the agent's
    own connections to its server cannot feed back into its telemetry.
    """
    own: tuple[tuple[int, int, int | str], ...] = ()
    if exclude_pid is not None:
        own = ((AUDIT_PID, AUDIT_NOT_EQUAL, exclude_pid),)
    found = []
    for arch in arches_for(machine):
        for family in (AF_INET, AF_INET6):
            fam = (AUDIT_SADDR_FAM, AUDIT_EQUAL, family)
            found.append(_rule(arch, arch.of(*CONNECT_CALLS), fam, *own, key=key))
            found.append(_rule(arch, arch.of(*INBOUND_CALLS), fam, _SUCCESS, *own, key=key))
        found.append(_rule(arch, arch.of("listen"), _SUCCESS, *own, key=key))
    return found


def syscall_names(machine: str | None = None) -> dict[int, dict[int, str]]:
    """For each ``AUDIT_ARCH_*`` value, syscall number to name for the syscalls we watch."""
    return {arch.audit_arch: arch.names for arch in arches_for(machine)}
