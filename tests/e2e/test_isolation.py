"""Isolation through the whole stack, on hosts in network namespaces made by the test.

The server runs on the ``server`` host, the agent on ``endpoint``, and ``third`` stands for the
rest of the network (and, where a test needs one, its DNS server). An analyst's isolate must cut
the endpoint off ``third`` over IPv4 and IPv6 while the agent keeps talking to the server;
release must give the network back. Nothing is ever applied to the test runner's own network
namespace.
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
SERVER_NAME = "vigil-server.lab"

_RESOLVE = "import socket, sys; print(socket.gethostbyname(sys.argv[1]))"


def vigil_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vigil.cli.main", *args]


def root_tables() -> str:
    return subprocess.run(
        ["nft", "list", "tables"], capture_output=True, text=True, check=True
    ).stdout


class Deployment:
    """A server on ``lab.server`` and an enrolled agent on ``lab.endpoint``.

    Args:
        lab: The lab.
        tmp_path: Where the server's data, the agent's state and both logs go.
        server_host: How the agent names the server: an address or a name.
    """

    def __init__(self, lab: Lab, tmp_path: Path, server_host: str) -> None:
        self.lab = lab
        self.tmp_path = tmp_path
        self.data_dir = tmp_path / "server"
        self.state_dir = tmp_path / "agent"
        self.server_host = server_host
        self.server: subprocess.Popen[str] | None = None
        self.agent: subprocess.Popen[str] | None = None

    def cli(self, *args: str) -> Any:
        done = self.lab.server.run(vigil_cmd("--data-dir", str(self.data_dir), *args, "--json"))
        return json.loads(done.stdout)

    def start_server(self) -> None:
        names = [] if self.server_host == self.lab.server.ipv4 else ["--server-name", SERVER_NAME]
        self.server = self.lab.server.popen(
            vigil_cmd(
                "server",
                "--data-dir",
                str(self.data_dir),
                "--listen",
                f"{self.lab.server.ipv4}:{SERVER_PORT}",
                *names,
            ),
            stdout=subprocess.DEVNULL,
            stderr=(self.tmp_path / "server.log").open("a"),
        )
        wait_for(
            lambda: (
                self.lab.server.run(
                    vigil_cmd("--data-dir", str(self.data_dir), "status"), check=False
                ).returncode
                == 0
            ),
            "the server to start",
        )

    def stop_server(self) -> None:
        assert self.server is not None
        self.server.send_signal(signal.SIGTERM)
        self.server.wait(timeout=60)

    def start_agent(self, token: str) -> None:
        self.agent = self.lab.endpoint.popen(
            vigil_cmd(
                "agent",
                "run",
                "--server",
                f"https://{self.server_host}:{SERVER_PORT}",
                "--enroll-token",
                token,
                "--state-dir",
                str(self.state_dir),
                "--sensor",
                "process_poll",
            ),
            stdout=subprocess.DEVNULL,
            stderr=self.agent_log.open("a"),
        )

    @property
    def agent_log(self) -> Path:
        return self.tmp_path / "agent.log"

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

    def endpoint_tables(self) -> str:
        return self.lab.endpoint.run(["nft", "list", "tables"]).stdout


def wait_for(probe: Any, what: str, seconds: float = WAIT_SECONDS) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _deploy(lab: Lab, tmp_path: Path, server_host: str) -> Iterator[Deployment]:
    assert "vigil_isolation" not in root_tables()
    deployed = Deployment(lab, tmp_path, server_host)
    deployed.start_server()
    deployed.start_agent(deployed.cli("enroll-token", "create")["token"])
    try:
        yield deployed
    finally:
        if deployed.agent is not None and deployed.agent.poll() is None:
            deployed.stop_agent()
        assert "vigil_isolation" not in root_tables()


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """The agent knows the server by its IPv4 address."""
    with Lab() as lab:
        lab.third.serve_tcp(THIRD_PORT, hold=True)
        yield from _deploy(lab, tmp_path, lab.server.ipv4)


@pytest.fixture
def named_deployment(tmp_path: Path) -> Iterator[Deployment]:
    """The agent knows the server by a name that only the DNS server on ``third`` resolves."""
    with Lab() as lab:
        lab.third.serve_tcp(THIRD_PORT, hold=True)
        lab.third.serve_dns({SERVER_NAME: [lab.server.ipv4, lab.server.ipv6]})
        lab.endpoint.use_nameserver(lab.third.ipv4)
        yield from _deploy(lab, tmp_path, SERVER_NAME)


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
    assert task["result"]["proof"]["server"]["reached"] is True
    assert not lab.endpoint.connects(lab.third.ipv4, THIRD_PORT)
    assert not lab.endpoint.connects(lab.third.ipv6, THIRD_PORT)
    assert lab.endpoint.connects(lab.server.ipv4, SERVER_PORT)
    assert "vigil_isolation" not in root_tables()

    # The agent still reaches the server: a fresh heartbeat reports the isolation.
    wait_for(lambda: deployment.cli("hosts", "list")[0]["isolated"], "an isolated heartbeat")
    again = deployment.run_task("hosts", "isolate", host_id, "--reason", "twice")
    assert again["status"] == "done", again
    assert again["result"]["already_isolated"] is True
    assert again["result"]["rules_refreshed"] is True
    assert again["result"]["changed"] == []

    released = deployment.run_task("hosts", "release", host_id, "--reason", "test over")
    assert released["status"] == "done", released
    assert lab.endpoint.connects(lab.third.ipv4, THIRD_PORT)
    assert lab.endpoint.connects(lab.third.ipv6, THIRD_PORT)

    audit = deployment.cli("tasks", "list")
    assert [t["action"] for t in audit] == ["release", "isolate", "isolate"]


def test_dry_run_from_the_cli_shows_the_connections_it_would_cut(
    deployment: Deployment,
) -> None:
    lab = deployment.lab
    host_id = deployment.host_id()
    holder = lab.endpoint.hold_connection(lab.third.ipv4, THIRD_PORT)

    task = deployment.run_task(
        "respond", "isolate", host_id, "--param", "dry_run=true", "--reason", "look first"
    )

    assert task["status"] == "done", task
    result = task["result"]
    assert result["dry_run"] is True and result["isolated"] is False
    (cut,) = [c for c in result["cut"] if c["remote_ip"] == lab.third.ipv4]
    assert (cut["remote_port"], cut["pid"]) == (THIRD_PORT, holder.pid)
    assert cut["process"].startswith("python")
    kept = {c["kept_by"] for c in result["kept"]}
    assert kept == {"server"}  # the agent's own connections to the server
    assert "vigil_isolation" not in deployment.endpoint_tables()
    assert lab.endpoint.connects(lab.third.ipv4, THIRD_PORT)
    assert deployment.cli("hosts", "list")[0]["isolated"] is False
    shown = lab.server.run(
        vigil_cmd("--data-dir", str(deployment.data_dir), "tasks", "show", task["id"])
    ).stdout
    assert "dry run:  nothing applied" in shown
    assert f"-> {lab.third.ipv4}:{THIRD_PORT} ESTABLISHED  python" in shown
    assert f"(pid {holder.pid})" in shown


def test_allow_list_survives_the_agent_restart_and_isolation_returns(
    deployment: Deployment,
) -> None:
    lab = deployment.lab
    host_id = deployment.host_id()
    allow = json.dumps([f"[{lab.third.ipv6}]:{THIRD_PORT}"])
    task = deployment.run_task(
        "respond", "isolate", host_id, "--param", f"allow={allow}", "--reason", "restart test"
    )
    assert task["status"] == "done", task
    assert lab.endpoint.connects(lab.third.ipv6, THIRD_PORT)
    assert not lab.endpoint.connects(lab.third.ipv4, THIRD_PORT)

    deployment.stop_agent()
    assert "vigil_isolation" not in deployment.endpoint_tables()
    assert lab.endpoint.connects(lab.third.ipv4, THIRD_PORT)

    deployment.start_agent("unused-once-enrolled")
    wait_for(
        lambda: "vigil_isolation" in deployment.endpoint_tables(),
        "isolation to be re-applied at start",
    )
    assert not lab.endpoint.connects(lab.third.ipv4, THIRD_PORT)
    assert lab.endpoint.connects(lab.third.ipv6, THIRD_PORT)
    assert lab.endpoint.connects(lab.server.ipv4, SERVER_PORT)


def test_a_server_known_by_name_is_still_reached_once_dns_is_cut(
    named_deployment: Deployment,
) -> None:
    deployment = named_deployment
    lab = deployment.lab
    host_id = deployment.host_id()
    assert lab.endpoint.python(_RESOLVE, SERVER_NAME).stdout.strip() == lab.server.ipv4

    task = deployment.run_task("hosts", "isolate", host_id, "--reason", "by name")

    assert task["status"] == "done", task
    assert set(task["result"]["server"]) == {lab.server.ipv4, lab.server.ipv6}
    assert task["result"]["proof"]["server"]["address"] == lab.server.ipv4
    # DNS (on third) is cut now: the name no longer resolves on the endpoint.
    assert lab.endpoint.python(_RESOLVE, SERVER_NAME, check=False).returncode != 0
    # A server restart drops every connection the agent had; it must open new ones without DNS.
    deployment.stop_server()
    deployment.start_server()
    released = deployment.run_task("hosts", "release", host_id, "--reason", "name test over")
    assert released["status"] == "done", released
    assert lab.endpoint.python(_RESOLVE, SERVER_NAME).stdout.strip() == lab.server.ipv4


def test_the_agent_releases_itself_when_the_lease_runs_out_and_says_why(
    deployment: Deployment,
) -> None:
    lab = deployment.lab
    host_id = deployment.host_id()
    task = deployment.run_task(
        "respond", "isolate", host_id, "--param", "lease_seconds=30", "--reason", "lease test"
    )
    assert task["status"] == "done", task
    assert task["result"]["lease_seconds"] == 30
    assert not lab.endpoint.connects(lab.third.ipv4, THIRD_PORT)

    deployment.stop_server()
    wait_for(
        lambda: "vigil_isolation" not in deployment.endpoint_tables(),
        "the agent to release the host when the lease ran out",
        seconds=90,
    )
    assert lab.endpoint.connects(lab.third.ipv4, THIRD_PORT)
    assert "released the host from isolation by itself" in deployment.agent_log.read_text()

    deployment.start_server()
    sql = (
        'SELECT "event.action", doc FROM events WHERE "event.action" = \'isolation_lease_expired\''
    )
    rows = wait_for(
        lambda: deployment.cli("hunt", "--sql", sql)["rows"], "the lease event to arrive"
    )
    assert "longer than the lease of 30 s" in json.dumps(rows[0]["doc"])
    wait_for(
        lambda: deployment.cli("hosts", "list")[0]["isolated"] is False,
        "a heartbeat saying the host is no longer isolated",
    )
