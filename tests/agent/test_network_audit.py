"""The network_audit sensor against the real kernel: loopback connects, accepts, binds, listens."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.conftest import started
from vigil.agent.audit import netlink, rules
from vigil.agent.processes import read_start_ticks
from vigil.agent.sensors.base import SensorContext
from vigil.agent.sensors.network_audit import NetworkAuditSensor
from vigil.agent.sensors.process_audit import ProcessAuditSensor
from vigil.detect.ruleset import RuleSet
from vigil.schema.ecs import entity_id, flatten

pytestmark = pytest.mark.root

Events = list[dict[str, Any]]
MakeContext = Callable[..., tuple[SensorContext, Events]]
SIGMA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sigma" / "rules"

# Each helper prints what the test needs, then waits for a line on stdin before closing, so the
# sockets still exist when the sensor looks at them.
SERVER = textwrap.dedent(
    """
    import socket, sys
    host = sys.argv[1]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.bind((host, 0))
    server.listen(4)
    print(server.getsockname()[1], flush=True)
    conn, peer = server.accept()
    print(peer[1], flush=True)
    sys.stdin.readline()
    """
)
CLIENT = textwrap.dedent(
    """
    import socket, sys
    host, port, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    sock.connect((host, port))
    print(sock.getsockname()[1], flush=True)
    sys.stdin.readline()
    """
)


@pytest.fixture
def network(
    audit_guard: netlink.AuditStatus, make_context: MakeContext
) -> Iterator[tuple[NetworkAuditSensor, Events]]:
    """A started network_audit sensor collecting its events; stopped afterwards."""
    context, events = make_context()
    with started(NetworkAuditSensor(context)) as sensor:
        yield sensor, events


def _python(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


def _finish(*procs: subprocess.Popen[str]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.communicate("done\n", timeout=10)


def _of(events: Events, action: str, pid: int) -> Events:
    return [
        e for e in list(events) if e["event"]["action"] == action and e["process"]["pid"] == pid
    ]


def _me(pid: int) -> str:
    return entity_id("agent-test", pid, read_start_ticks(pid) or -1)


@pytest.mark.parametrize(
    ("host", "network_type"),
    [pytest.param("127.0.0.1", "ipv4", id="ipv4"), pytest.param("::1", "ipv6", id="ipv6")],
)
def test_loopback_tcp_connect_accept_bind_listen(
    network: tuple[NetworkAuditSensor, Events],
    wait_for: Callable[..., Any],
    host: str,
    network_type: str,
) -> None:
    sensor, events = network
    server = _python(SERVER, host)
    client: subprocess.Popen[str] | None = None
    try:
        port = int(_line(server))
        client = _python(CLIENT, host, str(port), "tcp")
        client_port = int(_line(client))
        assert int(_line(server)) == client_port
        connects = wait_for(lambda: _of(events, "connect", client.pid))
        accepts = wait_for(lambda: _of(events, "accept", server.pid))
        binds = wait_for(lambda: _of(events, "bind", server.pid))
        listens = wait_for(lambda: _of(events, "listen", server.pid))
        client_id, server_id = _me(client.pid), _me(server.pid)
    finally:
        _finish(server, *([client] if client else []))
    assert connects and accepts and binds and listens, f"missing events; {sensor.health()}"

    connect = connects[0]
    assert connect["event"]["category"] == ["network"]
    assert connect["event"]["type"] == ["connection", "start"]
    assert connect["event"]["outcome"] == "success"
    assert connect["destination"] == {"ip": host, "port": port}
    assert connect["source"] == {"ip": host, "port": client_port}
    assert connect["network"] == {"direction": "egress", "transport": "tcp", "type": network_type}
    assert connect["process"]["entity_id"] == client_id
    assert connect["process"]["executable"] == os.path.realpath(sys.executable)
    assert connect["process"]["parent"]["entity_id"] == _me(os.getpid())
    assert connect["user"]["id"] == str(os.getuid())

    accept = accepts[0]
    assert accept["event"]["type"] == ["connection", "start"]
    assert accept["source"] == {"ip": host, "port": client_port}
    assert accept["destination"] == {"ip": host, "port": port}
    assert accept["network"] == {"direction": "ingress", "transport": "tcp", "type": network_type}
    assert accept["process"]["entity_id"] == server_id

    for doc in (binds[0], listens[0]):
        assert doc["event"]["type"] == ["start"]
        assert doc["source"] == {"ip": host, "port": port}
        assert doc["network"] == {"transport": "tcp", "type": network_type}
        assert doc["process"]["entity_id"] == server_id


def test_udp_connect_has_udp_transport(
    network: tuple[NetworkAuditSensor, Events], wait_for: Callable[..., Any]
) -> None:
    _sensor, events = network
    client = _python(CLIENT, "127.0.0.1", "9", "udp")
    try:
        _line(client)
        found = wait_for(lambda: _of(events, "connect", client.pid))
    finally:
        _finish(client)
    assert found and found[0]["network"]["transport"] == "udp"
    assert found[0]["destination"] == {"ip": "127.0.0.1", "port": 9}


def _connects_to(events: Events, port: int) -> Events:
    return [
        e
        for e in list(events)
        if e["event"]["action"] == "connect" and e["destination"]["port"] == port
    ]


UNIX_THEN_UDP = textwrap.dedent(
    """
    import socket
    a, b = socket.socketpair()
    server = socket.socket(socket.AF_UNIX)
    server.bind("\\0vigil-test-unix")
    server.listen()
    client = socket.socket(socket.AF_UNIX)
    client.connect("\\0vigil-test-unix")
    server.accept()
    # Last, a UDP connect: once its event is in, this process's earlier ones were handled too.
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).connect(("127.0.0.1", 7))
    """
)


def test_unix_sockets_are_not_recorded(
    network: tuple[NetworkAuditSensor, Events], wait_for: Callable[..., Any]
) -> None:
    _sensor, events = network
    proc = subprocess.run([sys.executable, "-c", UNIX_THEN_UDP], check=True)
    assert proc.returncode == 0
    last = wait_for(lambda: _connects_to(events, 7))
    assert last, "no event for the closing UDP connect"
    pid = last[-1]["process"]["pid"]
    assert [e["event"]["action"] for e in list(events) if e["process"]["pid"] == pid] == ["connect"]


def test_sigma_reverse_shell_rule_fires_on_a_bash_connect(
    network: tuple[NetworkAuditSensor, Events], wait_for: Callable[..., Any]
) -> None:
    path = SIGMA / "linux" / "network_connection" / "net_connection_lnx_back_connect_shell_dev.yml"
    if not path.exists():
        pytest.skip(f"shared Sigma rules missing: {path}")
    if not os.path.exists("/bin/bash"):
        pytest.skip("needs bash for /dev/tcp")
    _sensor, events = network
    # 127.0.0.2 is loopback too, but not an address the rule leaves out.
    server = _python(SERVER, "127.0.0.2")
    try:
        port = int(_line(server))
        subprocess.run(["/bin/bash", "-c", f"exec 3<>/dev/tcp/127.0.0.2/{port}"], check=True)
        found = wait_for(lambda: _connects_to(events, port))
    finally:
        _finish(server)
    assert found, "no connect event from bash"
    assert found[0]["process"]["executable"] == os.path.realpath("/bin/bash")
    ruleset = RuleSet.from_paths([path])
    assert [rule.title for rule in ruleset.match(flatten(found[0]))] == [
        "Linux Reverse Shell Indicator"
    ]


def test_network_and_process_sensors_share_audit_and_restore_it(
    audit_guard: netlink.AuditStatus,
    make_context: MakeContext,
    audit_rules_of_ours: Callable[[], list[bytes]],
) -> None:
    context, _events = make_context()
    process = ProcessAuditSensor(context)
    network = NetworkAuditSensor(context)
    process.start()
    network.start()
    sock = netlink.AuditSocket()
    try:
        process_count = len(
            [
                *rules.process_rules(),
                *rules.lineage_rules(),
                *rules.privilege_rules(),
                rules.proctitle_exclusion(),
            ]
        )
        network_count = len(rules.network_rules())
        assert len(audit_rules_of_ours()) == process_count + network_count
        assert context.processes is not None
        network.stop()
        assert len(audit_rules_of_ours()) == process_count
        assert sock.get_status().pid == os.getpid()
        assert process.health().state == "running"
        process.stop()
        after = sock.get_status()
    finally:
        sock.close()
    assert audit_rules_of_ours() == []
    before = audit_guard
    assert (after.enabled, after.pid, after.backlog_limit) == (
        before.enabled,
        before.pid,
        before.backlog_limit,
    )
    assert network.health().state == "stopped" and process.health().state == "stopped"
