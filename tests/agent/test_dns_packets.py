"""dns_capture parsing: IP and transport headers, TCP framing, DNS messages, the BPF program."""

from __future__ import annotations

import socket
import struct

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from vigil.agent.dnscap.capture import SNAP_LENGTH, dns_filter
from vigil.agent.dnscap.messages import MAX_ANSWERS, MessageError, parse_message
from vigil.agent.dnscap.packets import PacketError, parse_ip, tcp_messages


def _udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def _tcp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x18, 65535, 0, 0) + payload


def _ipv4(protocol: int, transport: bytes, src: str = "10.0.0.1", dst: str = "10.0.0.53") -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(transport),
        1,
        0,
        64,
        protocol,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return header + transport


def _ipv6(next_header: int, transport: bytes, src: str = "fd00::1", dst: str = "fd00::53") -> bytes:
    header = struct.pack("!IHBB", 6 << 28, len(transport), next_header, 64)
    return (
        header
        + socket.inet_pton(socket.AF_INET6, src)
        + socket.inet_pton(socket.AF_INET6, dst)
        + transport
    )


def test_ipv4_udp_query_with_ethernet_padding() -> None:
    packet = _ipv4(17, _udp(40000, 53, b"\x12\x34")) + b"\0" * 18
    segment = parse_ip(packet)
    assert segment is not None
    assert (segment.network, segment.transport) == ("ipv4", "udp")
    assert (segment.src_ip, segment.src_port) == ("10.0.0.1", 40000)
    assert (segment.dst_ip, segment.dst_port) == ("10.0.0.53", 53)
    assert segment.payload == b"\x12\x34"


def test_ipv6_tcp_answer() -> None:
    segment = parse_ip(_ipv6(6, _tcp(53, 40001, b"\x00\x02ab"), src="fd00::53", dst="fd00::1"))
    assert segment is not None
    assert (segment.network, segment.transport) == ("ipv6", "tcp")
    assert (segment.src_ip, segment.src_port, segment.dst_ip) == ("fd00::53", 53, "fd00::1")
    assert segment.payload == b"\x00\x02ab"


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(_ipv4(17, _udp(40000, 5353, b"x")), id="other-port"),
        pytest.param(_ipv4(1, b"\x08\x00" + b"\0" * 6), id="icmp"),
        pytest.param(_ipv6(0, b"\0" * 8 + _udp(40000, 53, b"x")), id="ipv6-extension-header"),
        pytest.param(b"\x10" + b"\0" * 30, id="not-ip"),
    ],
)
def test_packets_that_are_not_dns_are_skipped(packet: bytes) -> None:
    assert parse_ip(packet) is None


def test_ipv4_fragments_are_skipped() -> None:
    packet = bytearray(_ipv4(17, _udp(40000, 53, b"x")))
    packet[6:8] = struct.pack("!H", 0x2000)  # more fragments follow
    assert parse_ip(bytes(packet)) is None


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        pytest.param(b"", "empty", id="empty"),
        pytest.param(_ipv4(17, _udp(40000, 53, b"x"))[:15], "IPv4 header truncated", id="ipv4"),
        pytest.param(_ipv6(17, _udp(40000, 53, b"x"))[:30], "IPv6 header truncated", id="ipv6"),
        pytest.param(_ipv4(17, b"\0\x35"), "UDP header truncated", id="udp"),
        pytest.param(
            _ipv4(17, struct.pack("!HHHH", 40000, 53, 200, 0)), "UDP length 200", id="udp-length"
        ),
    ],
)
def test_truncated_packets_raise(packet: bytes, message: str) -> None:
    with pytest.raises(PacketError, match=message):
        parse_ip(packet)


def test_tcp_messages_split_whole_messages_and_flag_a_cut_one() -> None:
    assert tcp_messages(b"\x00\x02ab\x00\x01c") == ([b"ab", b"c"], False)
    assert tcp_messages(b"\x00\x02ab\x00\x05cd") == ([b"ab"], True)
    assert tcp_messages(b"\x01") == ([], True)


def test_query_fields() -> None:
    query = dns.message.make_query("Probe.Example.ORG.", "AAAA", want_dnssec=True)
    message = parse_message(query.to_wire())
    assert not message.is_response
    assert message.id == query.id
    assert message.question == {"name": "Probe.Example.ORG", "type": "AAAA", "class": "IN"}
    assert message.header == {"op_code": "QUERY", "header_flags": ["RD", "DO"]}
    assert message.answers == [] and message.resolved_ip == []


def test_answer_fields_with_cname_chain() -> None:
    query = dns.message.make_query("www.example.org", "A")
    response = dns.message.make_response(query)
    response.flags |= dns.flags.RA
    response.answer.append(
        dns.rrset.from_text("www.example.org.", 300, "IN", "CNAME", "edge.example.net.")
    )
    response.answer.append(
        dns.rrset.from_text("edge.example.net.", 20, "IN", "A", "192.0.2.7", "192.0.2.8")
    )
    message = parse_message(response.to_wire())
    assert message.is_response
    assert message.header == {
        "op_code": "QUERY",
        "header_flags": ["RD", "RA"],
        "response_code": "NOERROR",
    }
    assert message.answers[0] == {
        "name": "www.example.org",
        "type": "CNAME",
        "class": "IN",
        "ttl": 300,
        "data": "edge.example.net",
    }
    assert sorted(a["data"] for a in message.answers[1:]) == ["192.0.2.7", "192.0.2.8"]
    assert sorted(message.resolved_ip) == ["192.0.2.7", "192.0.2.8"]
    assert message.answers_count == 3


def test_nxdomain_and_root_name() -> None:
    response = dns.message.make_response(dns.message.make_query(".", "NS"))
    response.set_rcode(dns.rcode.NXDOMAIN)
    message = parse_message(response.to_wire())
    assert message.header["response_code"] == "NXDOMAIN"
    assert message.question["name"] == "."


def test_answers_are_capped_but_counted() -> None:
    response = dns.message.make_response(dns.message.make_query("many.example", "A"))
    addresses = [f"192.0.2.{i}" for i in range(1, 151)]
    response.answer.append(dns.rrset.from_text("many.example.", 60, "IN", "A", *addresses))
    message = parse_message(response.to_wire())
    assert len(message.answers) == MAX_ANSWERS
    assert message.answers_count == len(message.resolved_ip) == 150


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x12\x34garbage", id="short-header"),
        pytest.param(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fabc", id="bad-name"),
    ],
)
def test_malformed_messages_raise(wire: bytes) -> None:
    with pytest.raises(MessageError, match="not a DNS message"):
        parse_message(wire)


def test_filter_program_is_well_formed() -> None:
    program = dns_filter()
    assert len(program) < 256
    for index, (code, jt, jf, _k) in enumerate(program):
        if code & 0x07 == 0x05:  # a jump lands inside the program
            assert index + 1 + max(jt, jf) < len(program)
    returns = [k for code, _jt, _jf, k in program if code == 0x06]
    assert sorted(returns) == [0, SNAP_LENGTH]
    assert program[-1] == (0x06, 0, 0, 0)
