"""The main job end to end: ``vigil up`` on this host, real attack procedures, real alerts.

The server and agent run as a user runs them (the ``vigil`` CLI in a subprocess); the agent
watches the real kernel audit subsystem. Procedures come from Atomic Red Team and must fire the
SigmaHQ rules written for them, with their ATT&CK ids, and the alert's process tree must reach
the shell that ran them.
"""

from __future__ import annotations

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

from tests import atomic
from tests.conftest import SIGMA_LINUX, free_port
from vigil.agent.audit import netlink, rules

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the audit sensor needs root")

WAIT_SECONDS = 60


def vigil(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vigil.cli.main", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def vigil_json(data_dir: Path, *args: str) -> Any:
    result = vigil(data_dir, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def our_audit_rules() -> list[rules.AuditRule]:
    sock = netlink.AuditSocket()
    try:
        return [r for r in map(rules.AuditRule.unpack, sock.list_rules()) if rules.is_vigil_rule(r)]
    finally:
        sock.close()


def audit_sensor_running(data_dir: Path) -> bool:
    hosts = vigil_json(data_dir, "hosts", "list")
    sensors = hosts[0]["health"].get("sensors", {}) if hosts else {}
    return bool(sensors.get("process_audit", {}).get("state") == "running")


@pytest.fixture(scope="module")
def vigil_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``vigil up`` with SigmaHQ's Linux rules; stopped with SIGTERM at the end."""
    data_dir = tmp_path_factory.mktemp("vigil-data")
    log_path = data_dir.parent / "vigil-up.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vigil.cli.main",
                "up",
                "--data-dir",
                str(data_dir),
                "--listen",
                f"127.0.0.1:{free_port()}",
                "--rules",
                str(SIGMA_LINUX),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            if vigil(data_dir, "status").returncode == 0 and audit_sensor_running(data_dir):
                break
            assert process.poll() is None, log_path.read_text()
            time.sleep(0.5)
        else:
            pytest.fail(f"vigil up did not become ready:\n{log_path.read_text()}")
        yield data_dir
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, log_path.read_text()
    assert our_audit_rules() == [], "vigil up left its audit rules behind"


def wait_for_alert(data_dir: Path, rule_id: str, marker: str) -> dict[str, Any]:
    """The alert of ``rule_id`` whose command line carries ``marker``."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        for alert in vigil_json(data_dir, "alerts", "list"):
            process = alert["event"].get("process", {})
            text = " ".join([process.get("command_line") or "", process.get("executable") or ""])
            if alert["rule"]["id"] == rule_id and marker in text:
                return alert  # type: ignore[no-any-return]
        time.sleep(0.5)
    raise AssertionError(f"no alert of rule {rule_id} for {marker!r} within {WAIT_SECONDS}s")


def procedures(work: Path) -> list[tuple[str, atomic.Procedure, str, str, str]]:
    """(case id, procedure, SigmaHQ rule id, ATT&CK id, marker in the alerted process)."""
    history = work / "home" / ".bash_history"
    history.parent.mkdir(parents=True, exist_ok=True)
    history.write_text("ls\n")
    padded, stomped = work / "evil-binary", work / "access.txt"
    shutil.copy("/usr/bin/true", padded)
    stomped.write_text("x")
    return [
        (
            "base64-decode",
            atomic.load(
                "T1140",
                "b4f6a567-a27a-41e5-b8ef-ac4b4008bb7e",
                encoded_file=str(work / "T1140.encoded"),
            ),
            "e2072cab-8c9a-459b-b63c-40ae79e27031",
            "T1027",
            str(work / "T1140.encoded"),
        ),
        (
            "base64-shebang",
            atomic.load("T1140", "3a15c372-67c1-4430-ac8e-ec06d641ce4d"),
            "fe2f9663-41cb-47e2-b954-8a228f3b9dff",
            "T1140",
            "IyEvYmluL2Jhc2gK",
        ),
        (
            "history-rm",
            atomic.load(
                "T1070.003", "a934276e-2be5-4a36-93fd-98adbb5bd4fc", history_path=str(history)
            ),
            "1182f3b3-e716-4efa-99ab-d2685d04360f",
            "T1565.001",
            str(history),
        ),
        (
            "read-shadow",
            atomic.load(
                "T1003.008",
                "3723ab77-c546-403c-8fb4-bb577033b235",
                output_file=str(work / "shadow.txt"),
            ),
            "b45e3d6f-42c6-47d8-a478-df6bd6cf534c",
            "T1087.001",
            "/etc/shadow",
        ),
        (
            "binary-padding",
            atomic.load(
                "T1027.001", "ffe2346c-abd5-4b45-a713-bf5f1ebd573a", file_to_pad=str(padded)
            ),
            "c52a914f-3d8b-4b2a-bb75-b3991e75f8ba",  # an auditd rule, on the EXECVE view
            "T1027.001",
            "if=/dev/zero",
        ),
        (
            "timestomp",
            atomic.load(
                "T1070.006", "5f9113d5-ed75-47ed-ba23-ea3573d05810", target_filename=str(stomped)
            ),
            "b3cec4e7-6901-4b0d-a02d-8ab2d8eb818b",
            "T1070.006",
            str(stomped),
        ),
        (
            "hostname",
            atomic.load("T1082", "486e88ea-4f56-470f-9b57-3f4d73f39133"),
            "42df45e7-e6e9-43b5-8f26-bec5b39cc239",
            "T1082",
            "hostname",
        ),
    ]


def test_atomic_procedures_raise_sigma_alerts_with_their_process_tree(
    vigil_up: Path, tmp_path: Path
) -> None:
    cases = procedures(tmp_path)
    shells = {}
    for case_id, procedure, *_ in cases:
        shell = atomic.run(procedure, tmp_path)
        shell.wait(timeout=60)
        shells[case_id] = shell.pid

    for case_id, _procedure, rule_id, technique, marker in cases:
        alert = wait_for_alert(vigil_up, rule_id, marker)
        assert technique in alert["attack"], (case_id, alert["attack"])
        host = alert["host"]
        assert host["id"] and host["name"]

        shown = vigil_json(vigil_up, "alerts", "show", alert["id"])
        tree = shown["process_tree"]
        assert tree[-1]["entity_id"] == alert["event"]["process"]["entity_id"]
        assert shells[case_id] in [node["pid"] for node in tree], (case_id, tree)
        assert all(node["entity_id"] and node["executable"] for node in tree), tree


def test_a_binary_run_from_tmp_is_detected(vigil_up: Path, tmp_path: Path) -> None:
    work = Path("/tmp") / f"vigil-e2e-{os.getpid()}"
    work.mkdir(exist_ok=True)
    try:
        dropped = work / "update-helper"
        shutil.copy("/usr/bin/id", dropped)
        subprocess.run(["/bin/sh", "-c", f"{dropped} -u"], check=True, capture_output=True)
        alert = wait_for_alert(vigil_up, "312b42b1-bded-4441-8b58-163a3af58775", str(dropped))
        assert "T1036" in alert["attack"]
    finally:
        shutil.rmtree(work)


def test_hunt_finds_the_exact_command_line(vigil_up: Path, tmp_path: Path) -> None:
    marker = f"vigil-hunt-{os.getpid()}"
    subprocess.run(["/bin/echo", marker, "two  spaces", "quote's"], check=True, capture_output=True)
    deadline = time.monotonic() + WAIT_SECONDS
    sql = (
        'SELECT "process.args", "process.command_line" FROM events '
        f"WHERE \"process.command_line\" LIKE '%{marker}%' "
        "AND \"process.name\" = 'echo' "
        "AND list_contains(\"event.type\", 'start')"
    )
    while time.monotonic() < deadline:
        rows = vigil_json(vigil_up, "hunt", "--sql", sql)["rows"]
        if rows:
            break
        time.sleep(0.5)
    assert rows and rows[0]["process.args"] == ["/bin/echo", marker, "two  spaces", "quote's"]


def test_kill_by_entity_id_from_the_cli(vigil_up: Path) -> None:
    victim = subprocess.Popen(["/bin/sleep", "300.5"])
    try:
        sql = (
            'SELECT "host.id" AS host, "process.entity_id" AS entity FROM events '
            f'WHERE "process.pid" = {victim.pid} AND "process.args"[2] = \'300.5\''
        )
        deadline = time.monotonic() + WAIT_SECONDS
        rows: list[dict[str, Any]] = []
        while not rows and time.monotonic() < deadline:
            rows = vigil_json(vigil_up, "hunt", "--sql", sql)["rows"]
            time.sleep(0.2)
        assert rows, "the sleep never showed up in telemetry"

        task = vigil_json(
            vigil_up, "kill", rows[0]["host"], rows[0]["entity"], "--reason", "e2e test"
        )
        while time.monotonic() < deadline:
            task = vigil_json(vigil_up, "tasks", "show", task["id"])
            if task["status"] in ("done", "failed"):
                break
            time.sleep(0.2)
        assert task["status"] == "done", task
        assert victim.wait(timeout=10) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
