"""block_exec from the CLI through a real server to a real agent, across an agent restart.

The agent runs without sensors (nothing touches kernel audit) and its policy puts the exec
guard's permission mark on one folder the test made, nowhere else.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningServer, start_server
from vigil.agent import identity
from vigil.agent.sensors import REGISTRY as SENSORS

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="fanotify permission marks need root"),
]

WAIT_SECONDS = 60


def wait_for(probe: Any, what: str) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def run(path: Path) -> int:
    return subprocess.run([str(path)], timeout=30).returncode


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running, uvicorn_server, thread = start_server(tmp_path / "server", [])
    try:
        yield running
    finally:
        running.api.close()
        running.ctx.doorbells.close()
        uvicorn_server.should_exit = True
        thread.join(timeout=30)
        running.ctx.close()


class AgentProcess:
    """``vigil agent run`` with a policy file, started and stopped by the test."""

    def __init__(self, state: Path, policy: Path, log: Path) -> None:
        self.state, self.policy, self.log = state, policy, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vigil.cli.main", "agent", "run"]
            + ["--state-dir", str(self.state), "--policy", str(self.policy)],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("a"),
        )

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        return self.process.returncode


def cli(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    data_dir = server.config.data_dir
    return subprocess.run(
        [sys.executable, "-m", "vigil.cli.main", "--data-dir", str(data_dir), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=90,
    )


def exec_block_health(server: RunningServer) -> dict[str, Any]:
    hosts = server.api.call("GET", "/hosts")
    return dict(hosts[0]["health"].get("exec_block", {})) if hosts else {}


def test_block_exec_from_the_cli_survives_an_agent_restart(
    tmp_path: Path, server: RunningServer
) -> None:
    folder = tmp_path / "drop"
    folder.mkdir()
    program = folder / "payload"
    shutil.copy(shutil.which("true") or "/bin/true", program)
    digest = hashlib.sha256(program.read_bytes()).hexdigest()
    policy = tmp_path / "policy.yml"
    policy.write_text(
        json.dumps(
            {
                "sensors": {name: False for name in SENSORS},
                "response": {"block_exec": {"paths": [str(folder)]}},
            }
        )
    )
    state = tmp_path / "agent"
    host_id = identity.enroll(state, server.url, server.enroll_token()).agent_id
    agent = AgentProcess(state, policy, tmp_path / "agent.log")
    agent.start()
    try:
        assert wait_for(lambda: exec_block_health(server).get("state") == "idle", "a heartbeat")

        refused = cli(server, "respond", "block_exec", host_id, "--param", f"sha256={digest}")
        assert refused.returncode == 1 and "destructive: give a reason" in refused.stderr
        done = cli(
            server,
            "respond",
            "block_exec",
            host_id,
            "--param",
            f"sha256={digest}",
            "--param",
            "note=case 12",
            "--reason",
            "dropper from alert",
        )
        assert done.returncode == 0, done.stderr
        task = json.loads(done.stdout)
        assert task["status"] == "done", task
        assert task["result"]["blocked"] is True and task["result"]["marked"] == [str(folder)]
        with pytest.raises(PermissionError):
            run(program)

        # The denial reaches the server as telemetry.
        sql = (
            "SELECT count(*) AS n FROM events WHERE \"event.action\" = 'exec_blocked' "
            f"AND \"file.hash.sha256\" = '{digest}' AND \"file.path\" = '{program}'"
        )
        assert wait_for(
            lambda: server.api.call("POST", "/hunt", {"sql": sql})["rows"][0]["n"] == 1,
            "the exec_blocked event",
        )

        assert agent.stop() == 0
        assert run(program) == 0  # a stopped agent leaves no mark behind
        agent.start()
        assert wait_for(
            lambda: exec_block_health(server).get("state") == "enforcing", "the block re-applied"
        )
        with pytest.raises(PermissionError):
            run(program)

        # The stopped agent's long poll was still waiting on the server; the task below must go
        # to the new agent, not to that closed connection.
        listed = cli(server, "respond", "list_blocked", host_id)
        assert json.loads(listed.stdout)["result"]["blocked"][0]["note"] == "case 12"
        undone = cli(server, "respond", "unblock_exec", host_id, "--param", f"sha256={digest}")
        assert json.loads(undone.stdout)["result"]["was_blocked"] is True
        assert run(program) == 0
    finally:
        agent.stop()
