"""DNS questions and answers from a passive packet capture, attributed to processes.

A kernel-filtered packet socket (:mod:`vigil.agent.dnscap.capture`) receives UDP and TCP
packets to or from port 53 on every interface, IPv4 and IPv6, or on the interfaces named in
``dns_interfaces``. Each query is paired with its answer by transaction id and both ends'
addresses and ports; the pair becomes one event holding the question and the answers. A query
without an answer within ``dns_timeout`` is emitted alone, as is an answer whose query was not
seen. The querying process is found when the query is seen, from its socket's local port
(:mod:`vigil.agent.dnscap.owners`); a resolver that exited or closed its socket that fast is
counted as ``unattributed`` and its event has no ``process`` fields.

The agent resolves no names while it runs, so its own traffic cannot loop through this sensor
and is not filtered out.

Limits: TCP messages are read only when a whole message is in one segment (no stream
reassembly), fragmented IPv4 and IPv6 packets with extension headers before UDP or TCP are
skipped, and queries from other network namespaces (containers) are seen on the host's side of
their interfaces but cannot be attributed to a process.

Options (``SensorContext.options``):
    dns_interfaces: Interface names to capture on (default: all, including ones added later).
    dns_timeout: Seconds to wait for an answer (0.1-60, default 5).
    dns_buffer_bytes: Kernel receive buffer per socket (65536-268435456, default 8 MiB).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vigil.agent.dnscap.capture import (
    ARPHRD_LOOPBACK,
    PACKET_HOST,
    PACKET_OUTGOING,
    Frame,
    PacketCapture,
)
from vigil.agent.dnscap.owners import SocketOwners
from vigil.agent.dnscap.packets import PacketError, Segment, parse_ip, tcp_messages
from vigil.agent.errors import AgentError, NotApplicable
from vigil.agent.processes import ProcessInstance, ProcessTable, event_base, read_start_ticks
from vigil.agent.sensors.base import Sensor, SensorContext
from vigil.schema.ecs import iso_epoch

_DNSPYTHON = importlib.util.find_spec("dns") is not None
if _DNSPYTHON or TYPE_CHECKING:
    from vigil.agent.dnscap.messages import Message, MessageError, parse_message

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0
TIMEOUT_RANGE = (0.1, 60.0)
DEFAULT_BUFFER = 8 * 1024 * 1024
BUFFER_RANGE = (65536, 256 * 1024 * 1024)
# Most queries waiting for an answer; past it the oldest is emitted as unanswered.
MAX_PENDING = 65536
_BATCH = 512
_INSTANCE_CACHE = 1024
_POLL = 0.1
_STATISTICS_INTERVAL = 1.0
_COUNTERS = (
    "events",
    "packets",
    "queries",
    "answers",
    "unanswered",
    "unmatched_answers",
    "duplicates",
    "unattributed",
    "parse_errors",
    "tcp_incomplete",
    "dropped",
    "errors",
)

# transport, client address, client port, server address, server port, DNS id
Key = tuple[str, str, int, str, int, int]


@dataclass
class _Exchange:
    """What is known of a transaction before its answer: the first packet and the client."""

    moment: float
    segment: Segment
    client: tuple[str, int]
    server: tuple[str, int]
    direction: str
    interface: str
    outgoing: bool
    process: dict[str, Any]
    query: Message | None


def _direction(frame: Frame, from_client: bool) -> str:
    """ECS ``network.direction`` of the transaction, seen from this host."""
    if frame.hatype == ARPHRD_LOOPBACK:
        return "internal"
    if frame.pkttype == PACKET_OUTGOING:
        return "egress" if from_client else "ingress"
    if frame.pkttype == PACKET_HOST:
        return "ingress" if from_client else "egress"
    return "unknown"


def _read_link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _local_query(frame: Frame, segment: Segment) -> bool:
    """A query (QR bit clear) sent by this host, judged from the header bytes alone."""
    if frame.hatype != ARPHRD_LOOPBACK and frame.pkttype != PACKET_OUTGOING:
        return False
    flags = 2 if segment.transport == "udp" else 4  # past the TCP length prefix
    return len(segment.payload) > flags and not segment.payload[flags] & 0x80


class DnsCaptureSensor(Sensor):
    """Emits one ``network`` event per DNS transaction: question, answers and querying process."""

    name = "dns_capture"
    supported_os = ("linux",)
    requires_root = True
    version = "1"

    def __init__(self, context: SensorContext) -> None:
        super().__init__(context)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._capture: PacketCapture | None = None
        self._owners = SocketOwners()
        self._proc = ProcessTable(context.agent_id)
        self._pending: OrderedDict[Key, _Exchange] = OrderedDict()
        self._answered: OrderedDict[Key, float] = OrderedDict()
        self._instances: OrderedDict[tuple[int, int], ProcessInstance] = OrderedDict()
        self._timeout = DEFAULT_TIMEOUT
        self._run_id = ""
        self._sequence = 0
        self._warned_parse = False

    def check_compatible(self) -> None:
        """Need Linux packet sockets, root for them, and dnspython to read the messages.

        Raises:
            NotApplicable: Not Linux, not root, or dnspython is not installed.
        """
        if not sys.platform.startswith("linux"):
            raise NotApplicable("dns_capture needs Linux packet sockets; this host runs elsewhere")
        if os.geteuid() != 0:
            raise NotApplicable(
                "dns_capture needs root to open a packet socket: run the agent as root"
            )
        if not _DNSPYTHON:
            raise NotApplicable("dns_capture needs dnspython: pip install dnspython")

    def start(self) -> None:
        """Open the capture sockets and start pairing queries with answers on a thread.

        Raises:
            AgentError: An option is invalid, a named interface does not exist, or the packet
                socket cannot be opened.
        """
        options = self.context.options
        self._timeout = self._number("dns_timeout", DEFAULT_TIMEOUT, TIMEOUT_RANGE)
        buffer_bytes = int(self._number("dns_buffer_bytes", DEFAULT_BUFFER, BUFFER_RANGE))
        interfaces = options.get("dns_interfaces") or []
        if isinstance(interfaces, str) or not all(isinstance(i, str) for i in interfaces):
            message = (
                f"dns_capture option dns_interfaces={interfaces!r} is invalid: "
                'give a list of interface names such as ["eth0"], or leave it unset for all'
            )
            self.set_state("failed", message)
            raise AgentError(message)
        for counter in _COUNTERS:
            self.count(counter, 0)

        capture = PacketCapture(interfaces, buffer_bytes)
        try:
            capture.open()
        except AgentError as exc:
            self.set_state("failed", str(exc))
            raise
        self._capture = capture
        self._run_id = secrets.token_hex(8)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="vigil-dns-capture", daemon=True)
        self._thread.start()
        where = ", ".join(interfaces) if interfaces else "all interfaces"
        self.set_state(
            "running",
            f"capturing DNS on {where}; answers paired within {self._timeout:g} s; "
            "TCP only where a whole message is in one segment",
        )

    def stop(self) -> None:
        """Stop capturing, emit the queries still waiting as unanswered, close the sockets."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=_POLL + 10)
            self._thread = None
        if self._capture is not None:
            self._statistics()
            self._capture.close()
            self._capture = None
        while self._pending:
            _key, exchange = self._pending.popitem(last=False)
            self._emit(exchange, None, None)
        self._answered.clear()
        self.set_state("stopped")

    def _number(self, option: str, default: float, bounds: tuple[float, float]) -> float:
        value = self.context.options.get(option, default)
        low, high = bounds
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not low <= value <= high:
            message = (
                f"dns_capture option {option}={value!r} is invalid: "
                f"use a number from {low:g} to {high:g} (default {default:g})"
            )
            self.set_state("failed", message)
            raise AgentError(message)
        return float(value)

    def _loop(self) -> None:
        assert self._capture is not None
        last_statistics = time.monotonic()
        while not self._stop.is_set():
            try:
                frames = self._capture.read(_POLL, _BATCH)
                if frames:
                    self._batch(frames)
                # While packets wait in the socket, time is where the capture is: a backlog
                # must not expire queries whose answers are queued behind them.
                self._expire(frames[-1].moment if len(frames) == _BATCH else time.time())
                if time.monotonic() - last_statistics >= _STATISTICS_INTERVAL:
                    last_statistics = time.monotonic()
                    self._statistics()
            except Exception as exc:
                self.count("errors")
                log.warning("dns_capture failed on a batch of packets: %s", exc)
                log.debug("dns_capture batch traceback", exc_info=True)

    def _statistics(self) -> None:
        assert self._capture is not None
        try:
            _received, dropped = self._capture.statistics()
        except OSError as exc:
            log.debug("cannot read PACKET_STATISTICS: %s", exc)
            return
        if dropped:
            self.count("dropped", dropped)
            log.warning("dns_capture: the kernel dropped %d packets (receive buffer full)", dropped)

    def _batch(self, frames: list[Frame]) -> None:
        """Attribute the batch's queries first: a resolver may close its socket at any moment."""
        segments = [self._segment(frame) for frame in frames]
        # One read of the socket tables serves the batch: it is newer than each packet.
        self._owners.refresh()
        processes: dict[int, dict[str, Any]] = {}
        for index, (frame, segment) in enumerate(zip(frames, segments, strict=True)):
            if segment is not None and _local_query(frame, segment):
                client = (segment.src_ip, segment.src_port)
                server = (segment.dst_ip, segment.dst_port)
                processes[index] = self._attribute(segment.transport, client, server)
        for index, (frame, segment) in enumerate(zip(frames, segments, strict=True)):
            if segment is not None:
                self._messages(frame, segment, processes.get(index))

    def _segment(self, frame: Frame) -> Segment | None:
        self.count("packets")
        try:
            segment = parse_ip(frame.data)
        except PacketError as exc:
            self._parse_error(frame, exc)
            return None
        if segment is None or (segment.transport == "tcp" and not segment.payload):
            return None  # not DNS, or a TCP handshake or acknowledgement
        return segment

    def _messages(self, frame: Frame, segment: Segment, process: dict[str, Any] | None) -> None:
        if segment.transport == "udp":
            wires = [segment.payload]
        else:
            wires, leftover = tcp_messages(segment.payload)
            if leftover:
                self.count("tcp_incomplete")
        for wire in wires:
            try:
                message = parse_message(wire)
            except MessageError as exc:
                self._parse_error(frame, exc)
                continue
            if message.is_response:
                self._answer(frame, segment, message)
            else:
                self._query(frame, segment, message, process)

    def _parse_error(self, frame: Frame, exc: Exception) -> None:
        self.count("parse_errors")
        if not self._warned_parse:
            self._warned_parse = True
            log.warning(
                "dns_capture cannot read a packet on %s: %s (counted in parse_errors; "
                "later ones are logged at DEBUG)",
                frame.interface,
                exc,
            )
        else:
            log.debug("dns_capture cannot read a packet on %s: %s", frame.interface, exc)

    def _query(
        self, frame: Frame, segment: Segment, message: Message, process: dict[str, Any] | None
    ) -> None:
        self.count("queries")
        client = (segment.src_ip, segment.src_port)
        server = (segment.dst_ip, segment.dst_port)
        key: Key = (segment.transport, *client, *server, message.id)
        if key in self._pending:
            self.count("duplicates")  # a retransmission, or the same packet on another interface
            return
        if process is None:
            process = {}  # a query from another host: no local process to name
        elif not process:
            self.count("unattributed")
        exchange = _Exchange(
            moment=frame.moment,
            segment=segment,
            client=client,
            server=server,
            direction=_direction(frame, from_client=True),
            interface=frame.interface,
            outgoing=frame.pkttype == PACKET_OUTGOING,
            process=process,
            query=message,
        )
        if len(self._pending) >= MAX_PENDING:
            _oldest, evicted = self._pending.popitem(last=False)
            self._emit(evicted, None, None)
        self._pending[key] = exchange

    def _answer(self, frame: Frame, segment: Segment, message: Message) -> None:
        self.count("answers")
        client = (segment.dst_ip, segment.dst_port)
        server = (segment.src_ip, segment.src_port)
        key: Key = (segment.transport, *client, *server, message.id)
        exchange = self._pending.pop(key, None)
        if exchange is None and key in self._answered:
            self.count("duplicates")
            return
        self._answered[key] = frame.moment + self._timeout
        if exchange is not None:
            self._emit(exchange, message, frame.moment)
            return
        self.count("unmatched_answers")
        process: dict[str, Any] = {}
        if frame.hatype == ARPHRD_LOOPBACK or frame.pkttype == PACKET_HOST:
            process = self._attribute(segment.transport, client, server)
            if not process:
                self.count("unattributed")
        exchange = _Exchange(
            moment=frame.moment,
            segment=segment,
            client=client,
            server=server,
            direction=_direction(frame, from_client=False),
            interface=frame.interface,
            outgoing=frame.pkttype == PACKET_OUTGOING,
            process=process,
            query=None,
        )
        self._emit(exchange, message, frame.moment)

    def _expire(self, now: float) -> None:
        while self._pending:
            key, exchange = next(iter(self._pending.items()))
            if exchange.moment + self._timeout > now:
                break
            del self._pending[key]
            self._emit(exchange, None, None)
        while self._answered:
            key, until = next(iter(self._answered.items()))
            if until > now:
                break
            del self._answered[key]

    def _attribute(
        self, transport: str, client: tuple[str, int], server: tuple[str, int]
    ) -> dict[str, Any]:
        """``process`` fields of the local socket at ``client``; empty when it is gone."""
        inode = self._owners.inode(transport, *client, *server)
        pid = None if inode is None else self._owners.pid(inode)
        ticks = None if pid is None else read_start_ticks(pid)
        if pid is None or ticks is None:
            return {}
        table: ProcessTable | None = self.context.processes
        instance: ProcessInstance | None
        if table is not None:
            instance = table.resolve(pid, ticks)
        else:
            instance = self._instance(pid, ticks)
        fields: dict[str, Any] = {"pid": pid}
        if instance is not None:
            fields["entity_id"] = instance.entity_id
            for name in ("executable", "name", "command_line"):
                value = getattr(instance, name)
                if value is not None:
                    fields[name] = value
        return fields

    def _instance(self, pid: int, ticks: int) -> ProcessInstance:
        """The process at ``pid`` from /proc, cached while its start ticks and program stay."""
        executable = _read_link(f"/proc/{pid}/exe")
        cached = self._instances.get((pid, ticks))
        if cached is not None and cached.executable == executable:
            self._instances.move_to_end((pid, ticks))
            return cached
        instance = self._proc.from_proc(pid)
        if instance is None or instance.start_ticks != ticks:
            # Gone or replaced since its query: all that is known is its identity.
            return ProcessInstance(pid, ticks, self._proc.entity_id(pid, ticks))
        self._instances[(pid, ticks)] = instance
        while len(self._instances) > _INSTANCE_CACHE:
            self._instances.popitem(last=False)
        return instance

    def _emit(self, exchange: _Exchange, answer: Message | None, answered_at: float | None) -> None:
        if answer is None:
            self.count("unanswered")
        try:
            document = self._document(exchange, answer, answered_at)
        except Exception as exc:
            self.count("errors")
            log.warning(
                "dns_capture could not build the event of the DNS exchange %s:%d -> %s:%d: %s",
                *exchange.client,
                *exchange.server,
                exc,
            )
            log.debug("dns_capture document traceback", exc_info=True)
            return
        self.context.emit(document)
        self.count("events")

    def _document(
        self, exchange: _Exchange, answer: Message | None, answered_at: float | None
    ) -> dict[str, Any]:
        first = exchange.query if exchange.query is not None else answer
        assert first is not None
        header = answer.header if answer is not None else first.header
        dns: dict[str, Any] = {"id": first.id, "type": "answer" if answer else "query", **header}
        if first.question:
            dns["question"] = dict(first.question)
        if answer is not None:
            dns["answers_count"] = answer.answers_count
            if answer.answers:
                dns["answers"] = answer.answers
            if answer.resolved_ip:
                dns["resolved_ip"] = answer.resolved_ip

        self._sequence += 1
        action = "dns_answer" if answer is not None else "dns_query"
        unique = f"dns:{self._run_id}:{self._sequence}"
        document = event_base(self.context, exchange.moment, "protocol", action, unique)
        event = document["event"]
        event["category"] = ["network"]
        if answer is None:
            event["outcome"] = "unknown"
        else:
            event["outcome"] = "success" if header.get("response_code") == "NOERROR" else "failure"
        if answered_at is not None and exchange.query is not None:
            event["start"] = iso_epoch(exchange.moment)
            event["end"] = iso_epoch(answered_at)
            event["duration"] = max(0, round((answered_at - exchange.moment) * 1e9))

        segment = exchange.segment
        document["source"] = {"ip": exchange.client[0], "port": exchange.client[1]}
        document["destination"] = {"ip": exchange.server[0], "port": exchange.server[1]}
        document["network"] = {
            "transport": segment.transport,
            "type": segment.network,
            "protocol": "dns",
            "direction": exchange.direction,
        }
        side = "egress" if exchange.outgoing else "ingress"
        document["observer"] = {side: {"interface": {"name": exchange.interface}}}
        document["dns"] = dns
        if exchange.process:
            document["process"] = exchange.process
        return document
