"""A passive packet socket that receives only DNS traffic, filtered in the kernel.

One ``AF_PACKET``/``SOCK_DGRAM`` socket listens on every interface (``ETH_P_ALL``, bound to
none), or one socket per named interface. ``SOCK_DGRAM`` hands over packets from the IP header
on, whatever the link layer. A classic BPF program, attached with ``SO_ATTACH_FILTER`` before
the socket is bound, keeps UDP and TCP packets to or from port 53 and drops the rest in the
kernel, together with the outgoing copy of every loopback packet (loopback shows each packet
twice: once leaving, once arriving). Nothing is ever sent on these sockets.

References: packet(7), socket(7) ``SO_ATTACH_FILTER`` and ``SO_TIMESTAMPNS``,
Documentation/networking/filter.rst in the Linux sources.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import select
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

from vigil.agent.errors import AgentError

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35
PACKET_HOST = 0
PACKET_OUTGOING = 4
ARPHRD_LOOPBACK = 772
SNAP_LENGTH = 65535

# Classic BPF opcodes (linux/filter.h) and the ancillary offsets the program reads.
_LD_W_ABS = 0x20
_LD_H_ABS = 0x28
_LD_B_ABS = 0x30
_LD_H_IND = 0x48
_LDX_B_MSH = 0xB1
_ALU_RSH_K = 0x74
_JEQ_K = 0x15
_JSET_K = 0x45
_RET_K = 0x06
_SKF_AD_OFF = -0x1000
_SKF_AD_PKTTYPE = 4
_SKF_AD_HATYPE = 28

# (opcode, label if true, label if false, operand); a label names the instruction to go to,
# None means the next one. Offsets are from the start of the IP header.
_PROGRAM: tuple[tuple[str, int, str | None, str | None, int], ...] = (
    ("start", _LD_W_ABS, None, None, _SKF_AD_OFF + _SKF_AD_HATYPE),
    ("", _JEQ_K, None, "version", ARPHRD_LOOPBACK),
    ("", _LD_W_ABS, None, None, _SKF_AD_OFF + _SKF_AD_PKTTYPE),
    ("", _JEQ_K, "drop", None, PACKET_OUTGOING),
    ("version", _LD_B_ABS, None, None, 0),
    ("", _ALU_RSH_K, None, None, 4),
    ("", _JEQ_K, None, "ipv6", 4),
    ("", _LD_B_ABS, None, None, 9),
    ("", _JEQ_K, "v4_ports", None, 17),
    ("", _JEQ_K, None, "drop", 6),
    ("v4_ports", _LD_H_ABS, None, None, 6),
    ("", _JSET_K, "drop", None, 0x1FFF),
    ("", _LDX_B_MSH, None, None, 0),
    ("", _LD_H_IND, None, None, 0),
    ("", _JEQ_K, "accept", None, 53),
    ("", _LD_H_IND, None, None, 2),
    ("", _JEQ_K, "accept", "drop", 53),
    ("ipv6", _JEQ_K, None, "drop", 6),
    ("", _LD_B_ABS, None, None, 6),
    ("", _JEQ_K, "v6_ports", None, 17),
    ("", _JEQ_K, None, "drop", 6),
    ("v6_ports", _LD_H_ABS, None, None, 40),
    ("", _JEQ_K, "accept", None, 53),
    ("", _LD_H_ABS, None, None, 42),
    ("", _JEQ_K, "accept", "drop", 53),
    ("accept", _RET_K, None, None, SNAP_LENGTH),
    ("drop", _RET_K, None, None, 0),
)


def dns_filter() -> list[tuple[int, int, int, int]]:
    """The BPF program as ``(code, jt, jf, k)`` instructions, with labels turned into offsets."""
    where = {label: index for index, (label, *_rest) in enumerate(_PROGRAM) if label}
    program = []
    for index, (_label, code, if_true, if_false, operand) in enumerate(_PROGRAM):
        jt = where[if_true] - index - 1 if if_true else 0
        jf = where[if_false] - index - 1 if if_false else 0
        program.append((code, jt, jf, operand & 0xFFFFFFFF))
    return program


def attach_filter(sock: socket.socket, program: Sequence[tuple[int, int, int, int]]) -> None:
    """Attach a classic BPF program to ``sock`` (the kernel copies it)."""
    code = b"".join(struct.pack("HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HP", len(program), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured packet.

    Attributes:
        data: The packet from its IP header on.
        moment: When the kernel received it, seconds since the epoch.
        interface: The interface it was seen on.
        pkttype: ``PACKET_HOST`` (to this host), ``PACKET_OUTGOING`` (sent by it), or another
            ``PACKET_*`` value (broadcast, multicast, for another host).
        hatype: The interface's ARPHRD type (``ARPHRD_LOOPBACK`` for loopback).
    """

    data: bytes
    moment: float
    interface: str
    pkttype: int
    hatype: int


class PacketCapture:
    """Receive DNS packets on all interfaces or on the named ones.

    Args:
        interfaces: Interface names to capture on; empty or ``None`` for all of them.
        buffer_bytes: Receive buffer of each socket; a burst larger than this is dropped by the
            kernel and counted in :meth:`statistics`.
    """

    def __init__(self, interfaces: Sequence[str] | None, buffer_bytes: int) -> None:
        self.interfaces = list(interfaces or [])
        self.buffer_bytes = buffer_bytes
        self._sockets: list[socket.socket] = []

    def open(self) -> None:
        """Open, filter and bind the sockets.

        Raises:
            AgentError: A named interface does not exist, or the socket cannot be opened.
        """
        try:
            if self.interfaces:
                for name in self.interfaces:
                    self._sockets.append(self._open_one(name))
            else:
                self._sockets.append(self._open_one(None))
        except BaseException:
            self.close()
            raise

    def _open_one(self, interface: str | None) -> socket.socket:
        # Bound to no protocol, a packet socket receives nothing until bind(): the filter is in
        # place before the first packet. Python cannot bind to "no interface", so the
        # all-interfaces socket is created with ETH_P_ALL and may queue a few packets before
        # the filter is attached; the parser drops those that are not DNS.
        protocol = 0 if interface else socket.htons(ETH_P_ALL)
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, protocol)
        except OSError as exc:
            raise AgentError(
                f"cannot open a packet socket for DNS capture: {exc}; run the agent as root "
                "(it needs CAP_NET_RAW)"
            ) from exc
        try:
            attach_filter(sock, dns_filter())
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.buffer_bytes)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.buffer_bytes)
            if interface:
                sock.bind((interface, ETH_P_ALL))  # Python converts to network order here
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            if interface and exc.errno == errno.ENODEV:
                raise AgentError(
                    f"dns_interfaces names {interface!r}, which does not exist on this host: "
                    "list interfaces with `ip link`, or leave dns_interfaces unset for all"
                ) from exc
            raise AgentError(f"cannot set up DNS capture on {interface or 'all'}: {exc}") from exc
        return sock

    def read(self, timeout: float, limit: int) -> list[Frame]:
        """Wait up to ``timeout`` seconds for packets, then take what is queued.

        Args:
            timeout: Longest wait for the first packet, in seconds.
            limit: Most packets returned.

        Returns:
            The packets in the order each socket received them (possibly none).
        """
        readable, _, _ = select.select(self._sockets, [], [], timeout)
        frames: list[Frame] = []
        ancillary = socket.CMSG_SPACE(16)
        for sock in readable:
            while len(frames) < limit:
                try:
                    data, cmsgs, _flags, address = sock.recvmsg(SNAP_LENGTH, ancillary)
                except (BlockingIOError, InterruptedError):
                    break
                frames.append(Frame(data, _timestamp(cmsgs), address[0], address[2], address[3]))
        return frames

    def statistics(self) -> tuple[int, int]:
        """Packets received and packets dropped by the kernel since the last call (all sockets).

        ``PACKET_STATISTICS`` resets the kernel's counters on each read.
        """
        received = dropped = 0
        for sock in self._sockets:
            raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
            packets, drops = struct.unpack("II", raw)
            received += packets
            dropped += drops
        return received, dropped

    def close(self) -> None:
        """Close every socket (detaching the filters with them)."""
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()


def _timestamp(cmsgs: list[tuple[int, int, bytes]]) -> float:
    for level, kind, data in cmsgs:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds: int
            nanoseconds: int
            seconds, nanoseconds = struct.unpack("qq", data[:16])
            return seconds + nanoseconds / 1e9
    return time.time()
