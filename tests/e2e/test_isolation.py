"""Isolation through the whole stack, on hosts in network namespaces made by the test.

The server runs on the ``server`` host, the agent on ``endpoint``, and ``third`` stands for the
rest of the network. An analyst's isolate must cut the endpoint off ``third`` over IPv4 and IPv6
while the agent keeps talking to the server; release must give the network back. Nothing is
ever applied to the test runner's own network namespace.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netns import Lab, skip_reason

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))

SERVER_PORT = 8443
THIRD_PORT = 9000
WAIT_SECONDS = 60


def vigil_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vigil.cli.main", *args]


def root_tables() -> str:
    return subprocess.run(
        ["nft", "list", "tables"], capture_output=True, text=True, check=True
    ).stdout


class Deployment:
    """A server on ``lab.server`` and an enrolled agent on ``lab.endpoint``."""

    def __init__(self, lab: Lab, data_dir: Path, state_dir: Path) -> None:
        self.lab = lab
        self.data_dir = data_dir
        self.state_dir = state_dir
        self.agent: subprocess.Popen[str] | None = None

    def cli(self, *args: str) -> Any:
        done = self.lab.server.run(vigil_cmd("--data-dir", str(self.data_dir), *args, "--json"))
        return json.loads(done.stdout)

    def start_agent(self, token: str) -> None:
        self.agent = self.lab.endpoint.popen(
            vigil_cmd(
                "agent",
                "run",
                "--server",
                f"https://{self.lab.server.ipv4}:{SERVER_PORT}",
                "--enroll-token",
                token,
                "--state-dir",
                str(self.state_dir),
                "--sensor",
                "process_poll",
            ),
            stdout=subprocess.DEVNULL,
            stderr=(self.state_dir.parent / "agent.log").open("w"),
        )

    def stop_agent(self) -> None:
        assert self.agent is not None
        self.agent.send_signal(signal.SIGTERM)
        self.agent.wait(timeout=60)

    def host_id(self) -> str:
        return str(wait_for(lambda: self.cli("hosts", "list"), "the agent to enroll")[0]["id"])

    def run_task(self, *args: str) -> dict[str, Any]:
        task = self.cli(*args)
        return wait_for(
            lambda: (
                (t := self.cli("tasks", "show", task["id"]))["status"] in ("done", "failed") and t
            ),
            f"task {task['id']} to finish",
        )


def wait_for(probe: Any, what: str) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    with Lab() as lab:
        lab.third.serve_tcp(THIRD_PORT)
        deployed = Deployment(lab, tmp_path / "server", tmp_path / "agent")
        lab.server.popen(
            vigil_cmd(
                "server",
                "--data-dir",
                str(deployed.data_dir),
                "--listen",
                f"{lab.server.ipv4}:{SERVER_PORT}",
            ),
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "server.log").open("w"),
        )
        wait_for(
            lambda: (
                lab.server.run(
                    vigil_cmd("--data-dir", str(deployed.data_dir), "status"), check=False
                ).returncode
                == 0
            ),
            "the server to start",
        )
        deployed.start_agent(deployed.cli("enroll-token", "create")["token"])
        try:
            yield deployed
        finally:
            if deployed.agent is not None and deployed.agent.poll() is None:
                deployed.stop_agent()


def test_isolate_cuts_the_network_but_keeps_the_server_and_release_restores_it(
    deployment: Deployment,
) -> None:
    lab = deployment.lab
    host_id = deployment.host_id()
    assert lab.endpoint.connects(lab.third.ipv4, THIRD_PORT)
    assert lab.endpoint.connects(lab.third.ipv6, THIRD_PORT)

    task = deployment.run_task("hosts", "isolate", host_id, "--reason", "test")
    assert task["status"] == "done", task
    assert task["result"]["isolated"] is True
    assert not lab.endpoint.connects(lab.third.ipv4, THIRD_PORT)
    assert not lab.endpoint.connects(lab.third.ipv6, THIRD_PORT)
    assert lab.endpoint.connects(lab.server.ipv4, SERVER_PORT)
    assert "vigil_isolation" not in root_tables()

    # The agent still reaches the server: a fresh heartbeat reports the isolation.
    wait_for(lambda: deployment.cli("hosts", "list")[0]["isolated"], "an isolated heartbeat")
    again = deployment.run_task("hosts", "isolate", host_id, "--reason", "twice")
    assert again["result"]["already_isolated"] is True

    released = deployment.run_task("hosts", "release", host_id, "--reason", "test over")
    assert released["status"] == "done", released
    assert lab.endpoint.connects(lab.third.ipv4, THIRD_PORT)
    assert lab.endpoint.connects(lab.third.ipv6, THIRD_PORT)

    audit = deployment.cli("tasks", "list")
    assert [t["action"] for t in audit] == ["release", "isolate", "isolate"]


def test_isolation_is_lifted_when_the_agent_stops_and_returns_when_it_starts(
    deployment: Deployment,
) -> None:
    lab = deployment.lab
    host_id = deployment.host_id()
    assert (
        deployment.run_task("hosts", "isolate", host_id, "--reason", "restart test")["status"]
        == "done"
    )

    deployment.stop_agent()
    tables = lab.endpoint.run(["nft", "list", "tables"]).stdout
    assert "vigil_isolation" not in tables
    assert lab.endpoint.connects(lab.third.ipv4, THIRD_PORT)

    deployment.start_agent("unused-once-enrolled")
    wait_for(
        lambda: "vigil_isolation" in lab.endpoint.run(["nft", "list", "tables"]).stdout,
        "isolation to be re-applied at start",
    )
    assert not lab.endpoint.connects(lab.third.ipv4, THIRD_PORT)
    assert lab.endpoint.connects(lab.server.ipv4, SERVER_PORT)
