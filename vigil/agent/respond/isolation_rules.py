"""What isolation lets through: the allow list, the nftables ruleset, and the same decision taken
for one connection.

``build_ruleset`` writes the plan as nftables rules; ``verdict`` reads the same plan for one
connection, so a dry run can tell which live connections isolation would cut without applying
anything. Keep the two in step: a rule added to one belongs in the other.

An allow entry is an IPv4 or IPv6 address or CIDR network, optionally with a port:
``192.0.2.7``, ``10.0.0.0/8``, ``192.0.2.8:443``, ``[2001:db8::1]:22``, ``[2001:db8::/64]:53``.
Without a port, all traffic with the entry is allowed in both directions. With a port, TCP and
UDP in which that port is the remote's (the host reaches that service) or the host's own (the
entry reaches the host's service on that port) are allowed, each direction only as a new flow
from the side that opens it plus its established replies.

Reference: nft(8), sections "PAYLOAD EXPRESSION" (``th``) and "CONNTRACK EXPRESSIONS".
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from vigil.agent.respond.errors import ResponseError

TABLE_FAMILY = "inet"
TABLE_NAME = "vigil_isolation"
# Packets of the agent's own blocked-address probe carry this mark (SO_MARK) and are counted by
# the last rule of the output chain, so the proof can tell "our table dropped it" from "the
# remote did not answer".
PROBE_MARK = 0x56494749
PROBE_COUNTER = "probe_drops"
MAX_ALLOW = 256

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_BRACKETED = re.compile(r"^\[(?P<address>[^\]]+)\](?::(?P<port>[^:]*))?$")
ALLOW_EXAMPLE = '["192.0.2.7", "10.0.0.0/8", "192.0.2.8:443", "[2001:db8::1]:22"]'


@dataclass(frozen=True)
class AllowEntry:
    """One allow-list entry: a network (a single address is a /32 or /128) and maybe a port."""

    network: IPNetwork
    port: int | None = None

    def __str__(self) -> str:
        if self.port is None:
            return str(self.network)
        if self.network.version == 6:
            return f"[{self.network}]:{self.port}"
        return f"{self.network}:{self.port}"

    def matches(self, remote: IPAddress, remote_port: int | None, local_port: int | None) -> bool:
        """Tell whether a connection with ``remote`` is let through by this entry."""
        if remote.version != self.network.version or remote not in self.network:
            return False
        return self.port is None or self.port in (remote_port, local_port)


def split_port(text: str, what: str) -> tuple[str, int | None]:
    """Split ``ADDRESS[/PREFIX][:PORT]`` (IPv6 with a port in brackets) into address and port.

    Raises:
        ResponseError: the port is not a number from 1 to 65535; the message names ``what``.
    """
    text = text.strip()
    bracketed = _BRACKETED.match(text)
    if bracketed:
        address, port_text = bracketed.group("address"), bracketed.group("port")
    elif text.count(":") == 1:
        address, port_text = text.split(":")
    else:
        address, port_text = text, None
    if port_text is None:
        return address, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ResponseError(f"{what}: port {port_text!r} in {text!r} is not a port (1-65535)")
    return address, int(port_text)


def parse_allow_entry(text: str) -> AllowEntry:
    """Read one allow entry (see the module docstring for the forms).

    Raises:
        ResponseError: the entry is not an address or network with an optional port, or it
            allows every address; the message names the entry.
    """
    address, port = split_port(text, "isolate: allow entry")
    try:
        network = ipaddress.ip_network(address, strict=False)
    except ValueError as exc:
        raise ResponseError(
            f"isolate: allow entry {text!r} is not an IP address or CIDR network with an optional "
            "port; write for example 192.0.2.7, 10.0.0.0/8, 192.0.2.8:443 or [2001:db8::1]:22"
        ) from exc
    if network.prefixlen == 0:
        raise ResponseError(
            f"isolate: allow entry {text!r} allows every address, which is no isolation; "
            "narrow the network, or release the host instead"
        )
    return AllowEntry(network, port)


def parse_allow(allow: object) -> list[AllowEntry]:
    """Check the ``allow`` parameter: a list of entries, each as ``parse_allow_entry`` reads.

    Raises:
        ResponseError: the parameter is not a list of strings, is too long, or an entry is bad.
    """
    if allow is None:
        return []
    if not isinstance(allow, list) or not all(isinstance(item, str) for item in allow):
        raise ResponseError(
            "isolate: 'allow' must be a list of addresses or CIDR networks, each optionally with "
            f"a port, e.g. {ALLOW_EXAMPLE} (on the command line: --param 'allow=[\"192.0.2.7\"]'),"
            f" got {allow!r}"
        )
    if len(allow) > MAX_ALLOW:
        raise ResponseError(
            f"isolate: 'allow' has {len(allow)} entries, more than {MAX_ALLOW}; use networks"
        )
    entries: list[AllowEntry] = []
    for item in allow:
        entry = parse_allow_entry(item)
        if entry not in entries:
            entries.append(entry)
    return entries


def _set(items: list[str]) -> str:
    return "{ " + ", ".join(items) + " }"


def _allow_rules(entries: list[AllowEntry]) -> tuple[list[str], list[str]]:
    """Input and output rules for the allow list."""
    inbound: list[str] = []
    outbound: list[str] = []
    for proto, version in (("ip", 4), ("ip6", 6)):
        whole = [str(e.network) for e in entries if e.network.version == version and e.port is None]
        if whole:
            inbound.append(f"{proto} saddr {_set(whole)} accept")
            outbound.append(f"{proto} daddr {_set(whole)} accept")
    for entry in entries:
        if entry.port is None:
            continue
        proto = "ip" if entry.network.version == 4 else "ip6"
        net, port = entry.network, entry.port
        l4 = "meta l4proto { tcp, udp }"
        # The entry's service on PORT: we open, it answers.
        outbound.append(f"{proto} daddr {net} {l4} th dport {port} accept")
        inbound.append(f"{proto} saddr {net} {l4} th sport {port} ct state established accept")
        # Our service on PORT: it opens, we answer.
        inbound.append(f"{proto} saddr {net} {l4} th dport {port} accept")
        outbound.append(f"{proto} daddr {net} {l4} th sport {port} ct state established accept")
    return inbound, outbound


def build_ruleset(server: list[str], port: int, allow: list[AllowEntry]) -> str:
    """Return the nft script that replaces the isolation table in one transaction.

    Args:
        server: The server's IPv4 and IPv6 addresses.
        port: The server's TCP port.
        allow: What the host may still talk to besides loopback and the server.
    """
    if not 0 < port < 65536:
        raise ResponseError(f"isolate: server port {port} is not a TCP port (1-65535)")
    server4 = [a for a in server if ipaddress.ip_address(a).version == 4]
    server6 = [a for a in server if ipaddress.ip_address(a).version == 6]

    inbound = ['iif "lo" accept']
    outbound = ['oif "lo" accept']
    for proto, addrs in (("ip", server4), ("ip6", server6)):
        if addrs:
            inbound.append(f"ct state established,related {proto} saddr {_set(addrs)} accept")
            inbound.append(f"{proto} saddr {_set(addrs)} tcp sport {port} accept")
            outbound.append(f"ct state established,related {proto} daddr {_set(addrs)} accept")
            outbound.append(f"{proto} daddr {_set(addrs)} tcp dport {port} accept")
    # Without neighbour discovery no IPv6 packet reaches even the server; without DHCP the host
    # loses its lease, and with it the server. Both stay on the local link.
    inbound += [
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert }"
        " ip6 hoplimit 255 accept",
        "udp sport 67 udp dport 68 accept",
        "udp sport 547 udp dport 546 accept",
    ]
    outbound += [
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept",
        "udp sport 68 udp dport 67 accept",
        "udp sport 546 udp dport 547 accept",
    ]
    allow_in, allow_out = _allow_rules(allow)
    inbound += allow_in
    outbound += allow_out
    # Last: count the agent's own probe as it is dropped (the policy would drop it anyway).
    outbound.append(f'meta mark {PROBE_MARK:#x} counter name "{PROBE_COUNTER}" drop')

    def chain(name: str, rules: list[str]) -> str:
        body = "".join(f"\t\t{rule}\n" for rule in rules)
        return (
            f"\tchain {name} {{\n"
            f"\t\ttype filter hook {name} priority filter; policy drop;\n{body}\t}}\n"
        )

    table = f"{TABLE_FAMILY} {TABLE_NAME}"
    return (
        # Declare, delete, recreate: one transaction whether or not the table exists already.
        f"table {table}\ndelete table {table}\n"
        f"table {table} {{\n"
        f"\tcounter {PROBE_COUNTER} {{\n\t}}\n"
        f"{chain('input', inbound)}{chain('output', outbound)}{chain('forward', [])}"
        "}\n"
    )


def verdict(
    remote: str,
    remote_port: int | None,
    local_port: int | None,
    *,
    server: list[str],
    allow: list[AllowEntry],
    local_addresses: set[str],
) -> str | None:
    """Say why isolation keeps a connection with ``remote``, or None when it cuts it.

    Mirrors ``build_ruleset``: traffic on loopback (which includes the host's own addresses),
    established traffic with the server's addresses, and the allow list are kept.
    """
    address = normalize_address(remote)
    if address.is_loopback or str(address) in local_addresses:
        return "loopback"
    if str(address) in server:
        return "server"
    for entry in allow:
        if entry.matches(address, remote_port, local_port):
            return f"allow {entry}"
    return None


def normalize_address(text: str) -> IPAddress:
    """An address as nftables sees it: no IPv6 zone, and IPv4-mapped IPv6 as plain IPv4."""
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
