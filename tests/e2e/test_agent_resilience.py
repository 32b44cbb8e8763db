"""The agent keeps what it saw through a kill -9 and a server outage, and one sensor failing
does not stop the others."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SIGMA_LINUX, RunningServer, start_server
from vigil.agent import identity
from vigil.agent.audit import netlink
from vigil.detect import builtin_rules_dir

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the agent's kernel sensors need root")

WAIT_SECONDS = 60


def agent_process(state_dir: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vigil.cli.main",
            "agent",
            "run",
            "--state-dir",
            str(state_dir),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("a"),
    )


def wait_for(probe: Any, what: str) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def sensors(server: RunningServer) -> dict[str, Any]:
    hosts = server.api.call("GET", "/hosts")
    return dict(hosts[0]["health"].get("sensors", {})) if hosts else {}


def hunt_count(server: RunningServer, marker: str) -> int:
    sql = (
        f'SELECT count(DISTINCT "process.args"[2]) AS n FROM events WHERE '
        f"\"process.args\"[2] LIKE '{marker}-%' AND list_contains(\"event.type\", 'start')"
    )
    return int(server.api.call("POST", "/hunt", {"sql": sql})["rows"][0]["n"])


def serve(data_dir: Path) -> tuple[RunningServer, Any, Any]:
    return start_server(data_dir, [builtin_rules_dir(), SIGMA_LINUX])


def stop(running: RunningServer, server: Any, thread: Any) -> None:
    running.api.close()
    running.ctx.doorbells.close()
    server.should_exit = True
    thread.join(timeout=30)
    running.ctx.close()


def audit_settings() -> tuple[int, int]:
    sock = netlink.AuditSocket()
    try:
        status = sock.get_status()
    finally:
        sock.close()
    return status.enabled, status.backlog_limit


def test_events_spooled_during_an_outage_survive_kill_9(tmp_path: Path) -> None:
    before = audit_settings()
    running, server, thread = serve(tmp_path / "server")
    state, log = tmp_path / "agent", tmp_path / "agent.log"
    identity.enroll(state, running.url, running.enroll_token())
    url, port = running.url, running.config.port
    agent = agent_process(state, log, "--sensor", "process_audit")
    try:
        wait_for(
            lambda: sensors(running).get("process_audit", {}).get("state") == "running",
            "the audit sensor",
        )
        stop(running, server, thread)  # the outage begins

        marker = f"outage-{uuid.uuid4().hex[:8]}"
        for n in range(50):
            subprocess.run(["/bin/echo", f"{marker}-{n}"], stdout=subprocess.DEVNULL, check=True)
        spool = state / "spool.sqlite"
        # The agent writes to its spool within a second; give it that, then kill it hard.
        time.sleep(3)
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=30)
        assert spool.exists()

        # The same server comes back on the same port; a new agent process sends the spool.
        running, server, thread = start_server(
            tmp_path / "server", [builtin_rules_dir()], port=port
        )
        assert running.url == url
        agent = agent_process(state, log, "--sensor", "process_audit")
        assert wait_for(lambda: hunt_count(running, marker) == 50, "the spooled events")
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=60)
        stop(running, server, thread)
    # The killed agent could not restore kernel audit; the next one restored what it found.
    assert audit_settings() == before


def test_a_sensor_that_cannot_start_is_reported_and_the_others_run(tmp_path: Path) -> None:
    running, server, thread = serve(tmp_path / "server")
    state, log = tmp_path / "agent", tmp_path / "agent.log"
    identity.enroll(state, running.url, running.enroll_token())
    policy = tmp_path / "policy.yml"
    # /proc is a pseudo filesystem: the file sensor refuses to watch it.
    policy.write_text(
        json.dumps({"sensors": {"process_audit": {}, "file_fanotify": {"file_watch": ["/proc"]}}})
    )
    agent = agent_process(state, log, "--policy", str(policy))
    try:
        health = wait_for(
            lambda: (s := sensors(running)).get("process_audit") and s.get("file_fanotify") and s,
            "sensor health",
        )
        assert health["process_audit"]["state"] == "running"
        assert health["file_fanotify"]["state"] == "failed"
        assert "/proc" in health["file_fanotify"]["message"]
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=60)
        stop(running, server, thread)
    assert agent.returncode == 0
