"""dns_capture attribution: a local port and peer lead to the socket's inode and its process."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from vigil.agent.dnscap.owners import SocketOwners, address_key, read_table


@pytest.fixture
def udp_client() -> Iterator[socket.socket]:
    """A UDP socket connected to a port 53 nothing listens on (connect sends nothing)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.77", 53))
    try:
        yield sock
    finally:
        sock.close()


def test_address_key_maps_ipv4_like_dual_stack_sockets() -> None:
    assert address_key("127.0.0.1") == address_key("::ffff:127.0.0.1")
    assert len(address_key("fd00::1")) == 16


def test_connected_udp_socket_is_found_with_its_process(udp_client: socket.socket) -> None:
    local_ip, local_port = udp_client.getsockname()
    inode = os.fstat(udp_client.fileno()).st_ino
    owners = SocketOwners()
    assert owners.inode("udp", local_ip, local_port, "127.0.0.77", 53) == inode
    assert owners.pid(inode) == os.getpid()
    # The second lookup is answered from the cache of inode owners.
    scans = owners.scans
    assert owners.pid(inode) == os.getpid()
    assert owners.scans == scans


def test_wrong_peer_or_closed_socket_is_not_matched(udp_client: socket.socket) -> None:
    local_ip, local_port = udp_client.getsockname()
    owners = SocketOwners()
    assert owners.inode("udp", local_ip, local_port, "127.0.0.78", 53) is None
    udp_client.close()
    assert owners.inode("udp", local_ip, local_port, "127.0.0.77", 53) is not None
    owners.refresh()
    assert owners.inode("udp", local_ip, local_port, "127.0.0.77", 53) is None


def test_unconnected_ipv6_socket_bound_to_any() -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.bind(("::", 0))
        port = sock.getsockname()[1]
        owners = SocketOwners()
        inode = owners.inode("udp", "::1", port, "::1", 53)
        assert inode == os.fstat(sock.fileno()).st_ino
        assert owners.pid(inode) == os.getpid()
    finally:
        sock.close()


def test_missing_table_reads_as_empty(tmp_path: os.PathLike[str]) -> None:
    assert read_table(os.path.join(tmp_path, "no-such-table")) == {}


def test_scan_budget_bounds_the_search() -> None:
    owners = SocketOwners(link_budget=1)
    # An inode no process holds: the scan stops after one fd link instead of reading them all.
    assert owners.pid(2**31 - 7) is None
    assert owners.exhausted == 1
