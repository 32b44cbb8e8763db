"""File watches for SigmaHQ's auditd PATH rules: the default list, and turning it into rules.

SigmaHQ's ``rules/linux/auditd`` match ``type: PATH`` records on ``name``: the files an attacker
changes to persist or hide (``/etc/ld.so.preload``, shell profiles, PAM, systemd units, audit and
syslog configuration), the files system discovery reads (``/etc/issue``, ``/etc/*release``,
``/proc/version``, DMI) and the pid files BPFDoor leaves. :data:`DEFAULT_WATCHES` lists them, each
group under the rule it serves; :func:`resolve` turns a list into the watch rules to load here.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vigil.agent.audit import rules
from vigil.agent.errors import AgentError

_GLOB = re.compile(r"[*?[]")
# No program creates files in these: a missing one there stays missing.
_PSEUDO = ("/proc/", "/sys/")


@dataclass(frozen=True)
class Watch:
    """A path (``*`` allowed; a trailing ``/`` for a folder) and the access to record."""

    path: str
    perm: str = "wa"


# From SigmaHQ rules/linux/auditd (path/ and the PATH selections of the rules beside it).
DEFAULT_WATCHES: tuple[Watch, ...] = (
    # lnx_auditd_ld_so_preload_mod
    Watch("/etc/ld.so.preload"),
    # lnx_auditd_auditing_config_change
    Watch("/etc/audit/"),
    Watch("/etc/libaudit.conf"),
    Watch("/etc/audisp/"),
    # lnx_auditd_logging_config_change
    Watch("/etc/syslog.conf"),
    Watch("/etc/rsyslog.conf"),
    Watch("/etc/syslog-ng/syslog-ng.conf"),
    # lnx_auditd_magic_system_request_key
    Watch("/proc/sysrq-trigger"),
    Watch("/proc/sys/kernel/sysrq"),
    Watch("/etc/sysctl.conf"),
    # lnx_auditd_unix_shell_configuration_modification
    *(
        Watch(path)
        for path in (
            "/etc/shells",
            "/etc/profile",
            "/etc/profile.d/",
            "/etc/bash.bashrc",
            "/etc/bashrc",
            "/etc/zsh/zprofile",
            "/etc/zsh/zshrc",
            "/etc/zsh/zlogin",
            "/etc/zsh/zlogout",
            "/etc/csh.cshrc",
            "/etc/csh.login",
            "/root/.bashrc",
            "/root/.bash_profile",
            "/root/.profile",
            "/root/.zshrc",
            "/root/.zprofile",
        )
    ),
    *(
        Watch(f"/home/*/{name}")
        for name in (
            ".bashrc",
            ".zshrc",
            ".bash_profile",
            ".zprofile",
            ".profile",
            ".bash_login",
            ".bash_logout",
            ".zlogin",
            ".zlogout",
        )
    ),
    # lnx_auditd_keylogging_with_pam_d, lnx_auditd_password_policy_discovery (changes only:
    # every login reads these files)
    Watch("/etc/pam.d/"),
    Watch("/etc/login.defs"),
    Watch("/etc/security/pwquality.conf"),
    # lnx_auditd_systemd_service_creation
    Watch("/etc/systemd/system/"),
    Watch("/usr/lib/systemd/system/"),
    Watch("/root/.config/systemd/user/"),
    Watch("/home/*/.config/systemd/user/"),
    # lnx_auditd_system_info_discovery, lnx_auditd_system_info_discovery2: reads
    *(
        Watch(path, "r")
        for path in (
            "/etc/issue",
            "/etc/lsb-release",
            "/etc/redhat-release",
            "/etc/*release",
            "/etc/*version",
            "/proc/version",
            "/proc/scsi/scsi",
            "/proc/ide/hd0/model",
            "/sys/class/dmi/id/bios_version",
            "/sys/class/dmi/id/product_name",
            "/sys/class/dmi/id/chassis_vendor",
        )
    ),
    # lnx_auditd_bpfdoor_file_accessed: pid and lock files BPFDoor creates
    *(
        Watch(f"/var/run/{name}")
        for name in (
            "aepmonend.pid",
            "auditd.lock",
            "cma.lock",
            "console-kit.pid",
            "consolekit.pid",
            "daemon.pid",
            "hald-addon.pid",
            "hald-smartd.pid",
            "haldrund.pid",
            "hp-health.pid",
            "hpasmlit.lock",
            "hpasmlited.pid",
            "kdevrund.pid",
            "lldpad.lock",
            "mcelog.pid",
            "system.pid",
            "uvp-srv.pid",
            "vmtoolagt.pid",
            "xinetd.lock",
        )
    ),
)


@dataclass(frozen=True)
class WatchTarget:
    """One watch rule to load: the real path, its ``AUDIT_PERM`` bits, folder or file."""

    path: str
    perm: int
    directory: bool


def expand(pattern: str) -> list[str]:
    """The paths a watch names now: itself, or what its ``*`` matches (see :func:`resolve`)."""
    if not _GLOB.search(pattern):
        return [pattern]
    folder, leaf = os.path.split(pattern.rstrip("/"))
    suffix = "/" if pattern.endswith("/") else ""
    if _GLOB.search(leaf):
        return [path + suffix for path in sorted(glob.glob(pattern.rstrip("/")))]
    # A missing file under each existing folder is watched too (it may be created later).
    return [os.path.join(found, leaf) + suffix for found in sorted(glob.glob(folder))]


def resolve(watches: list[Watch], limit: int) -> tuple[list[WatchTarget], list[str], int]:
    """The watch rules to load for ``watches``.

    A path ending in ``/`` must be an existing folder. Otherwise an existing folder is watched
    as a tree, and a file when it exists or its folder does (outside ``/proc`` and ``/sys``).
    Symbolic links are resolved, and watches of one path are merged.

    Returns:
        The targets (at most ``limit``), the paths skipped because nothing could be watched
        there, and how many targets were over the limit.

    Raises:
        ValueError: A watch's path is not absolute or its access letters are not ``rwa``.
    """
    targets: dict[str, WatchTarget] = {}
    skipped: list[str] = []
    for watch in watches:
        if not watch.path.startswith("/"):
            raise ValueError(f"watch path {watch.path!r} is not absolute")
        mask = rules.perm_mask(watch.perm)
        paths = expand(watch.path)
        if not paths:
            skipped.append(watch.path)
        for path in paths:
            real = os.path.realpath(path)
            if os.path.isdir(real):
                directory = True
            elif os.path.exists(real) and not path.endswith("/"):
                directory = False
            elif (
                not path.endswith("/")
                and not real.startswith(_PSEUDO)
                and os.path.isdir(os.path.dirname(real))
            ):
                directory = False  # not there yet: the kernel arms the watch at its creation
            else:
                skipped.append(path)
                continue
            if real == "/":
                skipped.append(path)
                continue
            known = targets.get(real)
            perm = mask if known is None else known.perm | mask
            targets[real] = WatchTarget(real, perm, directory)
    ordered = list(targets.values())
    return ordered[:limit], skipped, max(0, len(ordered) - limit)


def parse_watches(sensor: str, name: str, value: Any) -> list[Watch]:
    """Watches from a policy option: paths, or ``{path, perm}`` mappings.

    Raises:
        AgentError: The option is not such a list; the message shows the accepted form.
    """
    form = f"{sensor} option {name} takes a list of paths or of {{path: /etc/x, perm: wa}}"
    if not isinstance(value, list):
        raise AgentError(f"{form}, not {type(value).__name__}")
    found = []
    for item in value:
        if isinstance(item, str):
            found.append(Watch(item))
        elif isinstance(item, Mapping) and isinstance(item.get("path"), str):
            unknown = set(item) - {"path", "perm"}
            perm = item.get("perm", "wa")
            if unknown or not isinstance(perm, str):
                raise AgentError(f"{form}; got {dict(item)!r}")
            found.append(Watch(item["path"], perm))
        else:
            raise AgentError(f"{form}; got {item!r}")
    return found
