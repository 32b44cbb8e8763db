"""The process_audit sensor against the real kernel audit subsystem (needs root)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.agent.conftest import started
from vigil.agent.audit import netlink, rules
from vigil.agent.errors import AgentError, NotApplicable
from vigil.agent.processes import read_start_ticks
from vigil.agent.sensors.base import SensorContext
from vigil.agent.sensors.process_audit import ProcessAuditSensor
from vigil.schema.ecs import entity_id

pytestmark = pytest.mark.root

Events = list[dict[str, Any]]
MakeContext = Callable[..., tuple[SensorContext, Events]]


@pytest.fixture
def running(
    audit_guard: netlink.AuditStatus, make_context: MakeContext
) -> Iterator[tuple[ProcessAuditSensor, Events]]:
    """A started process_audit sensor collecting its events; stopped afterwards."""
    context, events = make_context()
    with started(ProcessAuditSensor(context)) as sensor:
        yield sensor, events


def _process_rules() -> list[rules.AuditRule]:
    return [
        *rules.process_rules(),
        *rules.lineage_rules(),
        *rules.privilege_rules(),
        rules.proctitle_exclusion(),
    ]


def _execs(events: Events, pid: int | None = None, name: str | None = None) -> Events:
    return [
        e
        for e in list(events)
        if e["event"]["action"] == "exec"
        and (pid is None or e["process"]["pid"] == pid)
        and (name is None or e["process"]["name"] == name)
    ]


def test_exec_events_keep_exact_argv_and_link_parents(
    running: tuple[ProcessAuditSensor, Events], wait_for: Callable[..., Any]
) -> None:
    sensor, events = running
    script = b"echo 'a b' \"q'uote\" ; /usr/bin/base64 -d /dev/null"
    argv = [
        b"/bin/sh",
        b"-c",
        script,
        b"with space",
        b"dq\"sq'",
        b"new\nline",
        b"\xffz",
        b"caf\xc3\xa9",
    ]
    shell = subprocess.Popen(argv, cwd="/tmp", stdout=subprocess.DEVNULL)
    shell.wait()

    sh = wait_for(lambda: _execs(events, pid=shell.pid))
    child = wait_for(lambda: _execs(events, name="base64"))
    assert sh and child, f"no exec events for the shell or base64; health {sensor.health()}"
    sh_doc, child_doc = sh[0], child[-1]
    expected_args = ["/bin/sh", "-c", script.decode(), "with space", "dq\"sq'", "new\nline"]
    expected_args += ["\\xffz", "café"]
    assert sh_doc["process"]["args"] == expected_args
    assert sh_doc["process"]["args_count"] == len(expected_args)
    assert sh_doc["process"]["command_line"] == " ".join(expected_args)
    assert sh_doc["process"]["executable"] == os.path.realpath("/bin/sh")
    assert sh_doc["process"]["working_directory"] == "/tmp"
    assert child_doc["process"]["args"] == ["/usr/bin/base64", "-d", "/dev/null"]
    assert child_doc["process"]["executable"] == os.path.realpath("/usr/bin/base64")
    assert child_doc["process"]["hash"]["sha256"]

    # base64 -> sh -> this test process, by entity id.
    assert child_doc["process"]["parent"]["entity_id"] == sh_doc["process"]["entity_id"]
    assert child_doc["process"]["parent"]["pid"] == shell.pid
    me = entity_id("agent-test", os.getpid(), read_start_ticks(os.getpid()) or -1)
    assert sh_doc["process"]["parent"]["entity_id"] == me
    assert sh_doc["event"]["type"] == ["start"] and sh_doc["event"]["kind"] == "event"
    assert sh_doc["host"]["os"]["type"] == "linux" and sh_doc["agent"]["id"] == "agent-test"
    assert sh_doc["user"]["id"] == str(os.getuid())
    assert sh_doc["@timestamp"].endswith("Z") and sh_doc["process"]["start"].endswith("Z")


def test_exit_events_carry_exit_code_and_entity_id(
    running: tuple[ProcessAuditSensor, Events], wait_for: Callable[..., Any]
) -> None:
    _sensor, events = running
    proc = subprocess.run(["/bin/sh", "-c", "exit 7"])
    assert proc.returncode == 7

    pid = _pid_of(events, wait_for, "exit 7")
    exits = wait_for(
        lambda: [
            e for e in list(events) if e["event"]["action"] == "exit" and e["process"]["pid"] == pid
        ]
    )
    assert exits, "no exit event for the shell"
    exit_doc = exits[0]
    assert exit_doc["event"]["type"] == ["end"]
    assert exit_doc["process"]["exit_code"] == 7
    start_doc = _execs(events, pid=pid)[0]
    assert exit_doc["process"]["entity_id"] == start_doc["process"]["entity_id"]


def _pid_of(events: Events, wait_for: Callable[..., Any], needle: str) -> int:
    found = wait_for(lambda: [e for e in _execs(events) if needle in e["process"]["command_line"]])
    assert found, f"no exec event whose command line contains {needle!r}"
    return int(found[0]["process"]["pid"])


def test_long_arguments_and_execveat(
    running: tuple[ProcessAuditSensor, Events], wait_for: Callable[..., Any]
) -> None:
    _sensor, events = running
    long_plain = "x" * 20000
    long_spaced = "a b " * 5000
    subprocess.run(["/bin/echo", long_plain, long_spaced], stdout=subprocess.DEVNULL, check=True)
    # os.execve on a descriptor is fexecve: the execveat syscall.
    code = (
        "import os; fd = os.open('/bin/echo', os.O_RDONLY); os.execve(fd, ['echo', 'via-fd'], {})"
    )
    subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, check=True)

    longs = wait_for(
        lambda: [
            e
            for e in _execs(events)
            if e["process"]["args_count"] == 3 and e["process"]["args"][1] == long_plain
        ]
    )
    assert longs and longs[0]["process"]["args"][2] == long_spaced
    via_fd = wait_for(
        lambda: [e for e in _execs(events) if e["process"]["args"] == ["echo", "via-fd"]]
    )
    assert via_fd and via_fd[0]["process"]["executable"] == os.path.realpath("/bin/echo")


def test_raw_audit_events_reach_the_callback(
    audit_guard: netlink.AuditStatus, make_context: MakeContext, wait_for: Callable[..., Any]
) -> None:
    seen: list[Any] = []
    context, _events = make_context(on_audit_event=seen.append)
    sensor = ProcessAuditSensor(context)
    sensor.start()
    try:
        proc = subprocess.run(["/bin/true", "callback-marker"])
        assert proc.returncode == 0
        found = wait_for(
            lambda: [
                e
                for e in list(seen)
                if any(
                    "callback-marker" in r.raw or "63616C6C6261636B2D6D61726B6572" in r.raw
                    for r in e.records
                )
            ]
        )
    finally:
        sensor.stop()
    assert found, "the on_audit_event callback never saw the exec"
    types = {r.type_name for r in found[0].records}
    assert types >= {"SYSCALL", "EXECVE", "CWD"}
    # The kernel drops PROCTITLE while the sensor runs (EXECVE already has the whole argv).
    assert "PROCTITLE" not in types


def test_stop_restores_kernel_audit_settings(
    audit_guard: netlink.AuditStatus,
    make_context: MakeContext,
    audit_rules_of_ours: Callable[[], list[bytes]],
) -> None:
    before = audit_guard
    context, _events = make_context(audit_backlog_limit=4096)
    sensor = ProcessAuditSensor(context)
    sensor.start()
    sock = netlink.AuditSocket()
    try:
        during = sock.get_status()
        assert during.enabled == 1 and during.pid == os.getpid()
        assert during.backlog_limit == 4096
        assert len(audit_rules_of_ours()) == len(_process_rules())
        assert sensor.health().state == "running"
        sensor.stop()
        after = sock.get_status()
    finally:
        sock.close()
    assert audit_rules_of_ours() == []
    assert (after.enabled, after.pid, after.backlog_limit, after.failure) == (
        before.enabled,
        before.pid,
        before.backlog_limit,
        before.failure,
    )
    assert sensor.health().state == "stopped"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        pytest.param({"audit_backlog_limit": 0}, "audit_backlog_limit=0 is invalid", id="zero"),
        pytest.param({"audit_backlog_limit": 10**9}, "from 64 to 65536", id="unbounded"),
        pytest.param({"on_audit_event": "nope"}, "must be a callable", id="callback"),
    ],
)
def test_invalid_options_fail_clearly_and_change_nothing(
    audit_guard: netlink.AuditStatus,
    make_context: MakeContext,
    audit_rules_of_ours: Callable[[], list[bytes]],
    options: dict[str, Any],
    match: str,
) -> None:
    context, _events = make_context(**options)
    sensor = ProcessAuditSensor(context)
    with pytest.raises(AgentError, match=match):
        sensor.start()
    assert sensor.health().state == "failed" and match.split()[0] in sensor.health().message
    sock = netlink.AuditSocket()
    try:
        assert sock.get_status().backlog_limit == audit_guard.backlog_limit
    finally:
        sock.close()
    assert audit_rules_of_ours() == []


HOLDER = textwrap.dedent(
    """
    import os, sys
    from vigil.agent.audit import netlink
    sock = netlink.AuditSocket()
    sock.set_status(netlink.AUDIT_STATUS_PID, pid=os.getpid())
    print("registered", flush=True)
    sys.stdin.readline()
    sock.set_status(netlink.AUDIT_STATUS_PID, pid=0)
    """
)


def test_start_failure_midway_restores_what_it_changed(
    audit_guard: netlink.AuditStatus,
    make_context: MakeContext,
    audit_rules_of_ours: Callable[[], list[bytes]],
) -> None:
    """Another audit daemon holds the pid: start fails after rules and backlog were set."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "registered"
        context, _events = make_context()
        sensor = ProcessAuditSensor(context)
        with pytest.raises(NotApplicable, match=f"another audit daemon \\(pid {holder.pid}\\)"):
            sensor.check_compatible()
        with pytest.raises(AgentError, match="could not start: kernel audit refused to set pid"):
            sensor.start()
        assert sensor.health().state == "failed"
        assert audit_rules_of_ours() == []
        sock = netlink.AuditSocket()
        try:
            status = sock.get_status()
        finally:
            sock.close()
        assert status.backlog_limit == audit_guard.backlog_limit
        assert status.enabled == audit_guard.enabled
        assert status.pid == holder.pid
    finally:
        if holder.poll() is None:
            holder.communicate("done\n", timeout=10)


def test_without_root_the_sensor_is_not_applicable(make_context: MakeContext) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another user")
    sensor = ProcessAuditSensor(make_context()[0])
    # Drop only the effective uid, so it can be taken back.
    os.seteuid(65534)
    try:
        with pytest.raises(NotApplicable, match="process_audit needs root"):
            sensor.check_compatible()
    finally:
        os.seteuid(0)


def test_burst_of_execs_loses_nothing(
    running: tuple[ProcessAuditSensor, Events], wait_for: Callable[..., Any]
) -> None:
    sensor, events = running
    count = 2000
    started = time.monotonic()
    pids = set()
    for _ in range(count):
        pids.add(subprocess.Popen(["/bin/true"]).pid)
        # Popen objects are reaped by the interpreter as they are collected.
    seen = wait_for(
        lambda: len(pids & {e["process"]["pid"] for e in _execs(events, name="true")}) == count,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    health = sensor.health()
    print(f"{count} execs seen in {elapsed:.2f} s ({count / elapsed:.0f}/s); {health.counters}")
    assert seen, f"missing exec events; health {health}"
    assert health.counters["parse_errors"] == 0


def test_rules_left_by_a_crashed_run_are_replaced_not_doubled(
    audit_guard: netlink.AuditStatus,
    make_context: MakeContext,
    audit_rules_of_ours: Callable[[], list[bytes]],
) -> None:
    sock = netlink.AuditSocket()
    try:
        sock.add_rule(rules.process_rules()[0].pack())
        sensor = ProcessAuditSensor(make_context()[0])
        sensor.start()
        assert len(audit_rules_of_ours()) == len(_process_rules())
        sensor.stop()
    finally:
        sock.close()
    assert audit_rules_of_ours() == []
