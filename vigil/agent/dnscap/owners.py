"""Which process owns the local socket of a DNS exchange.

Two steps, both through procfs: the socket's inode from the table of the transport
(``/proc/net/udp``, ``udp6``, ``tcp``, ``tcp6``, matched on local address and port and, for a
connected socket, the peer), then the process holding that inode from the ``socket:[inode]``
links in ``/proc/<pid>/fd``. The tables are read at most once per batch of captured packets;
inode owners are cached, and a miss scans processes in the order most likely to hit: processes
that owned DNS sockets before, then processes started since the last scan, then the rest, within
a budget of fd links per scan so that a host with huge fd tables cannot stall the capture.
References: proc(5) ``/proc/net/udp`` and ``/proc/[pid]/fd``.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections import OrderedDict
from collections.abc import Iterable

log = logging.getLogger(__name__)

PROC = "/proc"
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"
_ANY = (_V4_MAPPED + b"\0" * 4, b"\0" * 16)
_RECENT_OWNERS = 64

# Local port -> (local address, remote address, remote port, inode) of each socket.
Table = dict[int, list[tuple[bytes, bytes, int, int]]]


def address_key(text: str) -> bytes:
    """An IP address as 16 bytes, IPv4 as IPv4-mapped IPv6 (how dual-stack sockets show it)."""
    if ":" in text:
        return socket.inet_pton(socket.AF_INET6, text)
    return _V4_MAPPED + socket.inet_pton(socket.AF_INET, text)


def _proc_address(field: str) -> tuple[bytes, int]:
    """Decode ``0100007F:0035``: the address is printed as 32-bit words in host byte order."""
    hex_address, _, hex_port = field.partition(":")
    raw = bytes.fromhex(hex_address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(raw) == 4:
        raw = _V4_MAPPED + raw
    return raw, int(hex_port, 16)


def read_table(path: str) -> Table:
    """Read one ``/proc/net`` socket table; a missing file (no IPv6, say) reads as empty."""
    table: Table = {}
    try:
        with open(path, encoding="ascii") as handle:
            lines = handle.read().splitlines()[1:]
    except OSError:
        return table
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or fields[9] == "0":
            continue
        local, port = _proc_address(fields[1])
        remote, remote_port = _proc_address(fields[2])
        table.setdefault(port, []).append((local, remote, remote_port, int(fields[9])))
    return table


class SocketOwners:
    """Find the socket inode and the process behind a local address and port.

    Args:
        proc: Where procfs is mounted.
        link_budget: Most fd links read by one scan for an inode's owner.
        cache_size: Most inode owners remembered.
    """

    def __init__(self, proc: str = PROC, link_budget: int = 20000, cache_size: int = 65536) -> None:
        self.proc = proc
        self.link_budget = link_budget
        self.cache_size = cache_size
        self.scans = 0
        self.exhausted = 0
        self._tables: dict[str, Table] = {}
        self._owners: OrderedDict[int, int] = OrderedDict()
        self._recent: OrderedDict[int, None] = OrderedDict()
        self._known_pids: set[int] = set()

    def refresh(self) -> None:
        """Forget the socket tables: the next lookup reads them again."""
        self._tables.clear()

    def _table(self, name: str) -> Table:
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = read_table(f"{self.proc}/net/{name}")
        return table

    def inode(
        self, transport: str, local_ip: str, local_port: int, peer_ip: str, peer_port: int
    ) -> int | None:
        """The inode of the socket that owns ``local_ip:local_port`` talking to the peer.

        Args:
            transport: ``udp`` or ``tcp``.
            local_ip: This host's address of the exchange.
            local_port: This host's port.
            peer_ip: The other end's address.
            peer_port: The other end's port.

        Returns:
            The inode, or ``None`` if no such socket exists (any more).
        """
        local = address_key(local_ip)
        peer = address_key(peer_ip)
        # IPv4 traffic comes from udp/tcp sockets or from dual-stack ones in udp6/tcp6.
        names = [transport, f"{transport}6"] if ":" not in local_ip else [f"{transport}6"]
        for name in names:
            inode = self._match(self._table(name).get(local_port, ()), local, peer, peer_port)
            if inode is not None:
                return inode
        return None

    @staticmethod
    def _match(
        entries: Iterable[tuple[bytes, bytes, int, int]], local: bytes, peer: bytes, peer_port: int
    ) -> int | None:
        best: tuple[int, int] | None = None
        for bound, remote, remote_port, inode in entries:
            if bound != local and bound not in _ANY:
                continue
            if remote_port and (remote, remote_port) != (peer, peer_port):
                continue
            # A connected socket is the surest match, then one bound to the exact address.
            score = (2 if remote_port else 0) + (1 if bound == local else 0)
            if best is None or score > best[0]:
                best = (score, inode)
        return None if best is None else best[1]

    def pid(self, inode: int) -> int | None:
        """The pid of a process holding the socket ``inode``, or ``None`` if none was found."""
        owner = self._owners.get(inode)
        if owner is not None and os.path.isdir(f"{self.proc}/{owner}"):
            self._owners.move_to_end(inode)
            return owner
        owner = self._scan(inode)
        if owner is not None:
            self._recent[owner] = None
            self._recent.move_to_end(owner, last=False)
            while len(self._recent) > _RECENT_OWNERS:
                self._recent.popitem()
        return owner

    def _scan(self, wanted: int) -> int | None:
        self.scans += 1
        target = f"socket:[{wanted}]"
        budget = [self.link_budget]
        # Recent owners first, before even listing /proc: long-lived resolvers ask again.
        for pid in list(self._recent):
            if self._holds(pid, target, budget):
                return pid
        try:
            pids = [int(entry) for entry in os.listdir(self.proc) if entry.isdigit()]
        except OSError:
            return None
        self._known_pids &= set(pids)
        pids.sort(reverse=True)
        # Then processes started since the last scan: short-lived resolvers are among them.
        order = [pid for pid in pids if pid not in self._known_pids and pid not in self._recent]
        order += [pid for pid in pids if pid in self._known_pids and pid not in self._recent]
        for pid in order:
            if self._holds(pid, target, budget):
                return pid
            if budget[0] <= 0:
                self.exhausted += 1
                log.debug("owner scan for socket %d stopped at its budget of fd links", wanted)
                return None
        return None

    def _holds(self, pid: int, target: str, budget: list[int]) -> bool:
        """Whether ``pid`` has the socket ``target`` open; remembers every socket seen."""
        directory = f"{self.proc}/{pid}/fd"
        try:
            fds = os.listdir(directory)
        except OSError:
            return False
        self._known_pids.add(pid)
        found = False
        for fd in fds:
            budget[0] -= 1
            try:
                link = os.readlink(f"{directory}/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                self._remember(int(link[8:-1]), pid)
                found = found or link == target
        return found

    def _remember(self, inode: int, pid: int) -> None:
        self._owners[inode] = pid
        self._owners.move_to_end(inode)
        if len(self._owners) > self.cache_size:
            self._owners.popitem(last=False)
