"""Live views of the endpoint: its processes, its network connections, one file's details.

Three read-only actions under one permission, ``response.live``: ``live_processes``,
``live_connections`` and ``live_file_info``. Processes carry the same ``process.entity_id`` as
the agent's telemetry (``vigil.schema.ecs.entity_id`` of agent id, pid and start ticks), so a row
can be handed straight to kill, suspend or a YARA memory scan. Every list is capped.

Reference: proc(5); psutil ``process_iter`` and ``net_connections``.
"""

from __future__ import annotations

import grp
import hashlib
import logging
import os
import pwd
import socket
import stat
from typing import Any

import psutil

from vigil.agent.respond.base import Action
from vigil.agent.respond.errors import ResponseError
from vigil.agent.respond.kill import read_start_ticks
from vigil.agent.respond.triage_fs import kind_of
from vigil.schema.ecs import entity_id, iso_epoch

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 5000
MAX_LIMIT = 100_000
MAX_CMDLINE_CHARS = 4096
DEFAULT_MAX_HASH_BYTES = 256 * 1024 * 1024
HASH_CHUNK = 1024 * 1024
PROCESS_ATTRS = ["pid", "ppid", "name", "exe", "cmdline", "username", "cpu_times", "memory_info"]


def _limit(params: dict[str, Any], action: str) -> int:
    limit = params.get("limit", DEFAULT_LIMIT)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise ResponseError(f"{action}: 'limit' must be an integer from 1 to {MAX_LIMIT}")
    return limit


def process_entity(agent_id: str, pid: int, cache: dict[int, str | None]) -> str | None:
    """The ``process.entity_id`` of ``pid`` now (None if it is gone), remembered in ``cache``."""
    if pid not in cache:
        try:
            cache[pid] = entity_id(agent_id, pid, read_start_ticks(pid))
        except (ProcessLookupError, OSError, ValueError, IndexError):
            cache[pid] = None
    return cache[pid]


class LiveProcessesAction(Action):
    """List the running processes with their entity ids.

    Params:
        limit: Rows to return at most (default 5000); more sets ``truncated``.

    Returns ``{"processes": [...], "total": int, "truncated": bool}``; each row has ``pid``,
    ``ppid``, ``entity_id``, ``name``, ``exe``, ``cmdline`` (joined, capped at 4096 chars),
    ``user``, ``cpu_seconds`` (user plus system), ``rss_bytes`` and ``memory_percent``.
    Fields the agent may not read are null.
    """

    name = "live_processes"
    permission = "response.live"
    destructive = False

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """Walk the process table once and return the capped rows."""
        limit = _limit(params, self.name)
        total_memory = psutil.virtual_memory().total
        rows: list[dict[str, Any]] = []
        total = 0
        for process in psutil.process_iter(PROCESS_ATTRS, ad_value=None):
            info = process.info
            total += 1
            if len(rows) >= limit:
                continue
            eid = process_entity(self.context.agent_id, info["pid"], {})
            if eid is None:
                continue
            cmdline = " ".join(info["cmdline"] or [])
            cpu = info["cpu_times"]
            memory = info["memory_info"]
            rows.append(
                {
                    "pid": info["pid"],
                    "ppid": info["ppid"],
                    "entity_id": eid,
                    "name": info["name"],
                    "exe": info["exe"] or None,
                    "cmdline": cmdline[:MAX_CMDLINE_CHARS],
                    "user": info["username"],
                    "cpu_seconds": None if cpu is None else round(cpu.user + cpu.system, 2),
                    "rss_bytes": None if memory is None else memory.rss,
                    "memory_percent": (
                        None if memory is None else round(100 * memory.rss / total_memory, 2)
                    ),
                }
            )
        return {"processes": rows, "total": total, "truncated": total > len(rows)}


def socket_address(addr: Any) -> dict[str, Any] | None:
    """A psutil socket address as ``{ip, port}`` or ``{path}``; None when there is none."""
    if not addr:
        return None
    if isinstance(addr, str):
        return {"path": addr}
    return {"ip": addr.ip, "port": addr.port}


class LiveConnectionsAction(Action):
    """List the open sockets with the pid and entity id of their owner.

    Params:
        kind: psutil connection kind (default ``inet``: TCP and UDP over IPv4 and IPv6;
            also ``tcp``, ``udp``, ``unix``, ``all``...).
        limit: Rows to return at most (default 5000); more sets ``truncated``.

    Returns ``{"connections": [...], "total": int, "truncated": bool}``; each row has
    ``family``, ``type``, ``local``, ``remote`` (``{ip, port}`` or ``{path}``, or null),
    ``status``, ``pid`` and ``entity_id`` (null when the owner is unknown).
    """

    name = "live_connections"
    permission = "response.live"
    destructive = False

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """Read the socket tables once and return the capped rows."""
        limit = _limit(params, self.name)
        kind = params.get("kind", "inet")
        try:
            connections = psutil.net_connections(kind=kind)
        except ValueError as exc:
            raise ResponseError(f"{self.name}: {exc}; use for example 'inet' or 'tcp'") from exc
        except psutil.AccessDenied as exc:
            raise ResponseError(f"{self.name}: not allowed; run the agent as root") from exc

        cache: dict[int, str | None] = {}
        rows: list[dict[str, Any]] = []
        for conn in connections[:limit]:
            rows.append(
                {
                    "family": socket.AddressFamily(conn.family).name,
                    "type": socket.SocketKind(conn.type).name,
                    "local": socket_address(conn.laddr),
                    "remote": socket_address(conn.raddr),
                    "status": conn.status,
                    "pid": conn.pid,
                    "entity_id": (
                        None
                        if conn.pid is None
                        else process_entity(self.context.agent_id, conn.pid, cache)
                    ),
                }
            )
        total = len(connections)
        return {"connections": rows, "total": total, "truncated": total > len(rows)}


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _name_of(table: Any, key: int) -> str | None:
    try:
        return str(table(key)[0])
    except KeyError:
        return None


class LiveFileInfoAction(Action):
    """Describe one file: type, size, mode, owner, times and (up to a size cap) its sha256.

    Params:
        path: The file; a symlink is described itself, not followed.
        max_hash_bytes: Larger regular files are not hashed (default 256 MiB).

    Returns ``{"path", "type", "size", "mode" (octal text), "uid", "gid", "owner", "group",
    "atime", "mtime", "ctime" (ISO 8601 UTC), "inode", "links", "link_target",
    "sha256", "hash_skipped"}``; ``hash_skipped`` says why ``sha256`` is null.
    """

    name = "live_file_info"
    permission = "response.live"
    destructive = False

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """Stat the file, then hash it if it is a regular file under the cap."""
        path = params.get("path")
        if not isinstance(path, str) or not path:
            raise ResponseError(f"{self.name}: 'path' must be a file path")
        cap = params.get("max_hash_bytes", DEFAULT_MAX_HASH_BYTES)
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
            raise ResponseError(f"{self.name}: 'max_hash_bytes' must be a non-negative integer")
        try:
            info = os.stat(path, follow_symlinks=False)
        except OSError as exc:
            raise ResponseError(
                f"{self.name}: cannot stat {path!r}: {exc.strerror}; check the path"
            ) from exc

        kind = kind_of(info.st_mode)

        sha256: str | None = None
        hash_skipped: str | None = None
        if kind != "file":
            hash_skipped = f"not a regular file ({kind})"
        elif info.st_size > cap:
            hash_skipped = f"larger than max_hash_bytes ({info.st_size} > {cap})"
        else:
            try:
                sha256 = _sha256(path)
            except OSError as exc:
                hash_skipped = f"cannot read: {exc.strerror}"
        return {
            "path": path,
            "type": kind,
            "size": info.st_size,
            "mode": oct(stat.S_IMODE(info.st_mode)),
            "uid": info.st_uid,
            "gid": info.st_gid,
            "owner": _name_of(pwd.getpwuid, info.st_uid),
            "group": _name_of(grp.getgrgid, info.st_gid),
            "atime": iso_epoch(info.st_atime),
            "mtime": iso_epoch(info.st_mtime),
            "ctime": iso_epoch(info.st_ctime),
            "inode": info.st_ino,
            "links": info.st_nlink,
            "link_target": os.readlink(path) if kind == "symlink" else None,
            "sha256": sha256,
            "hash_skipped": hash_skipped,
        }
