"""Network isolation of the endpoint with nftables, and its release.

Isolation is one ``inet`` table, ``vigil_isolation``, whose input, output and forward chains drop
everything except loopback, the agent's channel to the server (its address and port, and
established or related traffic with it), IPv6 neighbour discovery and DHCP (so the host keeps its
address and can reach the server on its link), and an optional allow list of addresses or
networks. The table is replaced in one ``nft -f`` transaction, for IPv4 and IPv6 together.

The applied state is saved to ``isolation.json`` in the agent's state folder, so the agent can
apply it again when it starts (nftables rules do not survive a reboot) and so release can undo it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vigil.agent.respond import nft
from vigil.agent.respond.base import Action, ActionContext
from vigil.agent.respond.errors import ResponseError
from vigil.schema.ecs import utc_now_iso

log = logging.getLogger(__name__)

TABLE_FAMILY = "inet"
TABLE_NAME = "vigil_isolation"
STATE_FILE = "isolation.json"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class IsolationState:
    """What was applied: the server's name, its addresses and port, and the allow list."""

    server_host: str
    server_port: int
    server: list[str]
    allow: list[str]
    applied_at: str


def resolve_server(host: str, port: int) -> list[str]:
    """Resolve the server's name to its IPv4 and IPv6 addresses (an address resolves to itself).

    Call this before any rule drops traffic: DNS is blocked once the host is isolated.

    Raises:
        ResponseError: the name does not resolve; isolation must not be applied then, or the
            agent would lose its server.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ResponseError(
            f"cannot resolve the server host {host!r}: {exc}; isolation was not applied, "
            "check the agent's server address and DNS"
        ) from exc
    addresses: list[str] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        # Drop an IPv6 zone ("fe80::1%eth0"): nft matches on the address alone.
        address = str(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise ResponseError(
            f"the server host {host!r} has no IPv4 or IPv6 address; isolation was not applied"
        )
    return addresses


def parse_allow(allow: Any) -> list[IPNetwork]:
    """Check the ``allow`` parameter: a list of IPv4/IPv6 addresses or networks (CIDR).

    Raises:
        ResponseError: the parameter is not a list of strings, or an entry is not an address or
            network; the message names the entry.
    """
    if allow is None:
        return []
    if not isinstance(allow, list) or not all(isinstance(item, str) for item in allow):
        raise ResponseError(
            f"isolate: 'allow' must be a list of addresses or CIDR networks, got {allow!r}"
        )
    networks: list[IPNetwork] = []
    for item in allow:
        try:
            network = ipaddress.ip_network(item.strip(), strict=False)
        except ValueError as exc:
            raise ResponseError(
                f"isolate: allow entry {item!r} is not an IP address or CIDR network; "
                "give addresses such as 192.0.2.7 or 2001:db8::/64"
            ) from exc
        if network not in networks:
            networks.append(network)
    return networks


def _set(items: list[str]) -> str:
    return "{ " + ", ".join(items) + " }"


def build_ruleset(server: list[str], port: int, allow: list[IPNetwork]) -> str:
    """Return the nft script that replaces the isolation table in one transaction.

    Args:
        server: The server's IPv4 and IPv6 addresses.
        port: The server's TCP port.
        allow: Extra addresses or networks the host may still talk to, in both directions.
    """
    if not 0 < port < 65536:
        raise ResponseError(f"isolate: server port {port} is not a TCP port (1-65535)")
    server4 = [a for a in server if ipaddress.ip_address(a).version == 4]
    server6 = [a for a in server if ipaddress.ip_address(a).version == 6]
    allow4 = [str(n) for n in allow if n.version == 4]
    allow6 = [str(n) for n in allow if n.version == 6]

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
    for proto, nets in (("ip", allow4), ("ip6", allow6)):
        if nets:
            inbound.append(f"{proto} saddr {_set(nets)} accept")
            outbound.append(f"{proto} daddr {_set(nets)} accept")

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
        f"{chain('input', inbound)}{chain('output', outbound)}{chain('forward', [])}"
        "}\n"
    )


def state_path(context: ActionContext) -> Path:
    """Where the applied isolation is saved for ``context``'s agent."""
    return Path(context.state_dir) / STATE_FILE


def load_state(context: ActionContext) -> IsolationState | None:
    """Read the saved isolation, or None if the host was not isolated by the agent.

    Raises:
        ResponseError: the state file exists but cannot be read; the message names it.
    """
    path = state_path(context)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return IsolationState(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise ResponseError(
            f"cannot read the isolation state {path}: {exc}; release the host to clear it"
        ) from exc


def _save_state(context: ActionContext, state: IsolationState) -> None:
    path = state_path(context)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(asdict(state), handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def isolation_active() -> bool:
    """Tell whether the isolation table exists in this network namespace.

    Raises:
        ResponseError: nft is missing or failed.
    """
    return nft.table_exists(TABLE_FAMILY, TABLE_NAME)


def _apply(context: ActionContext, allow: list[IPNetwork], server: list[str]) -> IsolationState:
    state = IsolationState(
        server_host=context.server_host,
        server_port=context.server_port,
        server=server,
        allow=[str(n) for n in allow],
        applied_at=utc_now_iso(),
    )
    ruleset = build_ruleset(server, context.server_port, allow)
    # Save first: if the agent dies right after the rules go in, it still knows to keep them.
    _save_state(context, state)
    try:
        nft.apply_ruleset(ruleset)
    except ResponseError:
        state_path(context).unlink(missing_ok=True)
        raise
    log.info(
        "isolated the host: server %s port %d, allow %s",
        server,
        context.server_port,
        state.allow,
    )
    return state


def reapply_if_isolated(context: ActionContext) -> bool:
    """Apply the saved isolation again, as the agent does when it starts.

    The server name is resolved afresh; if that fails, the saved addresses are used so the host
    is isolated either way.

    Returns:
        True if a saved isolation was found and applied, False if the host is not isolated.

    Raises:
        ResponseError: the state cannot be read or nft failed.
    """
    state = load_state(context)
    if state is None:
        return False
    try:
        server = resolve_server(context.server_host, context.server_port)
    except ResponseError as exc:
        log.warning("%s; using the saved server addresses %s", exc, state.server)
        server = state.server
    _apply(context, parse_allow(state.allow), server)
    return True


def lift_rules_keep_state(context: ActionContext) -> bool:
    """Remove the isolation table but keep the saved state, as the agent does when it stops.

    Nothing of the agent is left in the kernel after it stops, and the next start isolates
    the host again from the saved state.

    Returns:
        True if a table was removed.
    """
    if load_state(context) is None:
        return False
    try:
        removed = nft.delete_table(TABLE_FAMILY, TABLE_NAME)
    except ResponseError as exc:
        log.warning("could not lift isolation rules at stop: %s", exc)
        return False
    if removed:
        log.info("lifted isolation rules at stop; they return when the agent starts")
    return removed


class IsolateAction(Action):
    """Cut the host off the network except for its channel to the server.

    Params:
        allow: Optional list of IPv4/IPv6 addresses or CIDR networks the host may still reach.

    Returns ``{"isolated": True, "already_isolated": bool, "server": [...], "port": int,
    "allow": [...]}``. Isolating an isolated host changes nothing.
    """

    name = "isolate"
    permission = "response.isolate"
    destructive = True

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """Apply the isolation table and save it, unless it is already in force."""
        allow = parse_allow(params.get("allow"))
        saved = load_state(self.context)
        if saved is not None and isolation_active():
            log.info("isolate: the host is already isolated since %s", saved.applied_at)
            return {
                "isolated": True,
                "already_isolated": True,
                "server": saved.server,
                "port": saved.server_port,
                "allow": saved.allow,
            }

        server = resolve_server(self.context.server_host, self.context.server_port)
        state = _apply(self.context, allow, server)
        return {
            "isolated": True,
            "already_isolated": False,
            "server": state.server,
            "port": state.server_port,
            "allow": state.allow,
        }


class ReleaseAction(Action):
    """Lift the isolation: delete the isolation table and its saved state.

    Returns ``{"isolated": False, "was_isolated": bool}``; releasing a host that is not
    isolated succeeds and says so.
    """

    name = "release"
    permission = "response.isolate"
    destructive = False

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """Delete the isolation table, then the state file."""
        had_state = state_path(self.context).exists()
        had_table = nft.delete_table(TABLE_FAMILY, TABLE_NAME)
        state_path(self.context).unlink(missing_ok=True)
        if had_table or had_state:
            log.info("released the host from isolation")
        else:
            log.info("release: the host was not isolated; nothing to do")
        return {"isolated": False, "was_isolated": had_table or had_state}
