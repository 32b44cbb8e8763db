"""What a triage bundle records of the running host: processes, sockets, recent telemetry.

Processes and sockets come from psutil, with the same ``process.entity_id`` as the agent's
telemetry (see ``vigil.agent.respond.live``). An executable is hashed through
``/proc/PID/exe``, which reaches the image the process runs even when its file was deleted or
replaced. Telemetry comes from the agent's memory (the newest events it spooled, sent or not)
and from the spool itself (events the server has not acknowledged yet).

Reference: proc(5) (``/proc/PID/exe``); psutil ``process_iter`` and ``net_connections``.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
from datetime import datetime
from typing import Any

import psutil

from vigil.agent.respond.live import process_entity, socket_address
from vigil.schema.ecs import iso_epoch

HASH_MAX_BYTES = 64 * 1024 * 1024
HASH_CHUNK = 1024 * 1024
PROCESS_ATTRS = [
    "pid",
    "ppid",
    "name",
    "exe",
    "cmdline",
    "username",
    "uids",
    "gids",
    "create_time",
    "status",
    "terminal",
    "cwd",
    "num_threads",
]
DELETED = " (deleted)"


def _exe_sha256(pid: int, cache: dict[tuple[int, int], str | None]) -> tuple[str | None, str]:
    """The sha256 of the image ``pid`` runs and, when there is none, why."""
    try:
        fd = os.open(f"/proc/{pid}/exe", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return None, f"cannot open /proc/{pid}/exe: {exc.strerror or exc}"
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        key = (info.st_dev, info.st_ino)
        if key in cache:
            return cache[key], ""
        if not stat.S_ISREG(info.st_mode):
            return None, "not a regular file"
        if info.st_size > HASH_MAX_BYTES:
            return None, f"{info.st_size} bytes, over {HASH_MAX_BYTES}"
        digest = hashlib.sha256()
        try:
            while chunk := handle.read(HASH_CHUNK):
                digest.update(chunk)
        except OSError as exc:
            return None, f"cannot read: {exc.strerror or exc}"
    cache[key] = digest.hexdigest()
    return cache[key], ""


def processes(agent_id: str, hash_executables: bool) -> list[dict[str, Any]]:
    """Every process: ids, parent, user, executable, full argv, start, state; sha256 if asked.

    Fields the agent may not read are null; ``exe_deleted`` is true when the executable's file
    is gone from disk.
    """
    entities: dict[int, str | None] = {}
    hashes: dict[tuple[int, int], str | None] = {}
    rows: list[dict[str, Any]] = []
    for process in psutil.process_iter(PROCESS_ATTRS, ad_value=None):
        info = process.info
        exe = info["exe"] or None
        uids, gids = info["uids"], info["gids"]
        row: dict[str, Any] = {
            "pid": info["pid"],
            "ppid": info["ppid"],
            "entity_id": process_entity(agent_id, info["pid"], entities),
            "parent_entity_id": (
                process_entity(agent_id, info["ppid"], entities) if info["ppid"] else None
            ),
            "name": info["name"],
            "exe": exe.removesuffix(DELETED) if exe else None,
            "exe_deleted": bool(exe and exe.endswith(DELETED)),
            "cmdline": info["cmdline"],
            "user": info["username"],
            "uid": uids.real if uids else None,
            "euid": uids.effective if uids else None,
            "gid": gids.real if gids else None,
            "egid": gids.effective if gids else None,
            "started": iso_epoch(info["create_time"]),
            "status": info["status"],
            "terminal": info["terminal"],
            "cwd": info["cwd"],
            "threads": info["num_threads"],
        }
        if hash_executables and exe:
            row["sha256"], why = _exe_sha256(info["pid"], hashes)
            if row["sha256"] is None:
                row["hash_skipped"] = why
        rows.append(row)
    return rows


def sockets(agent_id: str) -> list[dict[str, Any]]:
    """Every socket (TCP, UDP and Unix, IPv4 and IPv6) with its owner's pid and entity id.

    Raises:
        psutil.AccessDenied: the agent may not read the socket tables (not root).
    """
    names = {p.pid: p.info["name"] for p in psutil.process_iter(["name"], ad_value=None)}
    entities: dict[int, str | None] = {}
    rows = []
    for conn in psutil.net_connections(kind="all"):
        rows.append(
            {
                "family": socket.AddressFamily(conn.family).name,
                "type": socket.SocketKind(conn.type).name,
                "local": socket_address(conn.laddr),
                "remote": socket_address(conn.raddr),
                "status": conn.status,
                "fd": conn.fd if conn.fd != -1 else None,
                "pid": conn.pid,
                "process": names.get(conn.pid) if conn.pid is not None else None,
                "entity_id": (
                    None if conn.pid is None else process_entity(agent_id, conn.pid, entities)
                ),
            }
        )
    return rows


def _epoch(doc: dict[str, Any]) -> float | None:
    value = doc.get("@timestamp")
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def newest_events(events: list[dict[str, Any]], since: float, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` of ``events`` (oldest first) stamped at or after ``since``.

    An event without a readable ``@timestamp`` is kept: it is not known to be old.
    """
    kept = [e for e in events if (moment := _epoch(e)) is None or moment >= since]
    return kept[-limit:] if limit else []
