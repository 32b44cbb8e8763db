"""The run_command action: policy gate, output capture and caps, timeout killing the group."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from vigil.agent.respond import REGISTRY, ActionContext
from vigil.agent.respond.errors import ResponseError
from vigil.agent.respond.run_command import RunCommandAction


def _action(tmp_path: Path, allowed: bool) -> RunCommandAction:
    context = ActionContext(
        agent_id="test-agent",
        state_dir=str(tmp_path),
        server_host="127.0.0.1",
        server_port=1,
        allow_run_command=allowed,
    )
    return RunCommandAction(context)


def test_registered() -> None:
    assert REGISTRY["run_command"] is RunCommandAction
    assert RunCommandAction.permission == "response.run_command"
    assert RunCommandAction.destructive


def test_refused_by_default(tmp_path: Path) -> None:
    context = ActionContext(
        agent_id="test-agent", state_dir=str(tmp_path), server_host="127.0.0.1", server_port=1
    )
    marker = tmp_path / "ran"
    with pytest.raises(ResponseError, match="tenant policy does not allow"):
        RunCommandAction(context).run({"argv": ["touch", str(marker)]})
    assert not marker.exists()


def test_runs_when_allowed(tmp_path: Path) -> None:
    out = _action(tmp_path, True).run({"argv": ["echo", "hello; not a shell"]})
    assert out == {
        "exit_code": 0,
        "stdout": "hello; not a shell\n",
        "stderr": "",
        "timed_out": False,
        "truncated": False,
        "stdout_bytes": 19,
        "stderr_bytes": 0,
    }


def test_shell_and_exit_code(tmp_path: Path) -> None:
    out = _action(tmp_path, True).run({"argv": ["echo out; echo err >&2; exit 3"], "shell": True})
    assert (out["exit_code"], out["stdout"], out["stderr"]) == (3, "out\n", "err\n")
    with pytest.raises(ResponseError, match="exactly one string"):
        _action(tmp_path, True).run({"argv": ["echo", "x"], "shell": True})


def test_output_truncated(tmp_path: Path) -> None:
    out = _action(tmp_path, True).run(
        {"argv": ["head", "-c", "100000", "/dev/zero"], "max_output_bytes": 1000}
    )
    assert out["exit_code"] == 0
    assert out["truncated"]
    assert len(out["stdout"]) == 1000
    assert out["stdout_bytes"] == 100000


def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    out = _action(tmp_path, True).run(
        {
            "argv": [f"sleep 30 & echo $! > {pidfile}; wait"],
            "shell": True,
            "timeout_seconds": 1,
        }
    )
    assert out["timed_out"]
    assert out["exit_code"] == -9
    child = int(pidfile.read_text())
    # The background sleep was in the group, so it was killed too (at most a zombie remains).
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    else:
        os.kill(child, 9)
        pytest.fail("the background child outlived the timeout")


def test_background_child_holding_output_counts_as_timeout(tmp_path: Path) -> None:
    out = _action(tmp_path, True).run(
        {"argv": ["sleep 30 & echo started"], "shell": True, "timeout_seconds": 1}
    )
    assert out["timed_out"]
    assert out["stdout"] == "started\n"


def test_bad_params(tmp_path: Path) -> None:
    action = _action(tmp_path, True)
    with pytest.raises(ResponseError, match="'argv' must be"):
        action.run({"argv": "ls -l"})
    with pytest.raises(ResponseError, match="at most 600"):
        action.run({"argv": ["true"], "timeout_seconds": 601})
    with pytest.raises(ResponseError, match="cannot start 'no-such-program-vigil'"):
        action.run({"argv": ["no-such-program-vigil"]})
