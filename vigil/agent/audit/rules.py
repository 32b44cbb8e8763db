"""Audit rules the audit sensors load, packed as ``struct audit_rule_data``.

Layout and constants from ``include/uapi/linux/audit.h``; syscall numbers from each
architecture's syscall table (``arch/x86/entry/syscalls``, ``include/uapi/asm-generic``,
``arch/arm/tools/syscall.tbl``).

Every rule carries the filter key ``vigil`` or one starting with ``vigil_`` (:func:`is_vigil_key`),
except the exclude-list rule that drops PROCTITLE records (:func:`proctitle_exclusion`), known by
its contents, so rules left by an agent that died can be found and removed. Rules are grouped
into sets, one per kind of telemetry (:data:`PROCESS`, :data:`LINEAGE`, :data:`PRIVILEGE`,
:data:`NETWORK`, file watches and single syscalls for raw records); the audit hub loads the sets
its sensors ask for.

File watches (:func:`watch_rule`) are built as ``auditctl -w PATH -p PERM`` builds them: the
``AUDIT_WATCH`` field for a file (the kernel watches its folder and follows the file through
creation and replacement), ``AUDIT_DIR`` for a directory (the whole tree under it), and
``AUDIT_PERM`` naming the kinds of access (``include/uapi/linux/audit.h``: ``AUDIT_PERM_*``).
"""

from __future__ import annotations

import platform
import struct
from collections.abc import Mapping
from dataclasses import dataclass

AUDIT_FILTER_EXIT = 0x04
AUDIT_FILTER_EXCLUDE = 0x05
AUDIT_NEVER = 0
AUDIT_ALWAYS = 2

AUDIT_PID = 0
AUDIT_MSGTYPE = 12
AUDIT_ARCH = 11
AUDIT_SUCCESS = 104
AUDIT_WATCH = 105
AUDIT_PERM = 106
AUDIT_DIR = 107
AUDIT_EXE = 112
AUDIT_SADDR_FAM = 113
AUDIT_ARG0 = 200
AUDIT_FILTERKEY = 210
# Fields whose value is a string in the rule's buffer (the rest are numbers).
STRING_FIELDS = frozenset(
    (13, 14, 15, 16, 17, 19, 20, 21, 22, 23, AUDIT_WATCH, AUDIT_DIR, AUDIT_EXE, AUDIT_FILTERKEY)
)

AUDIT_BIT_MASK = 0x08000000
AUDIT_LESS_THAN_OR_EQUAL = 0x50000000
AUDIT_GREATER_THAN_OR_EQUAL = 0x60000000
AUDIT_NOT_EQUAL = 0x30000000
AUDIT_EQUAL = 0x40000000

AUDIT_PERM_EXEC = 1
AUDIT_PERM_WRITE = 2
AUDIT_PERM_READ = 4
AUDIT_PERM_ATTR = 8
PERM_LETTERS = {"r": AUDIT_PERM_READ, "w": AUDIT_PERM_WRITE, "a": AUDIT_PERM_ATTR}

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
# Several keys on one rule are joined with this byte (auditctl's AUDIT_KEY_SEPARATOR).
KEY_SEPARATOR = "\x01"
# Every syscall but the syscall-class bits of the last mask word, as auditctl's "-S all".
ALL_SYSCALLS = frozenset(range(32 * (64 - 1)))

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
# Syscalls a sensor may ask for one by one (audit_records): none of them is used by the other
# audit sensors, so a rule for one can never take another sensor's events.
SINGLE_CALLS = (
    "mknod",
    "mknodat",
    "personality",
    "memfd_create",
    "init_module",
    "finit_module",
    "delete_module",
    "syslog",
    "sysinfo",
)


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
# Calls that act on a path or an open file: what a file watch can record, named so the records
# of a watch say which call it was (the AUDIT_PERM classes of include/asm-generic/audit_*.h
# and the open calls).
_FILE_CALLS_X86_64 = _table(
    open=2, openat=257, openat2=437, creat=85, truncate=76, ftruncate=77, rename=82,
    renameat=264, renameat2=316, mkdir=83, mkdirat=258, rmdir=84, link=86, linkat=265,
    unlink=87, unlinkat=263, symlink=88, symlinkat=266, chmod=90, fchmod=91, fchmodat=268,
    fchmodat2=452, chown=92, fchown=93, lchown=94, fchownat=260, setxattr=188, lsetxattr=189,
    fsetxattr=190, getxattr=191, lgetxattr=192, fgetxattr=193, listxattr=194, llistxattr=195,
    flistxattr=196, removexattr=197, lremovexattr=198, fremovexattr=199, utime=132,
    utimes=235, utimensat=280, futimesat=261, readlink=89, readlinkat=267, fallocate=285,
    acct=163, swapon=167, quotactl=179,
)  # fmt: skip
_FILE_CALLS_I386 = _table(
    open=5, openat=295, openat2=437, creat=8, truncate=92, ftruncate=93, truncate64=193,
    ftruncate64=194, rename=38, renameat=302, renameat2=353, mkdir=39, mkdirat=296, rmdir=40,
    link=9, linkat=303, unlink=10, unlinkat=301, symlink=83, symlinkat=304, chmod=15,
    fchmod=94, fchmodat=306, fchmodat2=452, chown=182, fchown=95, lchown=16, fchownat=298,
    chown32=212, fchown32=207, lchown32=198, setxattr=226, lsetxattr=227, fsetxattr=228,
    getxattr=229, lgetxattr=230, fgetxattr=231, listxattr=232, llistxattr=233, flistxattr=234,
    removexattr=235, lremovexattr=236, fremovexattr=237, utime=30, utimes=271, utimensat=320,
    utimensat_time64=412, futimesat=299, readlink=85, readlinkat=305, fallocate=324, acct=51,
    swapon=87, quotactl=131,
)  # fmt: skip
_FILE_CALLS_AARCH64 = _table(
    openat=56, openat2=437, truncate=45, ftruncate=46, renameat=38, renameat2=276, mkdirat=34,
    linkat=37, unlinkat=35, symlinkat=36, fchmod=52, fchmodat=53, fchmodat2=452, fchown=55,
    fchownat=54, setxattr=5, lsetxattr=6, fsetxattr=7, getxattr=8, lgetxattr=9, fgetxattr=10,
    listxattr=11, llistxattr=12, flistxattr=13, removexattr=14, lremovexattr=15,
    fremovexattr=16, utimensat=88, readlinkat=78, fallocate=47, acct=89, swapon=224,
    quotactl=60,
)  # fmt: skip
_FILE_CALLS_ARM = _table(
    open=5, openat=322, openat2=437, creat=8, truncate=92, ftruncate=93, truncate64=193,
    ftruncate64=194, rename=38, renameat=329, renameat2=382, mkdir=39, mkdirat=323, rmdir=40,
    link=9, linkat=330, unlink=10, unlinkat=328, symlink=83, symlinkat=331, chmod=15,
    fchmod=94, fchmodat=333, fchmodat2=452, chown=182, fchown=95, lchown=16, fchownat=325,
    chown32=212, fchown32=207, lchown32=198, setxattr=226, lsetxattr=227, fsetxattr=228,
    getxattr=229, lgetxattr=230, fgetxattr=231, listxattr=232, llistxattr=233, flistxattr=234,
    removexattr=235, lremovexattr=236, fremovexattr=237, utimes=269, utimensat=348,
    utimensat_time64=412, futimesat=326, readlink=85, readlinkat=332, fallocate=352, acct=51,
    swapon=87, quotactl=131,
)  # fmt: skip
# And these older calls (arch/x86/entry/syscalls/syscall_32.tbl, arch/arm/tools/syscall.tbl).
_SINGLE_CALLS_32 = _table(
    mknod=14,
    syslog=103,
    sysinfo=116,
    init_module=128,
    delete_module=129,
    personality=136,
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
        sysinfo=99,
        syslog=103,
        mknod=133,
        personality=135,
        init_module=175,
        delete_module=176,
        mknodat=259,
        finit_module=313,
        memfd_create=319,
        **_FILE_CALLS_X86_64,
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
        **_SINGLE_CALLS_32,
        mknodat=297,
        finit_module=350,
        memfd_create=356,
        **_FILE_CALLS_I386,
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
        mknodat=33,
        personality=92,
        init_module=105,
        delete_module=106,
        syslog=116,
        sysinfo=179,
        finit_module=273,
        memfd_create=279,
        **_FILE_CALLS_AARCH64,
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
        **_SINGLE_CALLS_32,
        mknodat=324,
        finit_module=379,
        memfd_create=385,
        **_FILE_CALLS_ARM,
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
        """The rule's filter key (``-k``), if it has one; of several keys, the first."""
        for field, _op, value in self.fields:
            if field == AUDIT_FILTERKEY and isinstance(value, str):
                return value.split(KEY_SEPARATOR, 1)[0]
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

        The filter key, watched paths and executable paths are decoded from the string buffer;
        other string fields (security labels) are kept as their length.
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
            if field in (AUDIT_FILTERKEY, AUDIT_WATCH, AUDIT_DIR, AUDIT_EXE):
                parsed.append((field, op, buf[pos : pos + value].decode(errors="replace")))
            else:
                parsed.append((field, op, value))
            if field in STRING_FIELDS:
                pos += value
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


def all_syscall_names() -> dict[int, dict[int, str]]:
    """:func:`syscall_names` for every ABI this module knows, whatever this machine is."""
    return {arch.audit_arch: arch.names for arch in (X86_64, I386, AARCH64, ARM)}


# struct audit_rule_data's syscall mask with every bit set (auditctl's "all").
_ALL_SYSCALLS = frozenset(range(AUDIT_BITMASK_SIZE * 32))
AUDIT_PROCTITLE = 1327


def proctitle_exclusion() -> AuditRule:
    """An exclude-list rule that drops PROCTITLE records, host-wide.

    The kernel writes a PROCTITLE record for every audited syscall, reading the process's
    command line from its memory: three of the thirteen messages a short-lived process costs
    (fork, exec, exit). It adds nothing the agent uses: the EXECVE record has the whole argv,
    where PROCTITLE is cut at 128 bytes. The exclude list takes no filter key, so the hub knows
    this rule by its contents (:func:`is_vigil_rule`).
    """
    return AuditRule(
        flags=AUDIT_FILTER_EXCLUDE,
        action=AUDIT_ALWAYS,
        syscalls=_ALL_SYSCALLS,
        fields=((AUDIT_MSGTYPE, AUDIT_EQUAL, AUDIT_PROCTITLE),),
    )


def is_vigil_rule(rule: AuditRule) -> bool:
    """Whether a loaded rule is the agent's: keyed ``vigil*``, or its PROCTITLE exclusion."""
    if is_vigil_key(rule.key):
        return True
    ours = proctitle_exclusion()
    return (rule.flags, rule.action, rule.fields) == (ours.flags, ours.action, ours.fields)


def is_vigil_key(key: str | None) -> bool:
    """Whether a rule or record key is one of the agent's: ``vigil`` or ``vigil_*`` (first key)."""
    if not key:
        return False
    first = key.split(KEY_SEPARATOR, 1)[0]
    return first == RULE_KEY or first.startswith(RULE_KEY + "_")


def perm_mask(letters: str) -> int:
    """The ``AUDIT_PERM`` mask of ``auditctl -p`` letters: ``r`` read, ``w`` write, ``a`` attrs.

    Raises:
        ValueError: A letter is not one of ``rwa`` (``x`` is left to the process sensor), or
            there is none.
    """
    if not letters or any(letter not in PERM_LETTERS for letter in letters):
        raise ValueError(f"access {letters!r} is not a combination of r, w and a")
    mask = 0
    for letter in letters:
        mask |= PERM_LETTERS[letter]
    return mask


def watch_rule(path: str, perm: int, key: str, directory: bool = False) -> AuditRule:
    """A file watch as ``auditctl -w PATH -p PERM -k KEY`` loads it, on every syscall.

    Args:
        path: Absolute path without a trailing slash; a file need not exist yet if its folder
            does (the kernel arms the watch when it is created).
        perm: ``AUDIT_PERM_*`` bits (see :func:`perm_mask`).
        key: The rule's key.
        directory: Watch the whole tree under ``path`` (``AUDIT_DIR``) rather than one inode.
    """
    return AuditRule(
        flags=AUDIT_FILTER_EXIT,
        action=AUDIT_ALWAYS,
        syscalls=ALL_SYSCALLS,
        fields=(
            (AUDIT_DIR if directory else AUDIT_WATCH, AUDIT_EQUAL, path),
            (AUDIT_PERM, AUDIT_EQUAL, perm),
            (AUDIT_FILTERKEY, AUDIT_EQUAL, key),
        ),
    )


# Arguments that single out the calls worth a record: syslog(2) actions 4 to 6 clear the kernel
# log or silence the console (SigmaHQ lnx_auditd_clean_disable_dmesg_logs_via_syslog).
SINGLE_CALL_FILTERS: dict[str, tuple[tuple[int, int, int | str], ...]] = {
    "syslog": (
        (AUDIT_ARG0, AUDIT_GREATER_THAN_OR_EQUAL, 4),
        (AUDIT_ARG0, AUDIT_LESS_THAN_OR_EQUAL, 6),
    ),
}


def single_call_rules(
    names: tuple[str, ...], key: str, machine: str | None = None
) -> list[AuditRule]:
    """Exit rules for the named :data:`SINGLE_CALLS`, per ABI, successful or not.

    Calls with an argument filter (:data:`SINGLE_CALL_FILTERS`) get a rule each; the others
    share one rule per ABI. A call an ABI lacks (``mknod`` on aarch64) is left out there.

    Raises:
        ValueError: A name is not one of :data:`SINGLE_CALLS`.
    """
    unknown = [name for name in names if name not in SINGLE_CALLS]
    if unknown:
        raise ValueError(
            f"syscalls {', '.join(unknown)} cannot be asked for here; use some of "
            f"{', '.join(SINGLE_CALLS)}"
        )
    plain = tuple(name for name in names if name not in SINGLE_CALL_FILTERS)
    found = []
    for arch in arches_for(machine):
        if arch.of(*plain):
            found.append(_rule(arch, arch.of(*plain), key=key))
        for name in names:
            if name in SINGLE_CALL_FILTERS and arch.of(name):
                found.append(_rule(arch, arch.of(name), *SINGLE_CALL_FILTERS[name], key=key))
    return found
