"""Network connections from the kernel audit subsystem: connect, accept, bind and listen.

The sensor attaches to the agent's audit hub (shared with ``process_audit``; either runs
without the other) with exit rules for connect, accept, accept4, bind and listen on IPv4 and
IPv6 sockets. Unix, netlink and packet sockets are filtered out in the kernel by the address
family (``saddr_fam``), which keeps the volume of local IPC out of the telemetry. The agent's
own process is excluded in the kernel too, so its connections to the server cannot feed back.

Each event names the owning process by entity id from the shared process table. The address in
the audit record is the remote side of a connect or accept and the local side of a bind; the
other side and the transport (tcp, udp) come from the socket itself, probed through
``pidfd_getfd`` on the receive thread (see :mod:`vigil.agent.audit.network`). When the socket is
gone by then, the event carries what the record had.

Options (``SensorContext.options``): ``audit_backlog_limit`` and ``audit_rcvbuf``, as for
``process_audit`` (the first audit sensor to start sets them).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from vigil.agent.audit import rules
from vigil.agent.audit.hub import (
    Subscription,
    audit_options,
    event_unique,
)
from vigil.agent.audit.network import Address, SocketInfo, SocketProber, parse_sockaddr
from vigil.agent.audit.reassembly import AuditEvent
from vigil.agent.audit.records import (
    AUDIT_SOCKADDR,
    AUDIT_SOCKETCALL,
    AUDIT_SYSCALL,
    AuditRecord,
    value_bytes,
)
from vigil.agent.audit.sensor import AuditSensor
from vigil.agent.errors import AgentError
from vigil.agent.processes import ProcessTable, audit_users, event_base, process_fields
from vigil.agent.sensors.base import SensorContext

log = logging.getLogger(__name__)

NETWORK_CALLS = ("connect", "accept", "accept4", "bind", "listen", "socketcall")
# socketcall(2) multiplexes the socket calls of old 32-bit programs; its first argument says which.
SOCKETCALL_OPS = {2: "bind", 3: "connect", 4: "listen", 5: "accept", 18: "accept4"}
EINPROGRESS = 115


def _fd(call: str, fields: dict[str, str]) -> int | None:
    """The descriptor a call works on: the new one for accept, the first argument otherwise."""
    try:
        if call in ("accept", "accept4"):
            return int(fields["exit"])
        return int(fields["a0"], 16) if call in ("connect", "bind", "listen") else None
    except (KeyError, ValueError):
        return None


class NetworkAuditSensor(AuditSensor):
    """Emits ``network`` events for connect, accept, bind and listen, with the owning process.

    connect is an egress connection (``destination`` from the record, ``source`` from the
    socket); accept an ingress one (``source`` is the peer, ``destination`` the local address);
    bind and listen name the local address as ``source``.
    """

    name = "network_audit"
    supported_os = ("linux",)
    requires_root = True
    version = "1"

    def __init__(self, context: SensorContext) -> None:
        super().__init__(context)
        self._table: ProcessTable | None = None
        self._names: dict[int, dict[int, str]] = {}
        self._prober = SocketProber()

    def start(self) -> None:
        """Attach to the audit hub with the network rules.

        Raises:
            AgentError: An option is invalid or the kernel refused a change; every change made
                has been undone.
        """
        try:
            backlog, rcvbuf = audit_options(self.name, self.context.options)
        except AgentError as exc:
            self.set_state("failed", str(exc))
            raise
        for counter in ("events", "socket_unknown", "listen_skipped"):
            self.count(counter, 0)
        if self.context.processes is None:
            self.context.processes = ProcessTable(self.context.agent_id)
            self.context.processes.scan()
        self._table = self.context.processes
        self._names = rules.syscall_names()

        subscription = Subscription(
            name=self.name,
            rules=rules.network_rules(exclude_pid=os.getpid()),
            syscalls={a.audit_arch: a.of(*NETWORK_CALLS) for a in rules.arches_for()},
            handle=self._handle,
            on_syscall=self._probe,
        )
        self.attach(subscription, backlog, rcvbuf)
        message = "kernel audit: connect, accept, bind, listen on IPv4 and IPv6"
        if not self._prober.available:
            message += f"; no local addresses or transport ({self._prober.reason})"
        self.set_state("running", message)
        log.info("network_audit running")

    def _call(self, syscall: AuditRecord) -> str | None:
        fields = syscall.fields
        name = self._names.get(int(fields["arch"], 16), {}).get(int(fields["syscall"]))
        if name == "socketcall":
            return SOCKETCALL_OPS.get(int(fields.get("a0", "0"), 16))
        return name

    # --- receive thread -------------------------------------------------------------------

    def _probe(self, event: AuditEvent, syscall: AuditRecord) -> None:
        call = self._call(syscall)
        pid = syscall.fields.get("pid", "")
        fd = None if call is None else _fd(call, syscall.fields)
        if fd is not None and pid.isdigit():
            event.annotations["socket"] = self._prober.probe(int(pid), fd)

    # --- dispatch thread --------------------------------------------------------------------

    def _handle(self, event: AuditEvent) -> None:
        syscall = event.first(AUDIT_SYSCALL)
        assert syscall is not None and self._table is not None
        call = self._call(syscall)
        if call is None:
            return
        fields = syscall.fields
        sockaddr = event.first(AUDIT_SOCKADDR)
        address = None
        if sockaddr is not None:
            address = parse_sockaddr(value_bytes(sockaddr.fields.get("saddr", "")) or b"")
        probed = event.annotations.get("socket")
        info = probed if isinstance(probed, SocketInfo) else None
        if event.first(AUDIT_SOCKETCALL) is not None and call in ("connect", "bind"):
            info = None  # the descriptor of a socketcall was not known when probing

        network: dict[str, Any] = {}
        document = self._base(event, call)
        if call == "connect":
            if address is None:
                return
            exit_code = int(fields.get("exit", "0"))
            outcome = "success" if fields.get("success") == "yes" else "failure"
            if exit_code == -EINPROGRESS:
                outcome = "unknown"  # non-blocking: the handshake finishes later
            info = info if info is not None and info.peer in (address, None) else None
            document["event"]["outcome"] = outcome
            document["destination"] = _endpoint(address)
            if info is not None and info.local is not None and info.local.port:
                document["source"] = _endpoint(info.local)
            network["direction"] = "egress"
        elif call in ("accept", "accept4"):
            if address is None:
                return
            info = info if info is not None and info.peer == address else None
            document["source"] = _endpoint(address)
            if info is not None and info.local is not None:
                document["destination"] = _endpoint(info.local)
            network["direction"] = "ingress"
        elif call == "bind":
            if address is None:
                return
            if info is not None and (
                info.local is None
                or info.local.network_type != address.network_type
                or address.port not in (0, info.local.port)
            ):
                info = None
            bound = info.local if info is not None and info.local is not None else address
            document["source"] = _endpoint(bound)
        else:  # listen: no address in the records, only the socket tells
            if info is None or info.local is None or not info.listening:
                self.count("listen_skipped")  # not an IP socket, or closed before the probe
                return
            address = info.local
            document["source"] = _endpoint(address)

        if info is None:
            self.count("socket_unknown")
        elif info.transport:
            network["transport"] = info.transport
        network["type"] = address.network_type
        document["network"] = network
        pid = int(fields["pid"])
        ticks = event.annotations.get("pid_ticks")
        document["process"] = process_fields(
            self._table, pid, ticks if isinstance(ticks, int) else None, fields
        )
        document["user"] = audit_users(fields)
        self.context.emit(document)
        self.count("events")

    def _base(self, event: AuditEvent, call: str) -> dict[str, Any]:
        action = "accept" if call == "accept4" else call
        document = event_base(self.context, event.timestamp, "start", action, event_unique(event))
        document["event"]["category"] = ["network"]
        if action in ("connect", "accept"):
            document["event"]["type"] = ["connection", "start"]
        return document


def _endpoint(address: Address) -> dict[str, Any]:
    return {"ip": address.ip, "port": address.port}
