"""The audit_records sensor on the real kernel: watches, syscalls, user records, Sigma rules."""

from __future__ import annotations

import copy
import os
import platform
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.conftest import started
from tests.conftest import RunningServer
from vigil.agent import identity
from vigil.agent.audit import netlink, rules
from vigil.agent.audit.reassembly import AuditEvent
from vigil.agent.processes import ProcessTable, read_start_ticks
from vigil.agent.sensors.audit_records import (
    DEFAULT_SYSCALLS,
    SYSCALL_KEY,
    WATCH_KEY,
    AuditRecordsSensor,
)
from vigil.agent.sensors.base import SensorContext
from vigil.agent.sensors.process_audit import ProcessAuditSensor
from vigil.agent.transport import ServerLink
from vigil.detect import RuleSet
from vigil.logsources.auditd import AuditdReader
from vigil.schema.ecs import entity_id, flatten
from vigil.schema.validate import validate_event

pytestmark = pytest.mark.root

Events = list[dict[str, Any]]
MakeContext = Callable[..., tuple[SensorContext, Events]]
AUDITD_RULES = Path(__file__).resolve().parents[2].parent / "shared/data/sigma/rules/linux/auditd"
MKNOD_RULE = "Special File Creation via Mknod Syscall"
DISCOVERY_RULE = "System and Hardware Information Discovery"

# Opens the file for reading, then for appending, then makes a FIFO (mknodat through libc) and,
# where the ABI has it, calls the mknod syscall itself; then waits, so /proc still shows it.
ACTOR = textwrap.dedent(
    """
    import ctypes, os, platform, sys
    watched, fifo, raw_fifo = sys.argv[1:4]
    with open(watched) as handle:
        handle.read()
    with open(watched, "a") as handle:
        handle.write("more\\n")
    os.mkfifo(fifo)
    if platform.machine() == "x86_64":
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.syscall(133, raw_fifo.encode(), 0o010600, 0) == 0, ctypes.get_errno()
    print("done", flush=True)
    sys.stdin.readline()
    """
)


class Capturing(AuditRecordsSensor):
    """The sensor, keeping the reassembled audit events it emitted (to replay them offline)."""

    def __init__(self, context: SensorContext) -> None:
        super().__init__(context)
        self.audit_events: list[AuditEvent] = []

    def _handle(self, event: AuditEvent) -> None:
        emitted = self.counters.get("events", 0)
        super()._handle(event)
        if self.counters.get("events", 0) > emitted:
            self.audit_events.append(event)


@pytest.fixture
def records(
    audit_guard: netlink.AuditStatus, make_context: MakeContext, tmp_path: Path
) -> Iterator[tuple[Capturing, Events, Path]]:
    """A started audit_records sensor with its defaults plus a watched test folder."""
    folder = tmp_path / "watched"
    folder.mkdir()
    (folder / "file.conf").write_text("setting = 1\n")
    context, events = make_context(
        extra_watches=[{"path": str(folder / "file.conf"), "perm": "rwa"}]
    )
    context.processes = ProcessTable("agent-test")
    with started(Capturing(context)) as sensor:
        yield sensor, events, folder


def _flat(events: Events) -> list[dict[str, Any]]:
    return [flatten(doc) for doc in list(events)]


def _of_pid(events: Events, pid: int) -> list[dict[str, Any]]:
    return [e for e in _flat(events) if e.get("process.pid") == pid]


def _run_actor(folder: Path) -> subprocess.Popen[str]:
    actor = subprocess.Popen(
        [
            sys.executable,
            "-c",
            ACTOR,
            str(folder / "file.conf"),
            str(folder / "fifo"),
            str(folder / "raw-fifo"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert actor.stdout is not None and actor.stdout.readline().strip() == "done"
    return actor


def test_watched_file_and_mknod_give_record_events(
    records: tuple[Capturing, Events, Path], wait_for: Callable[..., Any]
) -> None:
    sensor, events, folder = records
    watched = str(folder / "file.conf")
    actor = _run_actor(folder)
    try:
        ticks = read_start_ticks(actor.pid)
        # Two opens, mkfifo, and mknod itself where the ABI has it.
        want = 4 if platform.machine() == "x86_64" else 3
        mine = wait_for(
            lambda: (
                len({e["auditd.log.sequence"] for e in _of_pid(events, actor.pid)}) >= want
                and _of_pid(events, actor.pid)
            )
        )
    finally:
        actor.communicate("\n", timeout=10)
    assert mine, f"no events of the test process; health {sensor.health()}"

    # The two opens of the watched file: a SYSCALL and a PATH record each.
    paths = [e for e in mine if e["type"] == "PATH" and e["name"] == watched]
    assert len(paths) == 2 and all(e["nametype"] == "NORMAL" for e in paths)
    opens = [e for e in mine if e["type"] == "SYSCALL" and e["key"] == WATCH_KEY]
    assert len(opens) == 2
    for event in opens:
        assert event["SYSCALL"] in ("openat", "open")
        assert event["exe"] == os.path.realpath(sys.executable)
        assert event["comm"] == "python3" or event["comm"].startswith("python")
        assert event["success"] == "yes" and event["event.module"] == "auditd"
        assert event["host.os.type"] == "linux" and event["process.executable"] == event["exe"]
        assert event["process.entity_id"] == entity_id("agent-test", actor.pid, ticks or -1)
    sequences = {e["auditd.log.sequence"] for e in opens}
    assert {e["auditd.log.sequence"] for e in paths} == sequences
    # Every record of the event is an event of its own, as the offline reader gives it.
    for sequence in sequences:
        kinds = sorted(e["type"] for e in mine if e["auditd.log.sequence"] == sequence)
        assert kinds == ["CWD", "PATH", "PROCTITLE", "SYSCALL"]

    # os.mkfifo: libc calls mknodat; the syscall rule records it with the new file's path.
    made = [e for e in mine if e["type"] == "SYSCALL" and e["key"] == SYSCALL_KEY]
    assert [e["SYSCALL"] for e in made][:1] == ["mknodat"]
    fifo = [e for e in mine if e["type"] == "PATH" and e["name"] == str(folder / "fifo")]
    assert fifo and fifo[0]["nametype"] == "CREATE" and fifo[0]["mode"].startswith("010")
    if platform.machine() == "x86_64":
        assert [e["SYSCALL"] for e in made] == ["mknodat", "mknod"]

    # The server takes every event as it is.
    for number, doc in enumerate(list(events), start=1):
        doc["event"]["sequence"] = number
        validate_event(doc)


def test_sigmahq_auditd_rules_fire_on_live_records(
    records: tuple[Capturing, Events, Path], wait_for: Callable[..., Any]
) -> None:
    if not AUDITD_RULES.is_dir():
        pytest.skip(f"shared Sigma rules missing: {AUDITD_RULES}")
    ruleset = RuleSet.from_paths([AUDITD_RULES])
    assert not ruleset.errors
    sensor, events, folder = records
    if not any(target.path == "/proc/version" for target in sensor.targets):
        pytest.skip("/proc/version is not watched here")
    reader = subprocess.run(["/bin/cat", "/proc/version"], stdout=subprocess.DEVNULL, check=True)
    assert reader.returncode == 0
    actor = _run_actor(folder)
    actor.communicate("\n", timeout=10)

    def fired(pid: int, record: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for event in _of_pid(events, pid):
            if event["type"] == record:
                titles = [rule.title for rule in ruleset.match(event)]
                found.setdefault(event.get("SYSCALL") or event.get("name"), []).extend(titles)
        return found

    cat_pid = wait_for(
        lambda: next(
            (e["process.pid"] for e in _flat(events) if e.get("name") == "/proc/version"), None
        )
    )
    assert cat_pid, f"no PATH event for /proc/version; health {sensor.health()}"
    assert DISCOVERY_RULE in fired(cat_pid, "PATH")["/proc/version"]

    want = {"mknodat", "mknod"} if platform.machine() == "x86_64" else {"mknodat"}
    syscalls = wait_for(
        lambda: want <= set(fired(actor.pid, "SYSCALL")) and fired(actor.pid, "SYSCALL")
    )
    assert syscalls, f"no {want} events; health {sensor.health()}"
    # SigmaHQ's rule names the mknod syscall only: what libc's mkfifo and mknod call on
    # today's systems (mknodat) does not fire it; a program calling mknod(2) itself does.
    assert MKNOD_RULE not in syscalls["mknodat"]
    if platform.machine() == "x86_64":
        assert MKNOD_RULE in syscalls["mknod"]


def test_the_server_alerts_on_live_records(
    records: tuple[Capturing, Events, Path],
    running_server: RunningServer,
    wait_for: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """The agent's events through a real server with the SigmaHQ Linux rules: alerts."""
    sensor, events, folder = records
    if not any(target.path == "/proc/version" for target in sensor.targets):
        pytest.skip("/proc/version is not watched here")
    subprocess.run(["/bin/cat", "/proc/version"], stdout=subprocess.DEVNULL, check=True)
    actor = _run_actor(folder)
    actor.communicate("\n", timeout=10)
    want = {"mknodat", "mknod"} if platform.machine() == "x86_64" else {"mknodat"}
    assert wait_for(
        lambda: (
            want <= {e.get("SYSCALL") for e in _of_pid(events, actor.pid)}
            and any(e.get("name") == "/proc/version" for e in _flat(events))
        )
    ), f"health {sensor.health()}"

    batch = copy.deepcopy(list(events))
    for number, doc in enumerate(batch, start=1):
        doc["event"]["sequence"] = number
    enrolled = identity.enroll(
        tmp_path / "agent", running_server.url, running_server.enroll_token()
    )
    link = ServerLink(enrolled)
    try:
        response = link.post("/events", {"spool_epoch": "e", "events": batch})
    finally:
        link.close()
    assert response.status_code == 200, response.text
    alerts = running_server.api.call("GET", "/alerts")
    titles = {alert["rule"]["title"] for alert in alerts}
    assert DISCOVERY_RULE in titles
    if platform.machine() == "x86_64":
        mknod = [a for a in alerts if a["rule"]["title"] == MKNOD_RULE]
        assert mknod and all(a["event"]["SYSCALL"] == "mknod" for a in mknod)


def test_records_read_back_offline_give_the_same_events(
    records: tuple[Capturing, Events, Path], wait_for: Callable[..., Any], tmp_path: Path
) -> None:
    sensor, events, folder = records
    actor = _run_actor(folder)
    actor.communicate("\n", timeout=10)
    assert wait_for(lambda: len(_of_pid(events, actor.pid)) >= 8)

    # The records as auditd would have logged them.
    log = tmp_path / "audit.log"
    lines = []
    for event in list(sensor.audit_events):
        for record in event.records:
            lines.append(f"type={record.type_name} msg={record.raw}")
        lines.append(f"type=EOE msg=audit({event.event_id[0]}.{event.event_id[1]:03d}:"
                     f"{event.event_id[2]}): ")  # fmt: skip
    log.write_text("\n".join(lines) + "\n")
    offline = list(AuditdReader().read(log))
    live = _flat(events)[: len(offline)]
    live_only = {"host.id", "host.name", "agent.id", "event.id", "event.sequence"}
    live_only |= {"process.entity_id", "process.parent.entity_id"}
    assert len(offline) == len(live)
    for seen, read in zip(live, offline, strict=True):
        read.pop("log.file.path")
        assert {k: v for k, v in seen.items() if k not in live_only} == read


def test_user_space_messages_are_forwarded(
    audit_guard: netlink.AuditStatus,
    make_context: MakeContext,
    wait_for: Callable[..., Any],
) -> None:
    """A SERVICE_STOP message, as systemd sends when a unit stops, fires SigmaHQ's rule."""
    context, events = make_context(watches=[], syscalls=[])
    with started(AuditRecordsSensor(context)) as sensor:
        sock = netlink.AuditSocket()
        try:
            text = b'unit=firewalld comm="systemd" exe="/usr/lib/systemd/systemd" res=success\0'
            sock.request(1131, text, "send a SERVICE_STOP message")
        finally:
            sock.close()
        found = wait_for(lambda: [e for e in _flat(events) if e["type"] == "SERVICE_STOP"])
    assert found, f"no SERVICE_STOP event; health {sensor.health()}"
    event = found[0]
    assert (event["unit"], event["res"], event["process.pid"]) == (
        "firewalld",
        "success",
        os.getpid(),
    )
    assert event["process.executable"] == "/usr/lib/systemd/systemd"
    assert sensor.health().counters["user_records"] >= 1
    if AUDITD_RULES.is_dir():
        ruleset = RuleSet.from_paths([AUDITD_RULES / "service_stop"])
        assert [rule.title for rule in ruleset.match(event)] == ["Disable System Firewall"]


def test_execs_add_no_records(
    records: tuple[Capturing, Events, Path], wait_for: Callable[..., Any]
) -> None:
    """Starting programs reads ld.so's files and the program, none of them watched for reads."""
    sensor, events, folder = records
    children = [subprocess.Popen(["/bin/sh", "-c", "exit 0"]) for _ in range(50)]
    children += [subprocess.Popen(["/bin/true"]) for _ in range(50)]
    for child in children:
        child.wait()
    # Something the sensor does see, after the execs: once it is in, they have been handled.
    marker = subprocess.Popen(["/bin/cat", str(folder / "file.conf")], stdout=subprocess.DEVNULL)
    marker.wait()
    assert wait_for(lambda: _of_pid(events, marker.pid)), f"health {sensor.health()}"
    pids = {child.pid for child in children}
    assert not [e for e in _flat(events) if e.get("process.pid") in pids]


def test_shares_audit_with_process_audit(
    audit_guard: netlink.AuditStatus,
    make_context: MakeContext,
    audit_rules_of_ours: Callable[[], list[bytes]],
    wait_for: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """Started first, as the agent starts sensors by name; execs still reach process_audit."""
    watched = tmp_path / "app.conf"
    watched.write_text("x")
    table = ProcessTable("agent-test")
    records_context, records_events = make_context(extra_watches=[str(watched)])
    process_context, process_events = make_context()
    records_context.processes = process_context.processes = table
    with started(AuditRecordsSensor(records_context)) as records_sensor:
        with started(ProcessAuditSensor(process_context)):
            writer = subprocess.run(["/bin/cp", "/etc/hostname", str(watched)], check=True)
            assert writer.returncode == 0
            execs = wait_for(
                lambda: [
                    e
                    for e in list(process_events)
                    if e["event"]["action"] == "exec" and e["process"]["name"] == "cp"
                ]
            )
            written = wait_for(
                lambda: [e for e in _flat(records_events) if e.get("name") == str(watched)]
            )
        assert execs, "process_audit lost the exec of cp"
        assert written and written[0]["process.pid"] == execs[0]["process"]["pid"]
        # The exec's entity id, from the shared table, names the writer in the record event.
        assert written[0]["process.entity_id"] == execs[0]["process"]["entity_id"]
        assert records_sensor.health().state == "running"
        remaining = {rules.AuditRule.unpack(data).key for data in audit_rules_of_ours()}
        assert remaining == {WATCH_KEY, SYSCALL_KEY}
    assert audit_rules_of_ours() == []


def test_stop_removes_the_rules_and_restores_audit(
    audit_guard: netlink.AuditStatus,
    make_context: MakeContext,
    audit_rules_of_ours: Callable[[], list[bytes]],
    tmp_path: Path,
) -> None:
    before = audit_guard
    (tmp_path / "f").write_text("x")
    context, _events = make_context(extra_watches=[str(tmp_path / "f"), f"{tmp_path}/"])
    sensor = AuditRecordsSensor(context)
    sensor.check_compatible()
    sensor.start()
    try:
        loaded = [rules.AuditRule.unpack(data) for data in audit_rules_of_ours()]
        counters = sensor.health().counters
        assert len(loaded) == counters["watches"] + counters["syscall_rules"]
        keys = {rule.key for rule in loaded}
        assert keys == {WATCH_KEY, SYSCALL_KEY}
        watched = {
            value for rule in loaded for _f, _o, value in rule.fields if isinstance(value, str)
        }
        assert {str(tmp_path / "f"), str(tmp_path)} <= watched
        assert sensor.health().state == "running"
    finally:
        sensor.stop()
    assert audit_rules_of_ours() == []
    sock = netlink.AuditSocket()
    try:
        after = sock.get_status()
    finally:
        sock.close()
    assert (after.enabled, after.pid, after.backlog_limit, after.failure) == (
        before.enabled,
        before.pid,
        before.backlog_limit,
        before.failure,
    )
    assert sensor.health().state == "stopped"


def test_default_syscall_rules_cover_every_abi() -> None:
    loaded = rules.single_call_rules(DEFAULT_SYSCALLS, SYSCALL_KEY)
    names = {arch.audit_arch: arch.names for arch in rules.arches_for()}
    covered = {
        names[value][number]
        for rule in loaded
        for field, _op, value in rule.fields
        if field == rules.AUDIT_ARCH and isinstance(value, int)
        for number in rule.syscalls
    }
    assert covered == set(DEFAULT_SYSCALLS) - (
        {"mknod"} if platform.machine() == "aarch64" else set()
    )
