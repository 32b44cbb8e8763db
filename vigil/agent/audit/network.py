"""Socket facts for network events: SOCKADDR records and a look at the socket itself.

A connect, bind or accept event carries one ``SOCKADDR`` record with the address the call
passed or returned, as the hex bytes of a ``struct sockaddr`` (``include/uapi/linux/in.h``,
``in6.h``): family in host order, then port in network order and the address. That is the
remote address of a connect and an accept and the local one of a bind; the other side, and the
transport, are not in the records.

:func:`probe_socket` fills them in from the socket: it duplicates the process's descriptor with
``pidfd_getfd`` (Linux 5.6+, needs ``CAP_SYS_PTRACE``) and asks the copy for its type,
protocol and both addresses. This runs on the audit receive thread while the socket most likely
still exists; a socket closed in between, or a descriptor number reused by then, is caught by
the callers, which compare the probe with the record before trusting it.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import logging
import os
import socket
import struct
from dataclasses import dataclass

log = logging.getLogger(__name__)

SYS_PIDFD_GETFD = 438  # the same number on every architecture (asm-generic table)
SOCKET_TYPES = {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp"}
_FAMILY = struct.Struct("=H")
_PORT = struct.Struct("!H")


@dataclass(frozen=True)
class Address:
    """One socket address: ``ip`` as text (IPv4-mapped IPv6 written as IPv4), ``port``."""

    ip: str
    port: int

    @property
    def network_type(self) -> str:
        """ECS ``network.type``: ``ipv4`` or ``ipv6``."""
        return "ipv6" if ":" in self.ip else "ipv4"


def _ip_text(raw: bytes) -> str:
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def parse_sockaddr(data: bytes) -> Address | None:
    """Decode an IPv4 or IPv6 ``struct sockaddr``; ``None`` for other families or short data."""
    if len(data) < _FAMILY.size:
        return None
    (family,) = _FAMILY.unpack_from(data)
    if family == socket.AF_INET and len(data) >= 8:
        return Address(_ip_text(data[4:8]), _PORT.unpack_from(data, 2)[0])
    if family == socket.AF_INET6 and len(data) >= 24:
        return Address(_ip_text(data[8:24]), _PORT.unpack_from(data, 2)[0])
    return None


def _address(value: object) -> Address | None:
    """An address as ``getsockname`` returns it for an IP socket."""
    if not isinstance(value, tuple) or len(value) < 2:
        return None
    host = str(value[0]).split("%", 1)[0]  # drop an IPv6 scope (fe80::1%eth0)
    return Address(_ip_text(ipaddress.ip_address(host).packed), int(value[1]))


@dataclass(frozen=True)
class SocketInfo:
    """What the socket said about itself when probed."""

    transport: str | None
    local: Address | None
    peer: Address | None
    listening: bool


class SocketProber:
    """Probes sockets of other processes through ``pidfd_getfd``.

    After the kernel refuses with ``EPERM`` or ``ENOSYS`` (no ptrace right, an old kernel) the
    prober stops trying and reports itself unavailable, so the cost is paid once.
    """

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.available = hasattr(os, "pidfd_open")
        self.reason = "" if self.available else "os.pidfd_open is missing (Python < 3.9?)"

    def probe(self, pid: int, fd: int) -> SocketInfo | None:
        """Look at descriptor ``fd`` of process ``pid``; ``None`` if it is gone or no IP socket."""
        if not self.available or fd < 0:
            return None
        copy = self._copy(pid, fd)
        if copy is None:
            return None
        try:
            sock = socket.socket(fileno=copy)
        except OSError:
            os.close(copy)  # not a socket
            return None
        try:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                return None
            return SocketInfo(
                transport=SOCKET_TYPES.get(sock.type),
                local=_address(sock.getsockname()),
                peer=_peer(sock),
                listening=bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)),
            )
        except (OSError, ValueError):
            log.debug("cannot read socket %d of pid %d", fd, pid, exc_info=True)
            return None
        finally:
            sock.close()  # closes our copy only

    def _copy(self, pid: int, fd: int) -> int | None:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return None
        try:
            copy = int(self._libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0))
        finally:
            os.close(pidfd)
        if copy >= 0:
            return copy
        code = ctypes.get_errno()
        if code in (errno.EPERM, errno.ENOSYS):
            self.available = False
            self.reason = f"pidfd_getfd refused: {os.strerror(code)}"
            log.warning(
                "cannot look at other processes' sockets (%s): network events will lack the "
                "local address and the transport; give the agent CAP_SYS_PTRACE",
                self.reason,
            )
        return None


def _peer(sock: socket.socket) -> Address | None:
    try:
        return _address(sock.getpeername())
    except OSError:
        return None  # not connected
