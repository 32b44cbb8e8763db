"""Audit rules the process sensor loads, packed as ``struct audit_rule_data``.

Layout and constants from ``include/uapi/linux/audit.h``; syscall numbers from each
architecture's syscall table (``arch/x86/entry/syscalls``, ``include/uapi/asm-generic``,
``arch/arm/tools/syscall.tbl``).
"""

from __future__ import annotations

import platform
import struct
from dataclasses import dataclass

AUDIT_FILTER_EXIT = 0x04
AUDIT_ALWAYS = 2
AUDIT_ARCH = 11
AUDIT_FILTERKEY = 210
AUDIT_EQUAL = 0x40000000

AUDIT_MAX_FIELDS = 64
AUDIT_BITMASK_SIZE = 64
_HEAD = struct.Struct(f"=3I{AUDIT_BITMASK_SIZE}I")
_FIELDS = struct.Struct(f"={AUDIT_MAX_FIELDS}I")
_BUFLEN = struct.Struct("=I")
RULE_FIXED_SIZE = _HEAD.size + 3 * _FIELDS.size + _BUFLEN.size

RULE_KEY = "vigil"


@dataclass(frozen=True)
class Arch:
    """One system-call ABI: its ``AUDIT_ARCH_*`` value and the syscalls the sensor watches."""

    name: str
    audit_arch: int
    execve: int
    execveat: int
    exit_group: int


X86_64 = Arch("b64", 0xC000003E, execve=59, execveat=322, exit_group=231)
I386 = Arch("b32", 0x40000003, execve=11, execveat=358, exit_group=252)
AARCH64 = Arch("b64", 0xC00000B7, execve=221, execveat=281, exit_group=94)
ARM = Arch("b32", 0x40000028, execve=11, execveat=387, exit_group=248)

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


def process_rules(machine: str | None = None, key: str = RULE_KEY) -> list[AuditRule]:
    """Exit-filter rules for execve, execveat and exit_group, one per ABI, tagged with ``key``."""
    rules = []
    for arch in arches_for(machine):
        rules.append(
            AuditRule(
                flags=AUDIT_FILTER_EXIT,
                action=AUDIT_ALWAYS,
                syscalls=frozenset({arch.execve, arch.execveat, arch.exit_group}),
                fields=(
                    (AUDIT_ARCH, AUDIT_EQUAL, arch.audit_arch),
                    (AUDIT_FILTERKEY, AUDIT_EQUAL, key),
                ),
            )
        )
    return rules


def exec_syscalls(machine: str | None = None) -> dict[int, frozenset[int]]:
    """For each ``AUDIT_ARCH_*`` value, the syscall numbers that execute a program."""
    return {a.audit_arch: frozenset({a.execve, a.execveat}) for a in arches_for(machine)}


def exit_syscalls(machine: str | None = None) -> dict[int, int]:
    """For each ``AUDIT_ARCH_*`` value, the number of ``exit_group``."""
    return {a.audit_arch: a.exit_group for a in arches_for(machine)}
