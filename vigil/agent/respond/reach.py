"""What the host can reach, and what it is connected to: the evidence for isolation.

``tcp_probe`` tries one TCP connection and says how it ended; ``connections`` lists the live
TCP and connected UDP sockets with their owning process; ``default_gateway`` reads the IPv4
default route. All of it acts in the calling process's network namespace.

Reference: proc(5) (``/proc/net/route``), socket(7) (``SO_MARK``), psutil ``net_connections``.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any

import psutil

from vigil.agent.respond.errors import ResponseError

log = logging.getLogger(__name__)

# TCP states of a connection that is over or never was one; they are not "live".
_DEAD_STATES = {psutil.CONN_LISTEN, psutil.CONN_TIME_WAIT, psutil.CONN_CLOSE, psutil.CONN_NONE}


@dataclass
class Probe:
    """How one TCP connection attempt ended.

    Attributes:
        address: The address tried.
        port: The TCP port tried.
        reached: True if the connection was established.
        outcome: ``connected``, ``timeout``, ``refused`` (the remote, or something on the way,
            answered with a reset: the packet left the host), ``unreachable``, ``blocked_locally``
            (the kernel refused to send) or ``error``.
        detail: The error text, or how long the connection took.
        milliseconds: How long the attempt took.
    """

    address: str
    port: int
    reached: bool
    outcome: str
    detail: str
    milliseconds: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _outcome(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if exc.errno in (errno.EPERM, errno.EACCES):
        return "blocked_locally"
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    return "error"


def tcp_probe(address: str, port: int, timeout: float, mark: int | None = None) -> Probe:
    """Try one TCP connection to ``address``:``port`` and close it at once.

    Args:
        address: An IPv4 or IPv6 address (not a name: the probe must not depend on DNS).
        port: The TCP port.
        timeout: Seconds to wait for the connection.
        mark: A packet mark (``SO_MARK``, needs CAP_NET_ADMIN) so firewall rules can count the
            probe; without the capability the probe goes unmarked.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    started = time.monotonic()
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if mark is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            except OSError as exc:
                log.debug("cannot mark the probe to %s: %s", address, exc)
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
        except OSError as exc:
            elapsed = int((time.monotonic() - started) * 1000)
            detail = str(exc) if str(exc) else type(exc).__name__
            return Probe(address, port, False, _outcome(exc), detail, elapsed)
    elapsed = int((time.monotonic() - started) * 1000)
    return Probe(address, port, True, "connected", f"connected in {elapsed} ms", elapsed)


@dataclass
class Connection:
    """One live socket with a remote end, and the process that owns it."""

    transport: str
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    status: str
    pid: int | None
    process: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def connections() -> list[Connection]:
    """List the live TCP connections and connected UDP sockets of this network namespace.

    Raises:
        ResponseError: the socket table cannot be read (the agent is not root).
    """
    try:
        rows = psutil.net_connections(kind="inet")
    except psutil.AccessDenied as exc:
        raise ResponseError("isolate: cannot list connections; run the agent as root") from exc
    names: dict[int, str | None] = {}
    found: list[Connection] = []
    for row in rows:
        if not row.raddr or not row.laddr:
            continue
        tcp = row.type == socket.SOCK_STREAM
        if tcp and row.status in _DEAD_STATES:
            continue
        pid = row.pid
        if pid is not None and pid not in names:
            try:
                names[pid] = psutil.Process(pid).name()
            except (psutil.Error, OSError):
                names[pid] = None
        found.append(
            Connection(
                transport="tcp" if tcp else "udp",
                local_ip=row.laddr.ip,
                local_port=row.laddr.port,
                remote_ip=row.raddr.ip,
                remote_port=row.raddr.port,
                status=row.status if tcp else "CONNECTED",
                pid=pid,
                process=None if pid is None else names[pid],
            )
        )
    return found


def local_addresses() -> set[str]:
    """The addresses of this host's interfaces (traffic to them stays on loopback)."""
    addresses: set[str] = set()
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                addresses.add(entry.address.split("%", 1)[0])
    return addresses


def default_gateway() -> str | None:
    """The IPv4 default gateway from ``/proc/net/route``, or None without a default route."""
    try:
        with open("/proc/net/route", encoding="ascii") as handle:
            lines = handle.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000" and fields[2] != "00000000":
            return socket.inet_ntoa(int(fields[2], 16).to_bytes(4, "little"))
    return None
