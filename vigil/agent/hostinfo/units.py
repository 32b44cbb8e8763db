"""systemd unit files and their enablement links (systemd.unit(5)).

Unit files are listed from the administrator's folder ``/etc/systemd/system`` and the vendor
folders ``/lib/systemd/system`` and ``/usr/lib/systemd/system`` (the same folder on merged-/usr
systems: each unit is listed once, under the first name). A symlink in a ``*.wants`` or
``*.requires`` folder under ``/etc/systemd/system`` enables a unit: it is listed as its own item
with ``wanted_by``, so enabling an existing unit is a change as much as dropping in a new one.
"""

from __future__ import annotations

import os

from vigil.agent.hostinfo.files import Item, sha256_file, under

UNIT_FOLDERS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
ENABLE_FOLDER = "/etc/systemd/system"
UNIT_SUFFIXES = (
    ".service",
    ".socket",
    ".timer",
    ".path",
    ".mount",
    ".automount",
    ".target",
    ".swap",
    ".slice",
    ".scope",
    ".device",
)


def _unit(path: str, host_path: str) -> Item:
    item: Item = {"name": os.path.basename(host_path), "path": host_path}
    if os.path.islink(path):
        item["target"] = os.readlink(path)
    else:
        item["sha256"] = sha256_file(path)
    return item


def collect(root: str) -> dict[str, Item]:
    """Unit files and enablement links keyed by their path on the host."""
    found: dict[str, Item] = {}
    seen_folders: set[str] = set()
    for host_folder in UNIT_FOLDERS:
        folder = under(root, host_folder)
        real = os.path.realpath(folder)
        if real in seen_folders or not os.path.isdir(folder):
            continue
        seen_folders.add(real)
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if name.endswith(UNIT_SUFFIXES) and (os.path.isfile(path) or os.path.islink(path)):
                host_path = f"{host_folder}/{name}"
                found[host_path] = _unit(path, host_path)

    enable_root = under(root, ENABLE_FOLDER)
    try:
        link_folders = sorted(os.listdir(enable_root))
    except OSError:
        link_folders = []
    for folder_name in link_folders:
        if not folder_name.endswith((".wants", ".requires")):
            continue
        folder = os.path.join(enable_root, folder_name)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if os.path.islink(path):
                host_path = f"{ENABLE_FOLDER}/{folder_name}/{name}"
                item = _unit(path, host_path)
                item["wanted_by"] = folder_name.rsplit(".", 1)[0]
                found[host_path] = item
    return found
