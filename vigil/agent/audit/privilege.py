"""Privilege changes from set*id and capset syscalls: what changed, before and after.

The SYSCALL record of a successful ``setuid`` (and its kin) reports the process's ids as of the
syscall's exit, that is after the change. The ids before come from what the agent knew of the
process (its last exec, its ``/proc`` status at scan, its fork, its previous change), so a call
that sets the ids a process already has is recognised and dropped: daemons and login tools make
many of them. ``setfsuid``/``setfsgid`` return the previous id, so for them the record alone
tells. A ``capset`` event carries a CAPSET record with the new sets, compared the same way.

Capability names are those of ``include/uapi/linux/capability.h``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from vigil.agent.audit.rules import GID_CALLS, UID_CALLS
from vigil.agent.processes import Caps, Creds

CAPABILITY_NAMES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)

UID_CHANGE = "uid_change"
GID_CHANGE = "gid_change"
CAPABILITIES_CHANGE = "capabilities_change"


def capability_names(mask: int) -> list[str]:
    """The names of the capabilities set in ``mask`` (unknown bits as ``CAP_<n>``)."""
    return [
        CAPABILITY_NAMES[bit] if bit < len(CAPABILITY_NAMES) else f"CAP_{bit}"
        for bit in range(64)
        if mask >> bit & 1
    ]


@dataclass(frozen=True)
class IdChange:
    """One uid or gid change: the action, and the ids after and (when known) before."""

    action: str
    after: Creds
    before: Creds | None


def id_change(call: str, fields: dict[str, str], before: Creds | None) -> IdChange | None:
    """The change a successful set*id call made, or ``None`` when it changed nothing.

    Args:
        call: The syscall's name (``setresuid``...).
        fields: Its SYSCALL record.
        before: The process's ids before the call as the agent knew them, or ``None``.

    Returns:
        ``None`` when the call is not a set*id call, the record lacks the ids, or the ids it
        governs are the same before and after. With ``before`` unknown the change is reported.
    """
    after = Creds.from_audit(fields)
    if after is None or call not in UID_CALLS + GID_CALLS:
        return None
    if call in ("setfsuid", "setfsgid"):
        # They return the previous filesystem id and succeed even when they change nothing.
        previous = int(fields.get("exit", "-1"))
        if previous < 0:
            return None
        before = (
            replace(after, fsuid=previous) if call == "setfsuid" else replace(after, fsgid=previous)
        )
    action = UID_CHANGE if call in UID_CALLS else GID_CHANGE
    if before is not None and _ids(action, before) == _ids(action, after):
        return None
    return IdChange(action, after, before)


def _ids(action: str, creds: Creds) -> tuple[int, int, int, int]:
    if action == UID_CHANGE:
        return creds.uid, creds.euid, creds.suid, creds.fsuid
    return creds.gid, creds.egid, creds.sgid, creds.fsgid


def id_fields(change: IdChange) -> dict[str, Any]:
    """ECS ``process`` fields of an id change: ids after, and ``process.previous`` before.

    Uses ``real_user``, ``user`` (effective) and ``saved_user`` (or the ``group`` forms), plus
    ``fs_user``/``fs_group`` for the filesystem id, which ECS does not name.
    """
    fields = _id_set(change.action, change.after)
    if change.before is not None:
        fields["previous"] = _id_set(change.action, change.before)
    return fields


def _id_set(action: str, creds: Creds) -> dict[str, Any]:
    real, effective, saved, fs = _ids(action, creds)
    kind = "user" if action == UID_CHANGE else "group"
    return {
        f"real_{kind}": {"id": str(real)},
        kind: {"id": str(effective)},
        f"saved_{kind}": {"id": str(saved)},
        f"fs_{kind}": {"id": str(fs)},
    }


def caps_from_record(fields: dict[str, str]) -> Caps | None:
    """The new capability sets of a CAPSET record (``cap_pe``, ``cap_pp``, ``cap_pi``)."""
    try:
        return Caps(int(fields["cap_pe"], 16), int(fields["cap_pp"], 16), int(fields["cap_pi"], 16))
    except (KeyError, ValueError):
        return None


def caps_fields(after: Caps, before: Caps | None) -> dict[str, Any]:
    """ECS ``process.thread.capabilities`` after, and ``process.previous`` before if known."""
    fields: dict[str, Any] = {"thread": {"capabilities": _caps(after)}}
    if before is not None:
        fields["previous"] = {"thread": {"capabilities": _caps(before)}}
    return fields


def _caps(caps: Caps) -> dict[str, list[str]]:
    return {
        "effective": capability_names(caps.effective),
        "permitted": capability_names(caps.permitted),
        "inheritable": capability_names(caps.inheritable),
    }
