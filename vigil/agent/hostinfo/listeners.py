"""Listening sockets and the processes that own them, from psutil.

TCP sockets in ``LISTEN`` state and UDP sockets with no remote peer are listed. A listener is
keyed by transport, address, port and owning executable, so a service restarted under a new pid
is the same listener, and another program taking over a port is a new one. Without root, the
owners of other users' sockets are unknown (``pid`` is ``None``).
"""

from __future__ import annotations

import socket

import psutil

from vigil.agent.hostinfo.files import Item


def _owner(
    pid: int | None, cache: dict[int, tuple[str | None, str | None, int | None]]
) -> tuple[str | None, str | None, int | None]:
    if pid is None:
        return None, None, None
    if pid not in cache:
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                try:
                    executable: str | None = process.exe() or None
                except (psutil.AccessDenied, psutil.ZombieProcess):
                    executable = None
                cache[pid] = (process.name(), executable, process.uids().real)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            cache[pid] = (None, None, None)
    return cache[pid]


def collect() -> dict[str, Item]:
    """Listening TCP and unconnected UDP sockets keyed ``transport:ip:port:executable``."""
    found: dict[str, Item] = {}
    owners: dict[int, tuple[str | None, str | None, int | None]] = {}
    for connection in psutil.net_connections(kind="inet"):
        tcp = connection.type == socket.SOCK_STREAM
        if tcp and connection.status != psutil.CONN_LISTEN:
            continue
        if not tcp and connection.raddr:
            continue
        if not connection.laddr:
            continue
        name, executable, uid = _owner(connection.pid, owners)
        transport = "tcp" if tcp else "udp"
        ip, port = connection.laddr.ip, connection.laddr.port
        key = f"{transport}:{ip}:{port}:{executable or name or ''}"
        found[key] = {
            "transport": transport,
            "type": "ipv6" if connection.family == socket.AF_INET6 else "ipv4",
            "ip": ip,
            "port": port,
            "pid": connection.pid,
            "process_name": name,
            "executable": executable,
            "uid": uid,
        }
    return found
