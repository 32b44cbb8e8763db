"""Lineage through forks, sessions, terminals and privilege changes on the real kernel (root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.agent.conftest import started
from vigil.agent.audit import netlink
from vigil.agent.processes import container_id, tty_device
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


def _with(events: Events, action: str, needle: str) -> Events:
    return [
        e
        for e in list(events)
        if e["event"]["action"] == action and needle in e["process"].get("command_line", "")
    ]


FORK_THEN_EXEC = textwrap.dedent(
    """
    import os, sys, time
    child = os.fork()
    if child == 0:
        # The forked child never execs; it reports itself, then forks a grandchild that does.
        with open("/proc/self/stat") as handle:
            ticks = handle.read().rsplit(")", 1)[1].split()[19]
        print(os.getpid(), ticks, flush=True)
        grandchild = os.fork()
        if grandchild == 0:
            os.execv("/bin/true", ["/bin/true", "lineage-marker"])
        os.waitpid(grandchild, 0)
        # Stay alive a moment: the parent's fork record can reach the agent after the
        # grandchild's exec, and the agent then reads this process from /proc instead.
        time.sleep(1)
        os._exit(0)
    os.waitpid(child, 0)
    """
)


def test_a_fork_without_exec_keeps_its_place_in_the_lineage(
    running: tuple[ProcessAuditSensor, Events], wait_for: Callable[..., Any]
) -> None:
    sensor, events = running
    proc = subprocess.run(
        [sys.executable, "-c", FORK_THEN_EXEC, "fork-marker"],
        capture_output=True,
        text=True,
        check=True,
    )
    child_pid, child_ticks = (int(v) for v in proc.stdout.split())
    grandchild = wait_for(
        lambda: [
            e for e in _with(events, "exec", "lineage-marker") if e["process"]["name"] == "true"
        ]
    )
    python = wait_for(lambda: _with(events, "exec", "fork-marker"))
    assert grandchild and python, f"missing exec events; {sensor.health()}"

    child_id = entity_id("agent-test", child_pid, child_ticks)
    parent = grandchild[0]["process"]["parent"]
    assert parent["pid"] == child_pid and parent["entity_id"] == child_id
    assert parent["executable"] == os.path.realpath(sys.executable)
    table = sensor.context.processes
    entry = table.get(child_pid)
    assert entry is not None and entry.entity_id == child_id
    assert entry.parent_entity_id == python[0]["process"]["entity_id"]
    assert sensor.health().counters["forks"] >= 2


SETUID = textwrap.dedent(
    """
    import os
    os.setuid(0)          # already root: no change, no event
    os.setgid(65534)
    os.setuid(65534)
    print(os.getpid(), flush=True)
    """
)


def test_setuid_to_nobody_is_a_uid_change_and_a_no_op_is_dropped(
    running: tuple[ProcessAuditSensor, Events], wait_for: Callable[..., Any]
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to change uid")
    sensor, events = running
    proc = subprocess.run(
        [sys.executable, "-c", SETUID, "setuid-marker"], capture_output=True, text=True, check=True
    )
    pid = int(proc.stdout)
    uid_changes = wait_for(
        lambda: [
            e
            for e in list(events)
            if e["event"]["action"] == "uid_change" and e["process"]["pid"] == pid
        ]
    )
    gid_changes = [
        e
        for e in list(events)
        if e["event"]["action"] == "gid_change" and e["process"]["pid"] == pid
    ]
    assert uid_changes, f"no uid_change event; {sensor.health()}"
    assert len(uid_changes) == 1, "setuid(0) by root changed nothing and must not be reported"
    change = uid_changes[0]
    assert change["event"]["category"] == ["process"] and change["event"]["type"] == ["change"]
    assert change["user"]["id"] == "65534" and change["user"]["effective"]["id"] == "65534"
    assert change["process"]["user"] == {"id": "65534"}
    assert change["process"]["real_user"] == {"id": "65534"}
    assert change["process"]["previous"]["user"] == {"id": "0"}
    assert change["process"]["previous"]["real_user"] == {"id": "0"}
    assert change["process"]["entity_id"]
    assert gid_changes and gid_changes[0]["process"]["group"] == {"id": "65534"}
    assert gid_changes[0]["process"]["previous"]["group"] == {"id": "0"}
    assert sensor.health().counters["id_unchanged"] >= 1


def test_setsid_makes_its_own_session_leader(
    running: tuple[ProcessAuditSensor, Events], wait_for: Callable[..., Any]
) -> None:
    if shutil.which("setsid") is None:
        pytest.skip("needs setsid (util-linux)")
    _sensor, events = running
    # The program lives a moment, so that its session can be read from /proc.
    subprocess.run(["setsid", "/bin/sh", "-c", "sleep 0.2", "setsid-marker"], check=True)
    found = wait_for(lambda: _with(events, "exec", "setsid-marker"))
    assert found
    process = found[-1]["process"]
    # setsid forks when it leads a process group already; either way the program leads.
    assert process["session_leader"]["pid"] == process["pid"]
    assert process["session_leader"]["entity_id"] == process["entity_id"]
    assert "tty" not in process


def test_a_program_under_script_has_a_terminal(
    running: tuple[ProcessAuditSensor, Events], wait_for: Callable[..., Any]
) -> None:
    if shutil.which("script") is None:
        pytest.skip("needs script (util-linux)")
    _sensor, events = running
    subprocess.run(
        ["script", "-qec", "/bin/sh -c 'sleep 0.2' tty-marker", "/dev/null"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        check=True,
    )
    found = wait_for(lambda: _with(events, "exec", "tty-marker"))
    assert found
    process = found[-1]["process"]
    assert process["tty"]["char_device"]["major"] == 136  # Unix98 pseudo-terminal slaves
    assert isinstance(process["tty"]["char_device"]["minor"], int)
    leader = process["session_leader"]
    assert leader["entity_id"] and leader["pid"] != os.getsid(0)


@pytest.mark.parametrize(
    ("cgroup", "expected"),
    [
        pytest.param("/system.slice/docker-" + "a" * 64 + ".scope", ("a" * 64, "docker"), id="d"),
        pytest.param("/docker/" + "b" * 64, ("b" * 64, "docker"), id="docker-cgroupfs"),
        pytest.param(
            "/kubepods.slice/kubepods-pod1.slice/cri-containerd-" + "c" * 64 + ".scope",
            ("c" * 64, "containerd"),
            id="containerd",
        ),
        pytest.param(
            "/machine.slice/libpod-" + "d" * 64 + ".scope/container",
            ("d" * 64, "podman"),
            id="podman",
        ),
        pytest.param("/kubepods/burstable/pod1/" + "e" * 64, ("e" * 64, None), id="kubepods"),
        pytest.param("/user.slice/user-0.slice/session-3.scope", None, id="host"),
        pytest.param(None, None, id="unknown"),
    ],
)
def test_container_id_from_cgroup(
    cgroup: str | None, expected: tuple[str, str | None] | None
) -> None:
    assert container_id(cgroup) == expected


@pytest.mark.parametrize(
    ("tty_nr", "device"),
    [
        pytest.param(0, None, id="none"),
        pytest.param(34816, (136, 0), id="pts0"),
        pytest.param(34817 + (1 << 20), (136, 257), id="pts257"),
        pytest.param(1025, (4, 1), id="tty1"),
    ],
)
def test_tty_device_decoding(tty_nr: int, device: tuple[int, int] | None) -> None:
    assert tty_device(tty_nr) == device
