"""Loaded kernel modules from ``/proc/modules`` (proc(5))."""

from __future__ import annotations

from vigil.agent.hostinfo.files import Item, read_text, under


def collect(root: str) -> dict[str, Item]:
    """Loaded modules keyed by name, with their size in bytes."""
    found: dict[str, Item] = {}
    for line in (read_text(under(root, "/proc/modules")) or "").splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        # Reference counts, users and load state change all the time: only identity is kept.
        name, size = parts[0], parts[1]
        found[name] = {"name": name, "size": int(size) if size.isdigit() else None}
    return found
