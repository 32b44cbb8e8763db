"""IPv4, IPv6, UDP and TCP headers of captured DNS packets.

The capture socket is a ``SOCK_DGRAM`` packet socket, so the kernel strips the link-layer
header (Ethernet, the Ethernet-style header of loopback, or none on tun and WireGuard devices)
and every captured buffer starts at the IP header. References: RFC 791 (IPv4), RFC 8200
(IPv6), RFC 768 (UDP), RFC 9293 (TCP), RFC 1035 section 4.2.2 (the two-byte length before each
DNS message on TCP).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

DNS_PORT = 53
IPPROTO_TCP = 6
IPPROTO_UDP = 17
_IPV4_MIN = 20
_IPV6_HEADER = 40
_UDP_HEADER = 8
_TCP_MIN = 20
# Flags and fragment offset of IPv4: more-fragments bit and the offset itself.
_IPV4_FRAGMENT = 0x3FFF


class PacketError(ValueError):
    """A captured packet is truncated or its headers contradict each other."""


@dataclass(frozen=True, slots=True)
class Segment:
    """The DNS payload of one UDP datagram or TCP segment, with its addresses.

    Attributes:
        network: ``ipv4`` or ``ipv6`` (ECS ``network.type``).
        transport: ``udp`` or ``tcp`` (ECS ``network.transport``).
        src_ip: Source address as text.
        src_port: Source port.
        dst_ip: Destination address as text.
        dst_port: Destination port.
        payload: The bytes after the transport header (on TCP still with length prefixes).
    """

    network: str
    transport: str
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    payload: bytes


def parse_ip(data: bytes) -> Segment | None:
    """Parse an IP packet carrying UDP or TCP to or from port 53.

    Args:
        data: The packet from its IP header on.

    Returns:
        The segment, or ``None`` for a packet that is not DNS as this sensor reads it: another
        protocol or port, an IPv4 fragment, or an IPv6 packet whose next header is an extension
        header.

    Raises:
        PacketError: The packet is truncated or malformed.
    """
    if not data:
        raise PacketError("empty packet")
    version = data[0] >> 4
    if version == 4:
        return _parse_ipv4(data)
    if version == 6:
        return _parse_ipv6(data)
    return None


def _parse_ipv4(data: bytes) -> Segment | None:
    header = (data[0] & 0x0F) * 4
    if len(data) < _IPV4_MIN or header < _IPV4_MIN or len(data) < header:
        raise PacketError(f"IPv4 header truncated ({len(data)} bytes)")
    total = int.from_bytes(data[2:4], "big")
    if total < header or total > len(data):
        raise PacketError(f"IPv4 total length {total} does not fit {len(data)} captured bytes")
    if int.from_bytes(data[6:8], "big") & _IPV4_FRAGMENT:
        return None
    source = socket.inet_ntop(socket.AF_INET, data[12:16])
    destination = socket.inet_ntop(socket.AF_INET, data[16:20])
    # Slicing to the total length drops the padding of short Ethernet frames.
    return _parse_transport("ipv4", data[9], source, destination, data[header:total])


def _parse_ipv6(data: bytes) -> Segment | None:
    if len(data) < _IPV6_HEADER:
        raise PacketError(f"IPv6 header truncated ({len(data)} bytes)")
    end = _IPV6_HEADER + int.from_bytes(data[4:6], "big")
    if end > len(data):
        raise PacketError(f"IPv6 payload length {end - 40} exceeds {len(data) - 40} bytes")
    source = socket.inet_ntop(socket.AF_INET6, data[8:24])
    destination = socket.inet_ntop(socket.AF_INET6, data[24:40])
    return _parse_transport("ipv6", data[6], source, destination, data[_IPV6_HEADER:end])


def _parse_transport(
    network: str, protocol: int, source: str, destination: str, data: bytes
) -> Segment | None:
    if protocol == IPPROTO_UDP:
        if len(data) < _UDP_HEADER:
            raise PacketError(f"UDP header truncated ({len(data)} bytes)")
        length = int.from_bytes(data[4:6], "big")
        if length < _UDP_HEADER or length > len(data):
            raise PacketError(f"UDP length {length} does not fit {len(data)} bytes")
        transport, payload = "udp", data[_UDP_HEADER:length]
    elif protocol == IPPROTO_TCP:
        if len(data) < _TCP_MIN:
            raise PacketError(f"TCP header truncated ({len(data)} bytes)")
        offset = (data[12] >> 4) * 4
        if offset < _TCP_MIN or offset > len(data):
            raise PacketError(f"TCP data offset {offset} does not fit {len(data)} bytes")
        transport, payload = "tcp", data[offset:]
    else:
        return None
    src_port = int.from_bytes(data[0:2], "big")
    dst_port = int.from_bytes(data[2:4], "big")
    if DNS_PORT not in (src_port, dst_port):
        return None
    return Segment(network, transport, source, src_port, destination, dst_port, payload)


def tcp_messages(payload: bytes) -> tuple[list[bytes], bool]:
    """Split a TCP segment's payload into the DNS messages it holds whole.

    Each message on TCP is preceded by its length in two bytes. A message split over several
    segments is not reassembled.

    Returns:
        The whole messages, and whether bytes were left over (a message cut at the segment end).
    """
    messages: list[bytes] = []
    position = 0
    while position + 2 <= len(payload):
        length = int.from_bytes(payload[position : position + 2], "big")
        end = position + 2 + length
        if length == 0 or end > len(payload):
            break
        messages.append(payload[position + 2 : end])
        position = end
    return messages, position != len(payload)
