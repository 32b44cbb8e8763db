"""Roles, tokens, host tags and the tenant's response policy, on a real server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningServer
from tests.server.guardrail_helpers import analyst, enroll_host
from vigil.agent.transport import ServerLink
from vigil.cli.client import CliError


@pytest.fixture
def host(running_server: RunningServer, tmp_path: Path) -> Iterator[tuple[str, ServerLink]]:
    enrolled, link = enroll_host(running_server, tmp_path / "agent")
    yield enrolled.agent_id, link
    link.close()


def test_tokens_carry_a_role_and_only_an_admin_makes_them(running_server: RunningServer) -> None:
    reader = analyst(running_server, "rita", "readonly")
    names = {(t["name"], t["role"]) for t in running_server.api.call("GET", "/tokens")}
    assert {("admin", "admin"), ("rita", "readonly")} <= names
    assert not any("token" in t for t in running_server.api.call("GET", "/tokens"))

    with pytest.raises(CliError, match=r"403.*lacks permission 'tokens.write'.*admin"):
        reader.call("POST", "/tokens", {"name": "mallory", "role": "admin"})
    with pytest.raises(CliError, match="409.*exists in this tenant"):
        running_server.api.call("POST", "/tokens", {"name": "rita", "role": "admin"})
    with pytest.raises(CliError, match="422.*no role 'root'; roles are: admin, responder"):
        running_server.api.call("POST", "/tokens", {"name": "x", "role": "root"})

    with pytest.raises(CliError, match="409.*cannot revoke your own"):
        running_server.api.call("DELETE", "/tokens/admin")
    assert running_server.api.call("DELETE", "/tokens/rita")["revoked"] == 1
    with pytest.raises(CliError, match="401"):
        reader.call("GET", "/hosts")
    reader.close()


def test_readonly_reads_and_hunts_but_changes_nothing(
    running_server: RunningServer, host: tuple[str, ServerLink]
) -> None:
    agent_id, _ = host
    reader = analyst(running_server, "rita", "readonly")
    assert [h["id"] for h in reader.call("GET", "/hosts")] == [agent_id]
    assert reader.call("POST", "/hunt", {"sql": "SELECT count(*) AS n FROM events"})["rows"]
    with pytest.raises(CliError, match="403.*refused by role.*'alerts.triage'"):
        reader.call("PATCH", "/alerts/nope", {"status": "closed"})
    with pytest.raises(CliError, match="403.*'agents.enroll'"):
        reader.call("POST", "/enroll-tokens", {})
    with pytest.raises(CliError, match="403.*refused by guardrail 'role'.*live_processes"):
        reader.call("POST", f"/hosts/{agent_id}/respond", {"action": "live_processes"})
    reader.close()


@pytest.mark.parametrize(
    ("role", "action", "allowed"),
    [
        pytest.param("analyst", "live_processes", True, id="analyst-live-view"),
        pytest.param("analyst", "release", False, id="analyst-release"),
        pytest.param("analyst", "collect", False, id="analyst-collect"),
        pytest.param("responder", "kill", True, id="responder-kill"),
        pytest.param("responder", "quarantine", True, id="responder-quarantine"),
    ],
)
def test_the_role_must_hold_the_actions_permission(
    running_server: RunningServer,
    host: tuple[str, ServerLink],
    role: str,
    action: str,
    allowed: bool,
) -> None:
    agent_id, _ = host
    client = analyst(running_server, "someone", role)
    body = {"action": action, "params": {"entity_id": "e1", "pid": 1001}, "reason": "test"}
    if allowed:
        task = client.call("POST", f"/hosts/{agent_id}/respond", body)
        assert task["status"] == "queued" and task["requested_by"] == "someone"
    else:
        with pytest.raises(
            CliError, match=rf"403.*role '{role}' may not run .*{action}.*responder"
        ):
            client.call("POST", f"/hosts/{agent_id}/respond", body)
        refused = [a for a in running_server.api.call("GET", "/audit") if a["actor"] == "someone"]
        assert refused[0]["outcome"] == "refused: role"
        assert running_server.api.call("GET", "/tasks") == []
    client.close()


def test_analyst_is_refused_isolate_and_kill_endpoints(
    running_server: RunningServer, host: tuple[str, ServerLink]
) -> None:
    agent_id, _ = host
    client = analyst(running_server, "ana", "analyst")
    with pytest.raises(CliError, match="403.*may not run the destructive action isolate"):
        client.call("POST", f"/hosts/{agent_id}/isolate", {"reason": "test"})
    with pytest.raises(CliError, match="403.*may not run the destructive action kill"):
        client.call("POST", f"/hosts/{agent_id}/kill", {"entity_id": "e1", "reason": "test"})
    with pytest.raises(CliError, match="403.*may not run the action release"):
        client.call("POST", f"/hosts/{agent_id}/release", {"reason": "test"})
    client.close()


def test_policy_defaults_and_only_an_admin_changes_it(running_server: RunningServer) -> None:
    policy = running_server.api.call("GET", "/policy")
    assert policy["allowed_actions"] is None
    assert policy["run_command"] is False
    assert policy["isolate_cap_per_hour"] == 10
    assert policy["critical_needs_approval"] is True
    assert "run_command" not in policy["effective_actions"]
    assert "isolate" in policy["effective_actions"]

    responder = analyst(running_server, "rex", "responder")
    assert responder.call("GET", "/policy") == policy
    with pytest.raises(CliError, match="403.*'policy.write'"):
        responder.call("PATCH", "/policy", {"isolate_cap_per_hour": 100})
    responder.close()

    changed = running_server.api.call("PATCH", "/policy", {"isolate_cap_per_hour": 3})
    assert changed["isolate_cap_per_hour"] == 3 and changed["updated_by"] == "admin"
    assert changed["run_command"] is False
    audit = running_server.api.call("GET", "/audit")[0]
    assert audit["action"] == "policy.update"
    assert audit["params"]["before"]["isolate_cap_per_hour"] == 10


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"allowed_actions": ["wipe"]}, "no action 'wipe'", id="unknown-action"),
        pytest.param(
            {"allowed_actions": ["run_command"]}, "run_command is off", id="run-command-off"
        ),
        pytest.param({"isolate_cap_per_hour": 0}, "isolate_cap_per_hour", id="cap-zero"),
        pytest.param({"run_command": None}, "cannot be null", id="null"),
    ],
)
def test_bad_policy_changes_are_refused_and_change_nothing(
    running_server: RunningServer, change: dict[str, object], message: str
) -> None:
    before = running_server.api.call("GET", "/policy")
    with pytest.raises(CliError, match=f"422.*{message}"):
        running_server.api.call("PATCH", "/policy", change)
    assert running_server.api.call("GET", "/policy") == before


def test_tenant_policy_allows_and_forbids_actions(
    running_server: RunningServer, host: tuple[str, ServerLink]
) -> None:
    agent_id, _ = host
    api = running_server.api
    run = {"action": "run_command", "params": {"argv": ["true"]}, "reason": "triage"}
    with pytest.raises(CliError, match="403.*'run_command'.*vigil policy set --run-command on"):
        api.call("POST", f"/hosts/{agent_id}/respond", run)

    api.call("PATCH", "/policy", {"allowed_actions": ["isolate", "release", "live_processes"]})
    with pytest.raises(CliError, match="403.*'allowed_actions'.*does not allow kill; allowed: "):
        api.call("POST", f"/hosts/{agent_id}/kill", {"entity_id": "e1", "reason": "test"})
    assert api.call("POST", f"/hosts/{agent_id}/isolate", {"reason": "t"})["status"] == "queued"

    api.call("PATCH", "/policy", {"allowed_actions": None, "run_command": True})
    assert api.call("POST", f"/hosts/{agent_id}/respond", run)["status"] == "queued"
    assert api.call("POST", f"/hosts/{agent_id}/kill", {"entity_id": "e1", "reason": "t"})


def test_tags_are_listed_and_only_an_admin_lifts_critical(
    running_server: RunningServer, host: tuple[str, ServerLink]
) -> None:
    agent_id, _ = host
    responder = analyst(running_server, "rex", "responder")
    tagged = responder.call("POST", f"/hosts/{agent_id}/tags", {"tags": ["critical", "db"]})
    assert tagged["tags"] == ["critical", "db"]
    assert running_server.api.call("GET", "/hosts")[0]["tags"] == ["critical", "db"]
    assert running_server.api.call("GET", f"/hosts/{agent_id}/tags") == ["critical", "db"]

    with pytest.raises(CliError, match="422.*bad tag 'Not Ok'"):
        responder.call("POST", f"/hosts/{agent_id}/tags", {"tags": ["Not Ok"]})
    assert responder.call("DELETE", f"/hosts/{agent_id}/tags/db")["tags"] == ["critical"]
    with pytest.raises(CliError, match="403.*lifts the approval guardrail.*'policy.write'"):
        responder.call("DELETE", f"/hosts/{agent_id}/tags/critical")
    assert running_server.api.call("DELETE", f"/hosts/{agent_id}/tags/critical")["tags"] == []
    with pytest.raises(CliError, match="404.*no tag 'critical'"):
        running_server.api.call("DELETE", f"/hosts/{agent_id}/tags/critical")

    reader = analyst(running_server, "rita", "readonly")
    with pytest.raises(CliError, match="403.*'hosts.tag'"):
        reader.call("POST", f"/hosts/{agent_id}/tags", {"tags": ["x"]})
    actions = [a["action"] for a in running_server.api.call("GET", "/audit")]
    assert actions.count("host.tag") == 1 and actions.count("host.untag") == 3
    reader.close()
    responder.close()
