"""The analyst API on a real server: triage of alerts, and what destructive actions demand."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningServer
from tests.server.test_agent_protocol import process_event
from vigil.agent import identity
from vigil.agent.transport import ServerLink
from vigil.cli.client import CliError


@pytest.fixture
def agent_id(running_server: RunningServer, tmp_path: Path) -> Iterator[str]:
    """An enrolled agent that has sent one decode (low) and one decode piped to a shell (high)."""
    enrolled = identity.enroll(
        tmp_path / "agent", running_server.url, running_server.enroll_token()
    )
    link = ServerLink(enrolled)
    decode = process_event(1, "base64 -d /tmp/x.b64", executable="/usr/bin/base64")
    piped = process_event(2, "sh -c echo ZWNobyBoaQo= | base64 -d | sh", executable="/usr/bin/sh")
    assert link.post("/events", {"spool_epoch": "e", "events": [decode, piped]}).status_code == 200
    link.close()
    yield enrolled.agent_id


def test_alerts_filter_by_level_and_host(running_server: RunningServer, agent_id: str) -> None:
    every = running_server.api.call("GET", "/alerts")
    assert {a["rule"]["level"] for a in every} >= {"low", "high"}
    high = running_server.api.call("GET", "/alerts", params={"level": "high"})
    assert high and all(a["rule"]["level"] in ("high", "critical") for a in high)
    assert running_server.api.call("GET", "/alerts", params={"host": "someone-else"}) == []
    assert len(running_server.api.call("GET", "/alerts", params={"host": agent_id})) == len(every)


def test_triage_changes_the_status_and_is_audited(
    running_server: RunningServer, agent_id: str
) -> None:
    alert = running_server.api.call("GET", "/alerts")[0]
    assert alert["status"] == "new"
    updated = running_server.api.call("PATCH", f"/alerts/{alert['id']}", {"status": "closed"})
    assert updated["status"] == "closed"
    closed = running_server.api.call("GET", "/alerts", params={"status": "closed"})
    assert [a["id"] for a in closed] == [alert["id"]]
    audit = running_server.api.call("GET", "/audit")
    assert any(a["action"] == "alert.status" and a["target"] == alert["id"] for a in audit)

    with pytest.raises(CliError, match="422"):
        running_server.api.call("PATCH", f"/alerts/{alert['id']}", {"status": "deleted"})


@pytest.mark.parametrize("action", ["isolate", "kill"])
def test_destructive_actions_need_a_reason(
    running_server: RunningServer, agent_id: str, action: str
) -> None:
    body = {"entity_id": "e1"} if action == "kill" else {}
    with pytest.raises(CliError, match="reason"):
        running_server.api.call("POST", f"/hosts/{agent_id}/{action}", body)
    assert running_server.api.call("GET", "/tasks") == []


def test_alerts_name_their_attack_techniques_and_tactics(
    running_server: RunningServer, agent_id: str
) -> None:
    alerts = running_server.api.call("GET", "/alerts", params={"level": "high"})
    high = next(a for a in alerts if "T1140" in a["attack"])
    details = {d["id"]: d for d in high["attack_details"]}
    assert details["T1140"]["name"] == "Deobfuscate/Decode Files or Information"
    assert {"id": "defense-evasion", "name": "Defense Evasion"} in details["T1140"]["tactics"]
    shown = running_server.api.call("GET", f"/alerts/{high['id']}")
    assert shown["attack_details"] == high["attack_details"]


def test_respond_names_any_action_and_guards_destructive_ones(
    running_server: RunningServer, agent_id: str
) -> None:
    with pytest.raises(CliError, match="no action 'format-disk'; one of: .*isolate"):
        running_server.api.call("POST", f"/hosts/{agent_id}/respond", {"action": "format-disk"})
    with pytest.raises(CliError, match="kill is destructive: give a reason"):
        running_server.api.call(
            "POST",
            f"/hosts/{agent_id}/respond",
            {"action": "kill", "params": {"entity_id": "e", "pid": 5}},
        )
    task = running_server.api.call(
        "POST", f"/hosts/{agent_id}/respond", {"action": "release", "params": {}}
    )
    assert task["action"] == "release" and task["status"] == "queued"


def test_cli_params_are_json_when_they_parse() -> None:
    from vigil.cli.main import parse_params

    assert parse_params(["pid=42", "tree=true", "path=/tmp/x y", 'allow=["10.0.0.1"]']) == {
        "pid": 42,
        "tree": True,
        "path": "/tmp/x y",
        "allow": ["10.0.0.1"],
    }
    with pytest.raises(CliError, match="KEY=VALUE"):
        parse_params(["oops"])


def test_the_action_catalog_says_what_each_needs_and_what_undoes_it(
    running_server: RunningServer,
) -> None:
    catalog = {a["name"]: a for a in running_server.api.call("GET", "/actions")}
    assert catalog["quarantine"]["undo"] == "restore" and catalog["quarantine"]["destructive"]
    assert catalog["block_exec"]["permission"] == "response.block_exec"
    assert catalog["suspend"]["undo"] == "resume"
    assert not catalog["live_processes"]["destructive"] and catalog["live_processes"]["summary"]
    assert catalog["collect"]["long_running"]
