"""DNS messages read with dnspython and turned into ECS ``dns.*`` fields.

Names are written without the final dot (the root stays ``.``), in the case and the ASCII
(punycode) form they had on the wire. References: RFC 1035 section 4.1 (message format),
RFC 6891 (EDNS and the DO bit), ECS ``dns`` field set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

# Most answer records kept in one event; the rest are counted in dns.answers_count only.
MAX_ANSWERS = 100
_NAME_DATA = {
    dns.rdatatype.CNAME,
    dns.rdatatype.DNAME,
    dns.rdatatype.NS,
    dns.rdatatype.PTR,
}
_ADDRESSES = {dns.rdatatype.A, dns.rdatatype.AAAA}
# Header flags in packetbeat's order, as plain ints: testing enum flags costs more than parsing.
_HEADER_FLAGS = [
    (int(flag), flag.name)
    for flag in (
        dns.flags.AA,
        dns.flags.TC,
        dns.flags.RD,
        dns.flags.RA,
        dns.flags.AD,
        dns.flags.CD,
    )
]


class MessageError(ValueError):
    """A payload on port 53 is not a DNS message dnspython can read."""


@dataclass(frozen=True, slots=True)
class Message:
    """The parts of one DNS message an event is built from.

    Attributes:
        id: The 16-bit transaction id.
        is_response: The QR bit: a response rather than a query.
        question: ECS ``dns.question`` (name, type, class), empty without a question.
        header: ECS ``dns`` fields of the header: ``op_code``, ``header_flags``, and for a
            response ``response_code``.
        answers: ECS ``dns.answers`` (name, type, class, ttl, data), at most ``MAX_ANSWERS``.
        answers_count: How many answer records the message held.
        resolved_ip: The A and AAAA addresses among the answers, in order, without repeats.
    """

    id: int
    is_response: bool
    question: dict[str, str]
    header: dict[str, Any]
    answers: list[dict[str, Any]]
    answers_count: int
    resolved_ip: list[str]


def name_text(name: dns.name.Name) -> str:
    """A DNS name as ECS writes it: no final dot, except for the root itself."""
    return name.to_text(omit_final_dot=True)


def parse_message(wire: bytes) -> Message:
    """Parse one DNS message.

    Args:
        wire: The message as sent, without the TCP length prefix.

    Raises:
        MessageError: The bytes are not a readable DNS message.
    """
    try:
        message = dns.message.from_wire(wire, ignore_trailing=True)
    except (dns.exception.DNSException, ValueError, IndexError) as exc:
        raise MessageError(f"not a DNS message ({type(exc).__name__}: {exc})") from exc

    is_response = bool(message.flags & dns.flags.QR)
    flags = [name for bit, name in _HEADER_FLAGS if message.flags & bit]
    if message.ednsflags & dns.flags.DO:
        flags.append("DO")
    header: dict[str, Any] = {
        "op_code": dns.opcode.to_text(message.opcode()),
        "header_flags": flags,
    }
    if is_response:
        header["response_code"] = dns.rcode.to_text(message.rcode())

    question: dict[str, str] = {}
    if message.question:
        asked = message.question[0]
        question = {
            "name": name_text(asked.name),
            "type": dns.rdatatype.to_text(asked.rdtype),
            "class": dns.rdataclass.to_text(asked.rdclass),
        }

    answers: list[dict[str, Any]] = []
    resolved: list[str] = []
    count = 0
    for rrset in message.answer:
        for rdata in rrset:
            count += 1
            if rrset.rdtype in _ADDRESSES and rdata.address not in resolved:
                resolved.append(rdata.address)
            if len(answers) < MAX_ANSWERS:
                answers.append(_answer(rrset, rdata))
    return Message(message.id, is_response, question, header, answers, count, resolved)


def _answer(rrset: dns.rrset.RRset, rdata: Any) -> dict[str, Any]:
    if rrset.rdtype in _NAME_DATA:
        data = name_text(rdata.target)
    else:
        data = rdata.to_text()
    return {
        "name": name_text(rrset.name),
        "type": dns.rdatatype.to_text(rrset.rdtype),
        "class": dns.rdataclass.to_text(rrset.rdclass),
        "ttl": rrset.ttl,
        "data": data,
    }
