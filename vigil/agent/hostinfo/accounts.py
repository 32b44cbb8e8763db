"""Local users and groups from ``/etc/passwd`` and ``/etc/group`` (passwd(5), group(5))."""

from __future__ import annotations

from vigil.agent.hostinfo.files import Item, read_text, under


def _records(root: str, path: str, fields: int) -> list[list[str]]:
    text = read_text(under(root, path)) or ""
    records = []
    for line in text.splitlines():
        if not line.strip() or line.startswith(("#", "+", "-")):
            continue  # comments and NIS compat entries
        parts = line.split(":")
        if len(parts) >= fields:
            records.append(parts)
    return records


def users(root: str) -> dict[str, Item]:
    """Users in ``/etc/passwd`` keyed by name: uid, gid, home, shell and comment."""
    return {
        name: {"name": name, "uid": uid, "gid": gid, "gecos": gecos, "home": home, "shell": shell}
        for name, _password, uid, gid, gecos, home, shell, *_rest in _records(
            root, "/etc/passwd", 7
        )
    }


def groups(root: str) -> dict[str, Item]:
    """Groups in ``/etc/group`` keyed by name: gid and sorted members."""
    return {
        name: {"name": name, "gid": gid, "members": sorted(m for m in members.split(",") if m)}
        for name, _password, gid, members, *_rest in _records(root, "/etc/group", 4)
    }
