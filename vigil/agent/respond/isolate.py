"""Network isolation of the endpoint with nftables, and its release.

Isolation is one ``inet`` table, ``vigil_isolation``, whose input, output and forward chains drop
everything except loopback, the agent's channel to the server (its address and port, and
established or related traffic with it), IPv6 neighbour discovery and DHCP (so the host keeps its
address and can reach the server on its link), and an allow list (``isolation_rules`` has the
rules and the allow-list syntax). The table is replaced in one ``nft -f`` transaction, for IPv4
and IPv6 together.

Isolating takes these steps, and stops at the first that fails:

1. check the parameters, resolve the server's name (DNS is blocked afterwards) and list the live
   connections the rules would cut and keep; a dry run returns here, having changed nothing;
2. connect to the server: if it cannot be reached now, nothing is applied;
3. apply the rules, then connect to the server again: if that fails, the rules are rolled back
   (the previous isolation put back, or none) and the task fails with the reason;
4. try an address the rules block (the ``probe`` parameter, else a connection being cut, else
   the default gateway) and count, with a rule that matches only the probe, that the isolation
   table dropped it. The result carries both attempts as the proof.

The applied state is saved to ``isolation.json`` in the agent's state folder, so the agent can
apply it again when it starts (nftables rules do not survive a reboot) and so release can undo it.
An optional lease (``lease_seconds``) makes the agent release the host by itself when it has not
reached the server for that long; the runtime checks it with ``release_if_lease_expired``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import socket
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from vigil.agent.respond import nft, reach
from vigil.agent.respond.base import Action, ActionContext
from vigil.agent.respond.errors import ResponseError
from vigil.agent.respond.isolation_rules import (
    PROBE_COUNTER,
    PROBE_MARK,
    TABLE_FAMILY,
    TABLE_NAME,
    AllowEntry,
    build_ruleset,
    normalize_address,
    parse_allow,
    split_port,
    verdict,
)
from vigil.schema.ecs import utc_now_iso

log = logging.getLogger(__name__)

__all__ = [
    "TABLE_FAMILY",
    "TABLE_NAME",
    "IsolateAction",
    "IsolationState",
    "ReleaseAction",
    "build_ruleset",
    "parse_allow",
    "release_if_lease_expired",
    "reapply_if_isolated",
    "resolve_server",
]

STATE_FILE = "isolation.json"
SERVER_TIMEOUT_S = 3.0
PROBE_TIMEOUT_S = 1.5
DEFAULT_PROBE_PORT = 443
MIN_LEASE_S = 30
MAX_LEASE_S = 30 * 24 * 3600
LIST_LIMIT = 500
PARAMS = ("allow", "dry_run", "lease_seconds", "probe")

# One change of the isolation at a time: a task and the runtime's lease check may race.
_LOCK = threading.Lock()


@dataclass
class IsolationState:
    """What was applied: the server's name, addresses and port, the allow list and the lease.

    ``reached`` is the server address the agent proved it reaches through the rules; the agent
    sends to that address while isolated, since it can no longer resolve the server's name.
    """

    server_host: str
    server_port: int
    server: list[str]
    allow: list[str]
    applied_at: str
    lease_seconds: int | None = None
    reached: str | None = None

    @property
    def pinned(self) -> str:
        """The server address to send to while isolated."""
        return self.reached if self.reached in self.server else self.server[0]


@dataclass
class IsolateRequest:
    """The checked parameters of an isolate task; None means "not given"."""

    allow: list[AllowEntry] | None
    dry_run: bool
    probe: tuple[str, int] | None
    lease_seconds: int | None
    lease_given: bool


@dataclass
class _Plan:
    """An isolation worked out but not applied: its rules' inputs and the connections' fate."""

    previous: IsolationState | None
    server: list[str]
    port: int
    allow: list[AllowEntry]
    lease: int | None
    cut: list[dict[str, Any]]
    kept: list[dict[str, Any]]
    loopback: int
    target: tuple[str, int, str] | None

    def summary(self) -> dict[str, Any]:
        probe = None
        if self.target is not None:
            probe = {"address": self.target[0], "port": self.target[1]}
        return {
            "server": self.server,
            "port": self.port,
            "allow": [str(e) for e in self.allow],
            "lease_seconds": self.lease,
            "probe": probe,
        }


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


def parse_request(params: dict[str, Any]) -> IsolateRequest:
    """Check an isolate task's parameters.

    Raises:
        ResponseError: an unknown parameter (a misspelt ``dry_run`` must not isolate), or a
            value of the wrong type or range; the message names it.
    """
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise ResponseError(
            f"isolate: unknown parameter {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(PARAMS)}; nothing was applied"
        )
    dry_run = params.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise ResponseError(f"isolate: 'dry_run' must be true or false, got {dry_run!r}")
    lease = params.get("lease_seconds")
    if lease is not None and (
        isinstance(lease, bool)
        or not isinstance(lease, int)
        or not (lease == 0 or MIN_LEASE_S <= lease <= MAX_LEASE_S)
    ):
        raise ResponseError(
            f"isolate: 'lease_seconds' must be a whole number of seconds from {MIN_LEASE_S} to "
            f"{MAX_LEASE_S} (0 or null for no lease), got {lease!r}"
        )
    probe = params.get("probe")
    target: tuple[str, int] | None = None
    if probe is not None:
        if not isinstance(probe, str):
            raise ResponseError(f"isolate: 'probe' must be 'ADDRESS[:PORT]', got {probe!r}")
        address, port = split_port(probe, "isolate: probe")
        try:
            target = (str(normalize_address(address)), port or DEFAULT_PROBE_PORT)
        except ValueError as exc:
            raise ResponseError(
                f"isolate: probe {probe!r} is not an IP address with an optional port "
                "(a name would need DNS, which isolation blocks); e.g. 192.0.2.9:443"
            ) from exc
    return IsolateRequest(
        allow=None if params.get("allow") is None else parse_allow(params["allow"]),
        dry_run=dry_run,
        probe=target,
        lease_seconds=lease or None,
        lease_given="lease_seconds" in params,
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
        known = {f.name for f in fields(IsolationState)}
        return IsolationState(**{k: v for k, v in data.items() if k in known})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, AttributeError) as exc:
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


def _apply(context: ActionContext, state: IsolationState) -> None:
    ruleset = build_ruleset(state.server, state.server_port, parse_allow(state.allow))
    # Save first: if the agent dies right after the rules go in, it still knows to keep them.
    _save_state(context, state)
    try:
        nft.apply_ruleset(ruleset)
    except ResponseError:
        state_path(context).unlink(missing_ok=True)
        raise
    log.info(
        "isolated the host: server %s port %d, allow %s, lease %s",
        state.server,
        state.server_port,
        state.allow,
        f"{state.lease_seconds} s" if state.lease_seconds else "none",
    )


def _remove(context: ActionContext) -> bool:
    """Delete the table and the saved state; True if either existed."""
    had_state = state_path(context).exists()
    had_table = nft.delete_table(TABLE_FAMILY, TABLE_NAME)
    state_path(context).unlink(missing_ok=True)
    return had_table or had_state


def _pin(context: ActionContext, address: str | None) -> None:
    """Have the agent's server link send to ``address`` (None: resolve the name again)."""
    if context.link is not None:
        context.link.pin(address)


def reapply_if_isolated(context: ActionContext) -> IsolationState | None:
    """Apply the saved isolation again, as the agent does when it starts.

    The server name is resolved afresh; if that fails, the saved addresses are used so the host
    is isolated either way. The allow list and lease come from the saved state.

    Returns:
        The state applied, or None if the host is not isolated.

    Raises:
        ResponseError: the state cannot be read or nft failed.
    """
    with _LOCK:
        state = load_state(context)
        if state is None:
            return None
        try:
            state.server = resolve_server(context.server_host, context.server_port)
        except ResponseError as exc:
            log.warning("%s; using the saved server addresses %s", exc, state.server)
        _apply(context, state)
        _pin(context, state.pinned)
        return state


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


def release_if_lease_expired(
    context: ActionContext, silent_seconds: float
) -> IsolationState | None:
    """Release the host if its isolation has a lease and the server was silent that long.

    Args:
        context: The agent's action context.
        silent_seconds: How long ago the agent last heard from the server.

    Returns:
        The isolation that was released, or None if nothing was due.

    Raises:
        ResponseError: the state cannot be read or nft failed.
    """
    with _LOCK:
        state = load_state(context)
        if state is None or not state.lease_seconds or silent_seconds < state.lease_seconds:
            return None
        _remove(context)
        _pin(context, None)
    log.warning(
        "released the host from isolation by itself: the server was not reached for %.0f s, "
        "longer than the isolation's lease of %d s (isolated since %s)",
        silent_seconds,
        state.lease_seconds,
        state.applied_at,
    )
    return state


def lease_event(
    agent_id: str, host_name: str, state: IsolationState, silent_seconds: float
) -> dict[str, Any]:
    """The telemetry event that tells the server why the agent released the host itself."""
    unique = f"{agent_id}:isolation_lease_expired:{state.applied_at}"
    message = (
        f"isolation released by the agent: the server was not reached for {silent_seconds:.0f} s,"
        f" longer than the lease of {state.lease_seconds} s"
    )
    return {
        "@timestamp": utc_now_iso(),
        "event": {
            "kind": "event",
            "category": ["configuration"],
            "type": ["change"],
            "action": "isolation_lease_expired",
            "outcome": "success",
            "reason": message,
            "id": hashlib.sha256(unique.encode()).hexdigest()[:32],
        },
        "message": message,
        "host": {"id": agent_id, "name": host_name},
        "agent": {"id": agent_id},
        "vigil": {
            "isolation": {
                "isolated_at": state.applied_at,
                "lease_seconds": state.lease_seconds,
                "silent_seconds": round(silent_seconds),
                "server": state.server,
                "allow": state.allow,
            }
        },
    }


def _sort(
    live: list[reach.Connection],
    server: list[str],
    allow: list[AllowEntry],
    local: set[str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """Split live connections into those the rules cut and keep; count loopback apart."""
    cut: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    loopback = 0
    for conn in live:
        why = verdict(
            conn.remote_ip,
            conn.remote_port,
            conn.local_port,
            server=server,
            allow=allow,
            local_addresses=local,
        )
        if why == "loopback":
            loopback += 1
        elif why is None:
            cut.append(conn.as_dict())
        else:
            kept.append({**conn.as_dict(), "kept_by": why})
    return cut, kept, loopback


class IsolateAction(Action):
    """Cut the host off the network except for its channel to the server, and prove it.

    Params:
        allow: Optional list of addresses or CIDR networks, each optionally with a port
            (``192.0.2.7``, ``10.0.0.0/8``, ``192.0.2.8:443``, ``[2001:db8::1]:22``) that stay
            reachable. On an isolated host a given list replaces the one in force; an omitted
            one keeps it.
        dry_run: If true, apply nothing: return the plan and the live connections it would cut
            and keep.
        probe: ``ADDRESS[:PORT]`` (default port 443) the proof must find blocked; by default a
            connection being cut, else the default gateway.
        lease_seconds: If the agent cannot reach the server for this long (30 s to 30 days)
            while isolated, it releases the host by itself; 0 or null removes the lease.

    Returns ``{"isolated": True, "already_isolated", "rules_refreshed", "changed", "server",
    "port", "allow", "lease_seconds", "connections_cut", "connections_cut_total", "proof"}``
    where ``proof`` has the ``server`` connection made through the rules, the ``blocked``
    attempt and ``ok``. A dry run returns ``{"dry_run": True, "isolated", "would_apply",
    "cut", "kept", "loopback_connections", "truncated"}``. Isolating an isolated host applies
    its rules again (a no-op unless they were tampered with or parameters changed) and says so.
    """

    name = "isolate"
    undo = "release"
    permission = "response.isolate"
    destructive = True

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """Check, plan, and unless it is a dry run apply and prove the isolation."""
        request = parse_request(params)
        with _LOCK:
            return self._isolate(request)

    def _isolate(self, request: IsolateRequest) -> dict[str, Any]:
        plan = self._plan(request)
        if request.dry_run:
            log.info(
                "isolate dry run: would cut %d connections, keep %d", len(plan.cut), len(plan.kept)
            )
            return {
                "dry_run": True,
                "isolated": plan.previous is not None,
                "would_apply": plan.summary(),
                "cut": plan.cut[:LIST_LIMIT],
                "kept": plan.kept[:LIST_LIMIT],
                "loopback_connections": plan.loopback,
                "truncated": len(plan.cut) > LIST_LIMIT or len(plan.kept) > LIST_LIMIT,
            }
        before = self._reach_server_now(plan)
        state, proof = self._apply_and_prove(plan, before)

        previous = plan.previous
        changed = []
        if previous is not None:
            changed = [
                name
                for name in ("server", "allow", "lease_seconds")
                if getattr(previous, name) != getattr(state, name)
            ]
            log.info("isolate: already isolated; rules refreshed, changed: %s", changed or "none")
        return {
            "isolated": True,
            "already_isolated": previous is not None,
            "rules_refreshed": previous is not None,
            "changed": changed,
            "server": state.server,
            "port": state.server_port,
            "allow": state.allow,
            "lease_seconds": state.lease_seconds,
            "connections_cut": plan.cut[:LIST_LIMIT],
            "connections_cut_total": len(plan.cut),
            "proof": proof,
        }

    def _plan(self, request: IsolateRequest) -> _Plan:
        """What the rules will allow, and what that means for the live connections."""
        saved = load_state(self.context)
        previous = saved if saved is not None and isolation_active() else None
        # A parameter left out keeps what was saved (in force, or due at the next start).
        if request.allow is not None:
            allow = request.allow
        else:
            allow = parse_allow(saved.allow) if saved else []
        lease = request.lease_seconds
        if not request.lease_given and saved is not None:
            lease = saved.lease_seconds
        server = self._server(previous)
        local = reach.local_addresses()
        cut, kept, loopback = _sort(reach.connections(), server, allow, local)
        target = self._probe_target(request.probe, cut, server, allow, local)
        return _Plan(
            previous, server, self.context.server_port, allow, lease, cut, kept, loopback, target
        )

    def _reach_server_now(self, plan: _Plan) -> list[reach.Probe]:
        """Connect to the server before any change: isolating a host that cannot reach it would
        only lose it. Returns the attempts; the last one reached the server."""
        before: list[reach.Probe] = []
        for address in plan.server:
            before.append(reach.tcp_probe(address, plan.port, SERVER_TIMEOUT_S))
            if before[-1].reached:
                return before
        raise ResponseError(
            f"isolate: the server {self.context.server_host} port {plan.port} cannot be reached "
            f"at {', '.join(plan.server)} even before isolating ({before[-1].outcome}: "
            f"{before[-1].detail}); nothing was changed",
            result={
                "isolated": plan.previous is not None,
                "proof": {"server_before": _dicts(before)},
            },
        )

    def _apply_and_prove(
        self, plan: _Plan, before: list[reach.Probe]
    ) -> tuple[IsolationState, dict[str, Any]]:
        """Apply the rules, then prove the server is still reached and the probe is not.

        Raises:
            ResponseError: nft failed, or the server was lost and the rules were rolled back.
        """
        context, previous, port = self.context, plan.previous, plan.port
        reached = before[-1].address
        state = IsolationState(
            server_host=context.server_host,
            server_port=port,
            server=plan.server,
            allow=[str(e) for e in plan.allow],
            applied_at=previous.applied_at if previous else utc_now_iso(),
            lease_seconds=plan.lease,
            reached=reached,
        )
        _pin(context, reached)
        try:
            _apply(context, state)
        except ResponseError:
            _pin(context, previous.pinned if previous else None)
            raise

        after = reach.tcp_probe(reached, port, SERVER_TIMEOUT_S)
        if not after.reached:
            undone = self._roll_back(previous)
            raise ResponseError(
                f"isolate: rolled back: the server {reached} port {port} could not be reached "
                f"once the rules were in ({after.outcome}: {after.detail}); {undone}; look for "
                "NAT, a proxy or another firewall between the agent and the server",
                result={
                    "isolated": previous is not None,
                    "rolled_back": True,
                    "proof": {"server_before": _dicts(before), "server": after.as_dict()},
                },
            )
        blocked = self._prove_blocked(plan.target)
        proof: dict[str, Any] = {"server": after.as_dict(), "blocked": blocked}
        proof["ok"] = blocked is None or not blocked["reached"]
        if blocked is None:
            proof["note"] = (
                "no address to prove blocked: no connection was cut and there is no default "
                "route; give 'probe' to test one"
            )
        elif blocked["reached"]:
            log.warning("isolate: the probe %s was reached through the isolation", blocked)
        return state, proof

    def _server(self, previous: IsolationState | None) -> list[str]:
        try:
            return resolve_server(self.context.server_host, self.context.server_port)
        except ResponseError:
            if previous is None:
                raise
            # Isolated already: DNS is blocked, the saved addresses are the ones in force.
            return previous.server

    def _probe_target(
        self,
        asked: tuple[str, int] | None,
        cut: list[dict[str, Any]],
        server: list[str],
        allow: list[AllowEntry],
        local: set[str],
    ) -> tuple[str, int, str] | None:
        """The address the proof must find blocked, and where it comes from."""
        if asked is not None:
            why = verdict(
                asked[0], asked[1], None, server=server, allow=allow, local_addresses=local
            )
            if why is not None:
                raise ResponseError(
                    f"isolate: probe {asked[0]} port {asked[1]} is let through by the isolation "
                    f"({why}); give an address it blocks; nothing was applied"
                )
            return asked[0], asked[1], "the probe parameter"
        for conn in cut:
            if conn["transport"] == "tcp":
                owner = f"{conn['process']} (pid {conn['pid']})" if conn["pid"] else "unknown"
                address = str(normalize_address(conn["remote_ip"]))
                return address, conn["remote_port"], f"a connection being cut, of {owner}"
        gateway = reach.default_gateway()
        if gateway is None:
            return None
        why = verdict(
            gateway, DEFAULT_PROBE_PORT, None, server=server, allow=allow, local_addresses=local
        )
        return None if why is not None else (gateway, DEFAULT_PROBE_PORT, "the default gateway")

    def _prove_blocked(self, target: tuple[str, int, str] | None) -> dict[str, Any] | None:
        if target is None:
            return None
        address, port, source = target
        count = nft.counter_packets(TABLE_FAMILY, TABLE_NAME, PROBE_COUNTER) or 0
        probe = reach.tcp_probe(address, port, PROBE_TIMEOUT_S, mark=PROBE_MARK)
        dropped = (nft.counter_packets(TABLE_FAMILY, TABLE_NAME, PROBE_COUNTER) or 0) - count
        return {**probe.as_dict(), "source": source, "dropped_by_isolation": dropped > 0}

    def _roll_back(self, previous: IsolationState | None) -> str:
        """Undo a failed apply; say what the host is left with."""
        if previous is not None:
            try:
                _apply(self.context, previous)
                _pin(self.context, previous.pinned)
                return "the previous isolation was put back"
            except ResponseError as exc:
                log.error("could not put the previous isolation back: %s", exc)
        _remove(self.context)
        _pin(self.context, None)
        return "the host is not isolated"


def _dicts(probes: list[reach.Probe]) -> list[dict[str, Any]]:
    return [p.as_dict() for p in probes]


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
        with _LOCK:
            was_isolated = _remove(self.context)
            _pin(self.context, None)
        if was_isolated:
            log.info("released the host from isolation")
        else:
            log.info("release: the host was not isolated; nothing to do")
        return {"isolated": False, "was_isolated": was_isolated}
