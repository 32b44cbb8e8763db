"""The kill action against real processes the test starts and owns."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from vigil.agent.respond import REGISTRY, ActionContext
from vigil.agent.respond.errors import ResponseError
from vigil.agent.respond.kill import KillAction, read_start_ticks
from vigil.schema.ecs import entity_id

AGENT_ID = "test-agent"


@pytest.fixture
def action(tmp_path: Path) -> KillAction:
    context = ActionContext(
        agent_id=AGENT_ID, state_dir=str(tmp_path), server_host="127.0.0.1", server_port=1
    )
    return KillAction(context)


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes the test starts; whatever of them (and their children) survives is killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        try:
            members = [psutil.Process(process.pid), *psutil.Process(process.pid).children(True)]
        except psutil.NoSuchProcess:
            members = []
        for member in members:
            try:
                member.resume()
                member.kill()
            except psutil.NoSuchProcess:
                pass
        process.wait(timeout=10)


def _eid(pid: int) -> str:
    return entity_id(AGENT_ID, pid, read_start_ticks(pid))


def _descendants(pid: int, count: int) -> list[psutil.Process]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = psutil.Process(pid).children(recursive=True)
        if len(found) >= count:
            return found
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} did not start {count} descendants")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_registered() -> None:
    assert REGISTRY["kill"] is KillAction
    assert KillAction.permission == "response.kill"
    assert KillAction.destructive is True
    assert KillAction.__doc__ and KillAction.run.__doc__


def test_start_ticks_with_parentheses_and_spaces_in_comm(
    tmp_path: Path, spawn: list[subprocess.Popen[bytes]]
) -> None:
    sleep = shutil.which("sleep")
    assert sleep is not None
    odd = tmp_path / "a) b (c) d"
    shutil.copy(sleep, odd)
    process = subprocess.Popen([str(odd), "300"])
    spawn.append(process)
    assert psutil.Process(process.pid).name() == "a) b (c) d"

    ticks = read_start_ticks(process.pid)

    booted = psutil.boot_time()
    assert booted + ticks / os.sysconf("SC_CLK_TCK") == pytest.approx(
        psutil.Process(process.pid).create_time(), abs=0.05
    )


def test_kill_single_process(action: KillAction, spawn: list[subprocess.Popen[bytes]]) -> None:
    process = subprocess.Popen(["sleep", "300"])
    spawn.append(process)

    result = action.run({"entity_id": _eid(process.pid), "pid": process.pid})

    assert result["killed"] == [process.pid]
    assert result["still_running"] == []
    assert process.wait(timeout=10) == -signal.SIGKILL


def test_kill_without_tree_leaves_children(
    action: KillAction, spawn: list[subprocess.Popen[bytes]]
) -> None:
    process = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300 & wait"])
    spawn.append(process)
    children = _descendants(process.pid, 2)

    result = action.run({"entity_id": _eid(process.pid), "pid": process.pid, "tree": False})

    assert result["killed"] == [process.pid]
    process.wait(timeout=10)
    assert all(child.is_running() and not _gone(child.pid) for child in children)
    for child in children:
        child.kill()


def test_kill_tree_kills_descendants_first(
    action: KillAction, spawn: list[subprocess.Popen[bytes]]
) -> None:
    process = subprocess.Popen(
        ["sh", "-c", "sleep 300 & sh -c 'sleep 300 & sleep 300 & wait' & wait"]
    )
    spawn.append(process)
    descendants = _descendants(process.pid, 4)

    result = action.run({"entity_id": _eid(process.pid), "pid": process.pid, "tree": True})

    assert sorted(result["killed"]) == sorted([process.pid, *(d.pid for d in descendants)])
    assert result["killed"][-1] == process.pid
    assert result["still_running"] == []
    assert process.wait(timeout=10) == -signal.SIGKILL
    assert all(_gone(d.pid) for d in descendants)


def test_refuses_wrong_entity_id(action: KillAction, spawn: list[subprocess.Popen[bytes]]) -> None:
    process = subprocess.Popen(["sleep", "300"])
    spawn.append(process)
    stale = entity_id(AGENT_ID, process.pid, read_start_ticks(process.pid) - 1)

    with pytest.raises(ResponseError, match=rf"pid {process.pid} now belongs to another process"):
        action.run({"entity_id": stale, "pid": process.pid, "tree": True})

    assert process.poll() is None
    assert psutil.Process(process.pid).status() != psutil.STATUS_STOPPED


def test_refuses_pid_that_is_gone(action: KillAction) -> None:
    process = subprocess.Popen(["true"])
    eid = _eid(process.pid)
    process.wait(timeout=10)

    with pytest.raises(ResponseError, match=rf"pid {process.pid} is gone; nothing was killed"):
        action.run({"entity_id": eid, "pid": process.pid})


@pytest.mark.parametrize("pid", [1, 0, -1], ids=["init", "zero", "all"])
def test_refuses_init_and_special_pids(action: KillAction, pid: int) -> None:
    with pytest.raises(ResponseError, match=rf"refusing to kill pid {pid}"):
        action.run({"entity_id": "x" * 32, "pid": pid})


def test_refuses_the_agent_itself(action: KillAction) -> None:
    with pytest.raises(ResponseError, match="it is the Vigil agent itself"):
        action.run({"entity_id": _eid(os.getpid()), "pid": os.getpid()})


def test_refuses_tree_that_holds_the_agent(spawn: list[subprocess.Popen[bytes]]) -> None:
    # The "agent" is a Python child of the target shell; killing the shell's tree would kill it.
    code = (
        "import os, sys\n"
        "from vigil.agent.respond import ActionContext\n"
        "from vigil.agent.respond.kill import KillAction, read_start_ticks\n"
        "from vigil.schema.ecs import entity_id\n"
        "from vigil.agent.respond.errors import ResponseError\n"
        "ppid = os.getppid()\n"
        "ctx = ActionContext('a', '/tmp', '127.0.0.1', 1)\n"
        "eid = entity_id('a', ppid, read_start_ticks(ppid))\n"
        "try:\n"
        "    KillAction(ctx).run({'entity_id': eid, 'pid': ppid, 'tree': True})\n"
        "except ResponseError as exc:\n"
        "    print(exc)\n"
    )
    process = subprocess.Popen(
        ["sh", "-c", 'sleep 300 & s=$!; "$0" -c "$1"; kill $s; echo done', sys.executable, code],
        stdout=subprocess.PIPE,
    )
    spawn.append(process)

    out, _ = process.communicate(timeout=30)

    assert b"it is the Vigil agent itself" in out
    assert b"done" in out  # the shell was resumed and went on


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"pid": 5}, "'entity_id' must be"),
        ({"entity_id": "e", "pid": "5"}, "'pid' must be an integer"),
        ({"entity_id": "e", "pid": True}, "'pid' must be an integer"),
        ({"entity_id": "e", "pid": 5, "tree": "yes"}, "'tree' must be true or false"),
    ],
    ids=["no-entity", "pid-string", "pid-bool", "tree-string"],
)
def test_rejects_bad_params(action: KillAction, params: dict[str, object], message: str) -> None:
    with pytest.raises(ResponseError, match=message):
        action.run(params)
