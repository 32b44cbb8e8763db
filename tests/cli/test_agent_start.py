"""``vigil agent run`` refuses a bad start before it enrolls, and one folder runs one agent."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import RunningServer
from tests.server.test_agent_protocol import process_event
from vigil.agent import identity
from vigil.agent.errors import AgentError
from vigil.agent.statelock import hold_state_dir
from vigil.agent.transport import ServerLink
from vigil.cli.client import CliError
from vigil.cli.main import main


def agent_run(state: Path, server: RunningServer, token: str, *extra: str) -> list[str]:
    return [
        "agent", "run", "--state-dir", str(state), "--server", server.url,
        "--enroll-token", token, *extra,
    ]  # fmt: skip


def test_a_mistyped_sensor_or_policy_is_refused_before_anything_enrolls(
    running_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = running_server.api.call("POST", "/enroll-tokens", {"uses": 1})["token"]
    state = tmp_path / "agent"

    assert main(agent_run(state, running_server, token, "--sensor", "process_pol")) == 1
    assert "no sensor named 'process_pol'; known sensors: " in capsys.readouterr().err
    policy = tmp_path / "policy.yml"
    policy.write_text("sensors: {proces_poll: {}}\n")
    assert main(agent_run(state, running_server, token, "--policy", str(policy))) == 1
    assert "no sensor 'proces_poll'" in capsys.readouterr().err

    # No host was registered, and the single-use token is still good.
    assert running_server.api.call("GET", "/hosts") == []
    assert identity.enroll(state, running_server.url, token).agent_id


def test_a_second_agent_on_the_same_state_folder_is_refused(
    running_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "agent"
    with hold_state_dir(state):  # stands for an agent already running with this folder
        argv = agent_run(state, running_server, running_server.enroll_token())
        assert main([*argv, "--sensor", "inventory"]) == 1
    err = capsys.readouterr().err
    assert "another agent (pid " in err and "give this agent a folder of its own" in err
    assert running_server.api.call("GET", "/hosts") == []

    # Once the first lets go (however it ended), the folder is free again.
    with hold_state_dir(state):
        pass


def test_an_unenrolled_agent_is_told_exactly_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["agent", "run", "--state-dir", str(tmp_path / "a"), "--enroll-token", "t"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "pass --server URL (the token from" in err and "--enroll-token TOKEN" not in err


def test_a_token_without_its_fingerprint_says_to_pass_the_whole_token(
    running_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret_only = running_server.enroll_token().split(".")[1]
    argv = agent_run(tmp_path / "a", running_server, secret_only, "--sensor", "inventory")
    assert main(argv) == 1
    assert "pass the whole token 'vigil enroll-token create' printed" in capsys.readouterr().err
    assert running_server.api.call("GET", "/hosts") == []


def test_enrollment_tokens_are_listed_and_revoked(
    running_server: RunningServer, tmp_path: Path
) -> None:
    made = running_server.api.call("POST", "/enroll-tokens", {"uses": 3, "ttl_seconds": 600})
    listed = running_server.api.call("GET", "/enroll-tokens")
    mine = [t for t in listed if t["id"] == made["id"]]
    assert len(mine) == 1 and mine[0]["uses_left"] == 3 and mine[0]["usable"] is True
    assert made["token"].split(".")[1] not in str(listed)  # the secret is never shown again

    assert running_server.api.call("DELETE", f"/enroll-tokens/{made['id']}") == {
        "revoked": made["id"]
    }
    with pytest.raises(AgentError) as refused:
        identity.enroll(tmp_path / "a", running_server.url, made["token"])
    assert str(refused.value) == (
        "enrollment refused (403): enrollment token unknown, used up or expired; create a new one"
    )
    with pytest.raises(CliError, match="404.*no enrollment token"):
        running_server.api.call("DELETE", f"/enroll-tokens/{made['id']}")
    audit = running_server.api.call("GET", "/audit", params={"limit": 1})
    assert (audit[0]["action"], audit[0]["target"]) == ("enroll_token.revoke", made["id"])


def test_a_removed_host_is_refused_and_its_telemetry_stays(
    running_server: RunningServer, tmp_path: Path
) -> None:
    enrolled = identity.enroll(tmp_path / "a", running_server.url, running_server.enroll_token())
    link = ServerLink(enrolled)
    event = process_event(1, "/usr/bin/id", executable="/usr/bin/id")
    assert link.post("/events", {"spool_epoch": "e", "events": [event]}).status_code == 200

    with pytest.raises(CliError, match="422"):  # a reason is required
        running_server.api.call("POST", f"/hosts/{enrolled.agent_id}/remove", {})
    removed = running_server.api.call(
        "POST", f"/hosts/{enrolled.agent_id}/remove", {"reason": "decommissioned"}
    )
    assert removed["removed"] == enrolled.agent_id
    assert running_server.api.call("GET", "/hosts") == []
    # Its certificate no longer gets in; what it sent before is still there to hunt.
    refused = link.post("/heartbeat", {"health": {}})
    assert refused.status_code == 403 and "not enrolled here" in refused.text
    link.close()
    rows = running_server.api.call("POST", "/hunt", {"sql": 'SELECT "host.id" h FROM events'})
    assert [r["h"] for r in rows["rows"]] == [enrolled.agent_id]
    [audit] = [a for a in running_server.api.call("GET", "/audit") if a["action"] == "host.remove"]
    assert (audit["target"], audit["params"]["reason"]) == (enrolled.agent_id, "decommissioned")
