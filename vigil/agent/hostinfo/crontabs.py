"""Scheduled jobs: the system crontab, ``/etc/cron.d``, user crontabs and the periodic folders.

Reference: crontab(5). User crontabs live in ``/var/spool/cron/crontabs`` (Debian) or
``/var/spool/cron`` (RHEL family); the file name is the user. Scripts in
``/etc/cron.{hourly,daily,weekly,monthly}`` run through run-parts and are listed by hash.
"""

from __future__ import annotations

import hashlib
import os

from vigil.agent.hostinfo.files import Item, list_files, read_text, sha256_file, under

SYSTEM_FILES = ("/etc/crontab", "/etc/anacrontab")
SYSTEM_FOLDERS = ("/etc/cron.d",)
USER_FOLDERS = ("/var/spool/cron/crontabs", "/var/spool/cron")
PERIODIC_FOLDERS = ("/etc/cron.hourly", "/etc/cron.daily", "/etc/cron.weekly", "/etc/cron.monthly")


def _entries(text: str) -> list[str]:
    return [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _crontab(path: str, host_path: str, user: str | None) -> Item | None:
    text = read_text(path)
    if text is None:
        return None
    item: Item = {
        "path": host_path,
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "entries": _entries(text),
    }
    if user is not None:
        item["user"] = user
    return item


def collect(root: str) -> dict[str, Item]:
    """Cron files keyed by their path on the host: hash and active lines (or just the hash)."""
    found: dict[str, Item] = {}
    for host_path in SYSTEM_FILES:
        item = _crontab(under(root, host_path), host_path, None)
        if item is not None:
            found[host_path] = item
    folders = [(f, False) for f in SYSTEM_FOLDERS] + [(f, True) for f in USER_FOLDERS]
    for host_folder, per_user in folders:
        for path in list_files(under(root, host_folder)):
            host_path = os.path.join(host_folder, os.path.basename(path))
            item = _crontab(path, host_path, os.path.basename(path) if per_user else None)
            if item is not None:
                found[host_path] = item
    for host_folder in PERIODIC_FOLDERS:
        for path in list_files(under(root, host_folder)):
            host_path = os.path.join(host_folder, os.path.basename(path))
            found[host_path] = {"path": host_path, "sha256": sha256_file(path)}
    return found
