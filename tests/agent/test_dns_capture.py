"""dns_capture against real DNS traffic on loopback: a dnspython server and resolver processes.

The server answers on 127.0.0.77 and ::1, port 53, which exist only on the loopback interface;
nothing here sends a packet to any other address.
"""

from __future__ import annotations

import os
import secrets
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dns.exception
import dns.message
import dns.rcode
import dns.rrset
import pytest

from vigil.agent.errors import AgentError, NotApplicable
from vigil.agent.processes import read_start_ticks
from vigil.agent.sensors import dns_capture
from vigil.agent.sensors.base import SensorContext
from vigil.agent.sensors.dns_capture import DnsCaptureSensor
from vigil.schema.ecs import entity_id

# A real server is a network round trip away; one on loopback answers within microseconds, and
# the client closes its socket before the sensor could name its owner. The test server waits
# this long before answering single queries (bursts are answered at once).
ROUND_TRIP = 0.2
SERVER4 = "127.0.0.77"
SERVER6 = "::1"
ANSWER4 = "10.77.0.10"
ANSWER6 = "fd77::10"

# Resolve one name from a child process, report, and stay alive until stdin closes so that the
# test can read its start ticks. argv: server, name, type, transport.
_CLIENT = """
import sys
import dns.message, dns.query
server, name, rdtype, transport = sys.argv[1:5]
query = dns.message.make_query(name, rdtype)
ask = dns.query.tcp if transport == "tcp" else dns.query.udp
try:
    print(dns.rcode.to_text(ask(query, server, timeout=2).rcode()), flush=True)
except dns.exception.Timeout:
    print("timeout", flush=True)
sys.stdin.read()
"""

# Send many queries at once on one socket, then collect the answers. argv: server, prefix, count.
_BURST = """
import socket, sys
import dns.message
server, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(5)
for i in range(count):
    query = dns.message.make_query(f"{prefix}-{i}.vigil.test", "A", id=i)
    sock.sendto(query.to_wire(), (server, 53))
got = 0
try:
    while got < count:
        sock.recv(4096)
        got += 1
except OSError:
    pass
print(got, flush=True)
"""


def _reply(wire: bytes) -> tuple[bytes | None, float]:
    """The test server's answer and how long to wait before sending it.

    probe* and burst* names resolve, silent* names get no answer, others NXDOMAIN.
    """
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return None, 0.0
    name = query.question[0].name
    label = name.labels[0].decode()
    if label.startswith("silent"):
        return None, 0.0
    response = dns.message.make_response(query)
    if label.startswith(("probe", "burst")):
        rdtype = query.question[0].rdtype
        address = ANSWER6 if rdtype == dns.rdatatype.AAAA else ANSWER4
        response.answer.append(dns.rrset.from_text(name, 60, "IN", rdtype, address))
    else:
        response.set_rcode(dns.rcode.NXDOMAIN)
    return response.to_wire(), 0.0 if label.startswith("burst") else ROUND_TRIP


class DnsServer:
    """A tiny DNS server on loopback (UDP on 127.0.0.77 and ::1, TCP on 127.0.0.77), on a thread."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        for family, address, kind in (
            (socket.AF_INET, SERVER4, socket.SOCK_DGRAM),
            (socket.AF_INET6, SERVER6, socket.SOCK_DGRAM),
            (socket.AF_INET, SERVER4, socket.SOCK_STREAM),
        ):
            sock = socket.socket(family, kind)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, 53))
            if kind == socket.SOCK_STREAM:
                sock.listen(16)
            self._sockets.append(sock)
            self._selector.register(sock, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, name="test-dns-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                if sock.type == socket.SOCK_STREAM:
                    self._serve_tcp(sock)
                    continue
                wire, peer = sock.recvfrom(65535)
                answer, delay = _reply(wire)
                if answer is not None:
                    time.sleep(delay)
                    sock.sendto(answer, peer)

    @staticmethod
    def _serve_tcp(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(2)
            length = int.from_bytes(conn.recv(2), "big")
            wire = b""
            while len(wire) < length:
                chunk = conn.recv(length - len(wire))
                if not chunk:
                    return
                wire += chunk
            answer, delay = _reply(wire)
            if answer is not None:
                time.sleep(delay)
                conn.sendall(len(answer).to_bytes(2, "big") + answer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in self._sockets:
            sock.close()
        self._selector.close()


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    if os.geteuid() != 0:
        pytest.skip("packet capture and port 53 need root")
    try:
        server = DnsServer()
    except OSError as exc:
        pytest.skip(f"cannot serve DNS on loopback port 53: {exc}")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def sensor_factory(
    make_context: Callable[..., tuple[SensorContext, list[dict[str, Any]]]],
) -> Iterator[Callable[..., tuple[DnsCaptureSensor, list[dict[str, Any]]]]]:
    started: list[DnsCaptureSensor] = []

    def build(**options: Any) -> tuple[DnsCaptureSensor, list[dict[str, Any]]]:
        context, events = make_context(**options)
        sensor = DnsCaptureSensor(context)
        sensor.check_compatible()
        sensor.start()
        started.append(sensor)
        return sensor, events

    yield build
    for sensor in started:
        sensor.stop()


def _resolve(server: str, name: str, rdtype: str = "A", transport: str = "udp") -> tuple[str, int]:
    """Resolve from a child process; return its result and its entity id's start ticks."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CLIENT, server, name, rdtype, transport],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        result = child.stdout.readline().strip()
        ticks = read_start_ticks(child.pid)
        assert ticks is not None
        child.stdin.close()
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=5)
    return result, ticks


def _events_for(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in list(events) if e.get("dns", {}).get("question", {}).get("name") == name]


def _name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}.vigil.test"


@pytest.mark.parametrize(
    ("server", "rdtype", "transport", "network", "answer"),
    [
        pytest.param(SERVER4, "A", "udp", "ipv4", ANSWER4, id="udp4-A"),
        pytest.param(SERVER6, "AAAA", "udp", "ipv6", ANSWER6, id="udp6-AAAA"),
        pytest.param(SERVER4, "A", "tcp", "ipv4", ANSWER4, id="tcp4-A"),
    ],
)
def test_answered_query_is_one_event_with_the_resolving_process(
    dns_server: DnsServer,
    sensor_factory: Callable[..., tuple[DnsCaptureSensor, list[dict[str, Any]]]],
    wait_for: Callable[..., Any],
    server: str,
    rdtype: str,
    transport: str,
    network: str,
    answer: str,
) -> None:
    sensor, events = sensor_factory()
    name = _name("probe")

    result, ticks = _resolve(server, name, rdtype, transport)

    assert result == "NOERROR"
    found = wait_for(lambda: _events_for(events, name), timeout=10)
    assert len(found) == 1, found
    event = found[0]
    assert event["event"]["category"] == ["network"]
    assert event["event"]["type"] == ["protocol"]
    assert event["event"]["action"] == "dns_answer"
    assert event["event"]["outcome"] == "success"
    dns_fields = event["dns"]
    assert dns_fields["type"] == "answer"
    assert dns_fields["question"] == {"name": name, "type": rdtype, "class": "IN"}
    assert dns_fields["response_code"] == "NOERROR"
    assert "RD" in dns_fields["header_flags"]
    assert dns_fields["answers"] == [
        {"name": name, "type": rdtype, "class": "IN", "ttl": 60, "data": answer}
    ]
    assert dns_fields["resolved_ip"] == [answer]
    assert event["destination"] == {"ip": server, "port": 53}
    assert event["source"]["ip"] == ("127.0.0.1" if network == "ipv4" else "::1")
    assert event["source"]["port"] != 53
    assert event["network"] == {
        "transport": transport,
        "type": network,
        "protocol": "dns",
        "direction": "internal",
    }
    process = event["process"]
    assert process["entity_id"] == entity_id("agent-test", process["pid"], ticks)
    assert process["executable"] == os.path.realpath(sys.executable)
    assert process["name"] == os.path.basename(os.path.realpath(sys.executable))
    health = sensor.health()
    assert health.state == "running"
    assert health.counters["queries"] >= 1 and health.counters["answers"] >= 1


def test_nxdomain_is_a_failure_without_answers(
    dns_server: DnsServer,
    sensor_factory: Callable[..., tuple[DnsCaptureSensor, list[dict[str, Any]]]],
    wait_for: Callable[..., Any],
) -> None:
    _sensor, events = sensor_factory(dns_interfaces=["lo"])
    name = _name("missing")

    result, _ticks = _resolve(SERVER4, name)

    assert result == "NXDOMAIN"
    (event,) = wait_for(lambda: _events_for(events, name), timeout=10)
    assert event["event"]["outcome"] == "failure"
    assert event["dns"]["response_code"] == "NXDOMAIN"
    assert event["dns"]["answers_count"] == 0
    assert "answers" not in event["dns"] and "resolved_ip" not in event["dns"]


def test_unanswered_query_is_emitted_after_the_timeout(
    dns_server: DnsServer,
    sensor_factory: Callable[..., tuple[DnsCaptureSensor, list[dict[str, Any]]]],
    wait_for: Callable[..., Any],
) -> None:
    sensor, events = sensor_factory(dns_timeout=0.5)
    name = _name("silent")

    result, ticks = _resolve(SERVER4, name)

    assert result == "timeout"
    (event,) = wait_for(lambda: _events_for(events, name), timeout=10)
    assert event["event"]["action"] == "dns_query"
    assert event["event"]["outcome"] == "unknown"
    assert event["dns"]["type"] == "query"
    assert "response_code" not in event["dns"]
    assert event["process"]["entity_id"] == entity_id("agent-test", event["process"]["pid"], ticks)
    assert sensor.health().counters["unanswered"] >= 1


def test_malformed_packet_is_counted_and_capture_goes_on(
    dns_server: DnsServer,
    sensor_factory: Callable[..., tuple[DnsCaptureSensor, list[dict[str, Any]]]],
    wait_for: Callable[..., Any],
) -> None:
    sensor, events = sensor_factory()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"\x12\x34 not a DNS message", (SERVER4, 53))

    assert wait_for(lambda: sensor.health().counters["parse_errors"] >= 1, timeout=10)
    name = _name("probe")
    _resolve(SERVER4, name)
    assert wait_for(lambda: _events_for(events, name), timeout=10)
    assert sensor.health().state == "running"
    assert sensor.health().counters["errors"] == 0


def test_other_loopback_traffic_is_dropped_by_the_kernel_filter(
    dns_server: DnsServer,
    sensor_factory: Callable[..., tuple[DnsCaptureSensor, list[dict[str, Any]]]],
    wait_for: Callable[..., Any],
) -> None:
    sensor, events = sensor_factory(dns_interfaces=["lo"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(200):
            sock.sendto(b"not for port 53", (SERVER4, 5300))
    name = _name("probe")
    _resolve(SERVER4, name)

    assert wait_for(lambda: _events_for(events, name), timeout=10)
    # The query and the answer, each once although loopback shows every packet twice; the
    # 200 datagrams to port 5300 never reached the socket.
    assert sensor.health().counters["packets"] == 2
    assert sensor.health().counters["duplicates"] == 0


def test_burst_of_queries_is_captured_or_counted_as_dropped(
    dns_server: DnsServer,
    sensor_factory: Callable[..., tuple[DnsCaptureSensor, list[dict[str, Any]]]],
    wait_for: Callable[..., Any],
) -> None:
    sensor, events = sensor_factory(dns_timeout=1.0)
    prefix = f"burst{secrets.token_hex(3)}"
    count = 500

    done = subprocess.run(
        [sys.executable, "-c", _BURST, SERVER4, prefix, str(count)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    def settled() -> bool:
        seen = sum(
            1
            for e in list(events)
            if e["dns"].get("question", {}).get("name", "").startswith(prefix)
        )
        return seen + sensor.health().counters["dropped"] >= count

    assert int(done.stdout) > 0
    assert wait_for(settled, timeout=30)


def test_invalid_options_fail_the_start_with_what_to_do(
    make_context: Callable[..., tuple[SensorContext, list[dict[str, Any]]]],
) -> None:
    context, _ = make_context(dns_timeout=0)
    sensor = DnsCaptureSensor(context)
    with pytest.raises(AgentError, match="dns_timeout=0 is invalid: use a number from 0.1 to 60"):
        sensor.start()
    assert sensor.health().state == "failed"

    context, _ = make_context(dns_interfaces="eth0")
    with pytest.raises(AgentError, match="give a list of interface names"):
        DnsCaptureSensor(context).start()


def test_unknown_interface_is_named(
    make_context: Callable[..., tuple[SensorContext, list[dict[str, Any]]]],
) -> None:
    if os.geteuid() != 0:
        pytest.skip("opening a packet socket needs root")
    context, _ = make_context(dns_interfaces=["vigil-none0"])
    sensor = DnsCaptureSensor(context)
    with pytest.raises(AgentError, match="'vigil-none0', which does not exist"):
        sensor.start()
    assert sensor.health().state == "failed"


def test_not_applicable_without_dnspython_or_root(
    make_context: Callable[..., tuple[SensorContext, list[dict[str, Any]]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    context, _ = make_context()
    sensor = DnsCaptureSensor(context)
    monkeypatch.setattr(dns_capture, "_DNSPYTHON", False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(NotApplicable, match="pip install dnspython"):
        sensor.check_compatible()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NotApplicable, match="run the agent as root"):
        sensor.check_compatible()
