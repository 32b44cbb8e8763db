"""Response playbooks on a real server: matching alerts, dry run, enforce, limits, bad playbooks.

An enrolled agent sends process events the way the real agent does; the built-in rule "Base64
Decoded Payload Piped Into A Shell" (high; T1140, T1059.004) fires on the piped one, and
SigmaHQ's "Decode Base64 Encoded Text" (low; T1027) on a plain decode.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningServer
from tests.server.test_agent_protocol import process_event
from vigil.agent import identity
from vigil.agent.tasks import TaskChecker
from vigil.agent.transport import ServerLink
from vigil.cli.client import CliError
from vigil.cli.main import main
from vigil.server.errors import PlaceholderError, PlaybookError
from vigil.server.playbook_runner import run_playbooks
from vigil.server.playbooks import matches, parse_playbook, resolve_params

PIPED_RULE = "Base64 Decoded Payload Piped Into A Shell"


@dataclass
class Agent:
    """An enrolled agent that sends events as the real one does."""

    enrolled: identity.Identity
    link: ServerLink
    sequence: int = 0

    @property
    def id(self) -> str:
        return self.enrolled.agent_id

    def send(self, command_line: str, executable: str) -> dict[str, Any]:
        self.sequence += 1
        event = process_event(self.sequence, command_line, executable=executable)
        response = self.link.post("/events", {"spool_epoch": "e", "events": [event]})
        assert response.status_code == 200, response.text
        return event

    def piped(self) -> dict[str, Any]:
        """A decoded payload piped into a shell: a high alert, T1140 and T1059.004."""
        return self.send("sh -c echo ZWNobyBoaQo= | base64 -d | sh", "/usr/bin/sh")

    def decode(self) -> dict[str, Any]:
        """A plain decode: a low alert, T1027."""
        return self.send("base64 -d payload.b64", "/usr/bin/base64")


@pytest.fixture
def agent(running_server: RunningServer, tmp_path: Path) -> Iterator[Agent]:
    enrolled = identity.enroll(
        tmp_path / "agent", running_server.url, running_server.enroll_token()
    )
    link = ServerLink(enrolled)
    yield Agent(enrolled, link)
    link.close()


def playbook_yaml(
    name: str = "answer-piped-shells",
    mode: str = "dry_run",
    conditions: str = f'rules: ["{PIPED_RULE}"]',
    actions: str = "- action: isolate",
    extra: str = "",
) -> str:
    indented = "\n".join("  " + line for line in conditions.splitlines())
    acts = "\n".join("  " + line for line in actions.splitlines())
    return f"name: {name}\nmode: {mode}\nconditions:\n{indented}\nactions:\n{acts}\n{extra}"


def put(server: RunningServer, text: str) -> dict[str, Any]:
    result: dict[str, Any] = server.api.call("POST", "/playbooks", content=text)
    return result


def runs(server: RunningServer) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = server.api.call("GET", "/playbooks/runs")
    return result


KILL = """\
- action: kill
  params:
    entity_id: "{{process.entity_id}}"
    pid: "{{ process.pid }}"
    tree: true"""


def test_dry_run_records_what_would_run_and_queues_nothing(
    running_server: RunningServer, agent: Agent
) -> None:
    put(running_server, playbook_yaml())
    agent.piped()

    [run] = runs(running_server)
    alert = next(
        a for a in running_server.api.call("GET", "/alerts") if a["rule"]["title"] == PIPED_RULE
    )
    assert run["status"] == "dry_run" and run["mode"] == "dry_run"
    assert run["alert_id"] == alert["id"] and run["host_id"] == agent.id
    assert run["message"].startswith(
        f"would run isolate on host {agent.enrolled.hostname} because alert {alert['id']}"
    )
    assert run["actions"] == [
        {"action": "isolate", "params": {}, "outcome": "would_run", "task_id": None, "message": ""}
    ]
    assert running_server.api.call("GET", "/tasks") == []
    audit = running_server.api.call("GET", "/audit")
    [record] = [a for a in audit if a["action"] == "playbook.dry_run"]
    assert record["actor"] == "playbook:answer-piped-shells" and record["target"] == agent.id
    assert record["outcome"] == run["message"]


def test_enforce_queues_a_signed_task_with_the_alerts_process(
    running_server: RunningServer, agent: Agent, tmp_path: Path
) -> None:
    put(running_server, playbook_yaml(name="kill-piped", mode="enforce", actions=KILL))
    event = agent.piped()

    [run] = runs(running_server)
    assert run["status"] == "enforced", run["message"]
    [task] = running_server.api.call("GET", "/tasks")
    assert task["agent_id"] == agent.id and task["action"] == "kill"
    assert task["params"] == {
        "entity_id": event["process"]["entity_id"],
        "pid": event["process"]["pid"],
        "tree": True,
    }
    assert task["requested_by"] == "playbook:kill-piped"
    assert run["alert_id"] in task["reason"] and PIPED_RULE in task["reason"]
    assert run["actions"][0]["task_id"] == task["id"]

    # The playbook's audit record comes before the task's own (the log is newest first).
    audit = running_server.api.call("GET", "/audit")
    order = [a["action"] for a in audit if a["actor"] == "playbook:kill-piped"]
    assert order == ["task.kill", "playbook.enforce"]

    # The agent gets it signed, for itself, with the resolved parameters.
    checker = TaskChecker(
        agent.id, agent.enrolled.task_key_path.read_text(), tmp_path / "nonces.json"
    )
    [envelope] = agent.link.poll_tasks(wait=5)
    body = checker.check(envelope["body"], envelope["signature"])
    assert body.action == "kill" and body.params["pid"] == event["process"]["pid"]


def test_one_event_runs_a_playbook_once_naming_its_most_severe_alert(
    running_server: RunningServer, agent: Agent
) -> None:
    put(running_server, playbook_yaml(mode="enforce", conditions="techniques: [T1140]"))
    agent.piped()  # four alerts: two medium and one high with T1140, one high without

    [run] = runs(running_server)
    alerts = {a["id"]: a for a in running_server.api.call("GET", "/alerts")}
    assert alerts[run["alert_id"]]["rule"]["title"] == PIPED_RULE
    assert "the same event also raised" in run["message"]
    assert len(running_server.api.call("GET", "/tasks")) == 1


def test_alerts_stored_outside_a_batch_run_playbooks_too(
    running_server: RunningServer, agent: Agent
) -> None:
    """Correlation windows closed by the periodic flush store alerts with no agent at hand."""
    agent.decode()
    [alert] = running_server.api.call("GET", "/alerts")
    put(running_server, playbook_yaml(conditions="min_level: low"))
    run_playbooks(running_server.ctx, "default", [alert])
    [run] = runs(running_server)
    assert run["host_id"] == agent.id and run["status"] == "dry_run"

    # An alert is never run through another tenant's playbooks, even when handed to them.
    book = parse_playbook(playbook_yaml(name="theirs", conditions="min_level: low"))
    running_server.ctx.state.put_playbook("other", "theirs", book.model_dump(), "")
    run_playbooks(running_server.ctx, "other", [alert])
    assert running_server.ctx.state.playbook_runs("other") == []


@pytest.mark.parametrize(
    ("conditions", "runs_expected"),
    [
        pytest.param("min_level: high", 1, id="level-high"),
        pytest.param("min_level: critical", 0, id="level-too-low"),
        pytest.param("techniques: [T1059]", 1, id="parent-technique"),
        pytest.param("techniques: [t1059.004]", 1, id="sub-technique"),
        pytest.param("techniques: [T1059.001]", 0, id="other-sub-technique"),
        pytest.param("techniques: [T1003]", 0, id="other-technique"),
        pytest.param('rules: ["base64 decoded*"]', 1, id="title-glob"),
        pytest.param('rules: ["f246b313-*"]', 1, id="id-glob"),
        pytest.param('rules: ["Mimikatz*"]', 0, id="other-rule"),
        pytest.param("intel: true", 0, id="intel-only"),
        pytest.param("host_tags: [prod]", 0, id="untagged-host"),
        pytest.param("min_level: high\ntechniques: [T1003]", 0, id="all-must-hold"),
    ],
)
def test_conditions_decide_which_alerts_a_playbook_answers(
    running_server: RunningServer, agent: Agent, conditions: str, runs_expected: int
) -> None:
    put(running_server, playbook_yaml(mode="enforce", conditions=conditions))
    agent.piped()
    assert len(runs(running_server)) == runs_expected
    assert len(running_server.api.call("GET", "/tasks")) == runs_expected


def test_host_tags_limit_a_playbook_to_tagged_hosts(
    running_server: RunningServer, agent: Agent
) -> None:
    put(running_server, playbook_yaml(conditions="host_tags: [web, prod]"))
    agent.piped()
    assert runs(running_server) == []

    running_server.ctx.state.change_tags(agent.id, add=["Prod", "dmz"])
    agent.piped()
    [run] = runs(running_server)
    assert run["status"] == "dry_run"


def test_guardrails_judge_playbooks_like_a_responder(
    running_server: RunningServer, agent: Agent
) -> None:
    # run_command is off for the tenant: refused, in a dry run as well as enforced.
    put(running_server, playbook_yaml(name="shell", actions="- action: run_command"))
    agent.piped()
    [run] = runs(running_server)
    assert run["status"] == "failed"
    assert "guardrail 'run_command'" in run["actions"][0]["message"]
    # The audit trail says so as it does for an analyst, after the run's "would run" record.
    refusal, would_run = running_server.api.call("GET", "/audit", params={"limit": 2})
    assert (refusal["actor"], refusal["action"]) == ("playbook:shell", "task.run_command")
    assert refusal["outcome"] == "refused: run_command" and refusal["target"] == agent.id
    assert would_run["outcome"].startswith("would run run_command")

    # Isolating a critical host waits for a human's approval instead of going out.
    running_server.ctx.state.change_tags(agent.id, add=["critical"])
    running_server.api.call("DELETE", "/playbooks/shell")
    put(running_server, playbook_yaml(name="contain", mode="enforce"))
    agent.piped()
    [task] = running_server.api.call("GET", "/tasks")
    assert task["action"] == "isolate" and task["status"] == "pending_approval"
    assert runs(running_server)[0]["actions"][0]["message"].startswith("held for approval")
    assert agent.link.poll_tasks(wait=1) == []


def test_a_low_alert_does_not_reach_a_high_playbook(
    running_server: RunningServer, agent: Agent
) -> None:
    put(running_server, playbook_yaml(conditions="min_level: medium"))
    agent.decode()
    assert [a["rule"]["level"] for a in running_server.api.call("GET", "/alerts")] == ["low"]
    assert runs(running_server) == []


def test_the_rate_limit_counts_runs_per_host_and_hour(
    running_server: RunningServer, agent: Agent
) -> None:
    put(
        running_server,
        playbook_yaml(mode="enforce", extra="max_runs_per_host_per_hour: 2\n"),
    )
    for _ in range(3):
        agent.piped()

    statuses = [r["status"] for r in reversed(runs(running_server))]
    assert statuses == ["enforced", "enforced", "rate_limited"]
    assert len(running_server.api.call("GET", "/tasks")) == 2
    limited = runs(running_server)[0]
    assert "limit of 2 runs per host per hour" in limited["message"]
    assert limited["actions"] == []

    # Dry runs are counted apart: trying a playbook out does not use up its enforced runs.
    put(running_server, playbook_yaml(mode="dry_run", extra="max_runs_per_host_per_hour: 2\n"))
    agent.piped()
    assert runs(running_server)[0]["status"] == "dry_run"


def test_a_missing_field_fails_the_run_not_ingest(
    running_server: RunningServer, agent: Agent
) -> None:
    actions = '- action: isolate\n- action: quarantine\n  params: {path: "{{file.path}}"}'
    put(running_server, playbook_yaml(mode="enforce", actions=actions))
    agent.piped()

    [run] = runs(running_server)
    assert run["status"] == "failed"
    assert "no file.path" in run["message"] and "nothing run" in run["message"]
    # All or nothing: isolate was not queued either.
    assert running_server.api.call("GET", "/tasks") == []
    assert any(a["outcome"] == run["message"] for a in running_server.api.call("GET", "/audit"))


def test_a_stored_playbook_gone_bad_is_skipped_and_the_others_run(
    running_server: RunningServer, agent: Agent
) -> None:
    put(running_server, playbook_yaml(name="good"))
    running_server.ctx.state.put_playbook(
        "default", "broken", {"name": "broken", "actions": "nonsense"}, "name: broken"
    )
    agent.piped()
    assert [r["playbook"] for r in runs(running_server)] == ["good"]
    assert running_server.api.call("GET", "/alerts")


def test_disabled_playbooks_do_not_run(running_server: RunningServer, agent: Agent) -> None:
    put(running_server, playbook_yaml(extra="enabled: false\n"))
    agent.piped()
    assert runs(running_server) == []


def test_playbooks_are_per_tenant(
    running_server: RunningServer, agent: Agent, tmp_path: Path
) -> None:
    other_token = running_server.ctx.state.create_api_token("other", "other-admin")
    other_api = type(running_server.api)(
        running_server.url, other_token, str(running_server.ctx.authority.ca_path)
    )
    try:
        put(running_server, playbook_yaml())
        assert other_api.call("GET", "/playbooks") == []

        # An alert of the other tenant does not run the default tenant's playbook.
        secret = other_api.call("POST", "/enroll-tokens", {"uses": 1})["token"]
        enrolled = identity.enroll(tmp_path / "other-agent", running_server.url, secret)
        link = ServerLink(enrolled)
        try:
            Agent(enrolled, link).piped()
        finally:
            link.close()
        assert other_api.call("GET", "/alerts")
        assert runs(running_server) == []
        assert other_api.call("GET", "/playbooks/runs") == []
        with pytest.raises(CliError, match="404"):
            other_api.call("DELETE", "/playbooks/answer-piped-shells")
    finally:
        other_api.close()


def test_add_replace_show_and_remove(running_server: RunningServer) -> None:
    text = "# kept as written\n" + playbook_yaml()
    added = put(running_server, text)
    assert added["created_now"] and added["mode"] == "dry_run" and added["enabled"]
    assert added["source"] == text and added["max_runs_per_host_per_hour"] == 5

    as_json = json.dumps(
        {
            "name": "answer-piped-shells",
            "mode": "enforce",
            "conditions": {"min_level": "critical"},
            "actions": [{"action": "isolate"}],
        }
    )
    replaced = running_server.api.call(
        "PUT", "/playbooks/answer-piped-shells", content=as_json, content_type="application/json"
    )
    assert not replaced["created_now"] and replaced["mode"] == "enforce"
    [listed] = running_server.api.call("GET", "/playbooks")
    assert listed["conditions"]["min_level"] == "critical"
    assert running_server.api.call("GET", "/playbooks/answer-piped-shells")["source"] == as_json

    assert running_server.api.call("DELETE", "/playbooks/answer-piped-shells")["removed"]
    assert running_server.api.call("GET", "/playbooks") == []
    with pytest.raises(CliError, match="404.*no playbook"):
        running_server.api.call("DELETE", "/playbooks/answer-piped-shells")
    audit = [a["action"] for a in running_server.api.call("GET", "/audit")]
    assert audit[:3] == ["playbook.delete", "playbook.put", "playbook.put"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            playbook_yaml(actions="- action: format-disk"),
            r"actions\[0\]\.action: no action 'format-disk'; one of: .*isolate",
            id="unknown-action",
        ),
        pytest.param(
            playbook_yaml(mode="enforced"),
            r"mode: Input should be 'dry_run' or 'enforce'",
            id="bad-mode",
        ),
        pytest.param(
            playbook_yaml(conditions="min_level: severe"),
            r"conditions\.min_level: Input should be 'informational'",
            id="bad-level",
        ),
        pytest.param(
            playbook_yaml(conditions="techniques: [T59]"),
            r"conditions\.techniques: 'T59' is not an ATT&CK technique id",
            id="bad-technique",
        ),
        pytest.param(
            playbook_yaml(conditions="intel: null"),
            r"conditions: give at least one of rules, min_level",
            id="no-condition",
        ),
        pytest.param(
            playbook_yaml(conditions="level: high"),
            r"conditions\.level: not a playbook field",
            id="misspelt-field",
        ),
        pytest.param(
            playbook_yaml(actions='- action: kill\n  params: {entity_id: "e-{{process.pid}}"}'),
            r"actions\[0\]\.params: 'e-\{\{process\.pid\}\}': a placeholder must be the whole",
            id="partial-placeholder",
        ),
        pytest.param(
            playbook_yaml(actions="[]"),
            r"actions: List should have at least 1 item",
            id="no-actions",
        ),
        pytest.param(
            playbook_yaml(extra="max_runs_per_host_per_hour: 0\n"),
            r"max_runs_per_host_per_hour: Input should be greater than or equal to 1",
            id="zero-rate",
        ),
        pytest.param(playbook_yaml(name="runs"), r"name: 'runs' is reserved", id="reserved-name"),
        pytest.param(
            "name: x\nconditions: {min_level: high\n",
            r"not valid YAML: .* at line \d+ column \d+",
            id="yaml-syntax",
        ),
        pytest.param("- just\n- a list\n", r"a playbook is a mapping", id="not-a-mapping"),
    ],
)
def test_a_malformed_playbook_is_refused_naming_the_problem(
    running_server: RunningServer, text: str, message: str
) -> None:
    with pytest.raises(CliError, match="422") as caught:
        put(running_server, text)
    assert caught.match(message)
    assert caught.match("nothing was stored")
    assert running_server.api.call("GET", "/playbooks") == []


def test_put_refuses_a_name_that_differs_from_the_url(running_server: RunningServer) -> None:
    with pytest.raises(CliError, match="422.*named 'answer-piped-shells', not 'other'"):
        running_server.api.call("PUT", "/playbooks/other", content=playbook_yaml())


def test_cli_adds_lists_and_shows_runs(
    running_server: RunningServer, agent: Agent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = ["--data-dir", str(running_server.config.data_dir)]
    path = tmp_path / "piped.yml"
    path.write_text(playbook_yaml())
    assert main(["playbooks", "add", str(path), *data_dir]) == 0
    assert "playbook answer-piped-shells added (dry_run, enabled)" in capsys.readouterr().out

    assert main(["playbooks", "list", *data_dir]) == 0
    listed = capsys.readouterr().out
    assert "answer-piped-shells" in listed and "isolate" in listed

    agent.piped()
    assert main(["playbooks", "runs", "--json", *data_dir]) == 0
    [run] = json.loads(capsys.readouterr().out)
    assert run["status"] == "dry_run"

    assert main(["playbooks", "remove", "answer-piped-shells", *data_dir]) == 0
    assert "removed" in capsys.readouterr().out
    path.write_text("name: bad\n")
    assert main(["playbooks", "add", str(path), *data_dir]) == 1
    assert "conditions: Field required" in capsys.readouterr().err


# The matching and templating rules themselves, without a server.

ALERT = {
    "id": "a1",
    "rule": {
        "id": "intel:ipv4:192.0.2.1",
        "title": "Threat intel: ipv4 192.0.2.1",
        "level": "high",
    },
    "attack": [],
    "intel": [{"field": "destination.ip"}],
    "event": {"process": {"entity_id": "e1", "pid": 42}, "destination": {"ip": "192.0.2.1"}},
}


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        pytest.param({"intel": True}, True, id="intel"),
        pytest.param({"intel": False}, False, id="not-intel"),
        pytest.param({"rules": ["intel:*"]}, True, id="intel-rule-glob"),
        pytest.param({"min_level": "critical"}, False, id="level"),
        pytest.param({"techniques": ["T1071"]}, False, id="no-techniques"),
    ],
)
def test_intel_alerts_match_by_their_shape(conditions: dict[str, Any], expected: bool) -> None:
    book = parse_playbook(
        json.dumps({"name": "p", "conditions": conditions, "actions": [{"action": "isolate"}]}),
        "json",
    )
    assert matches(book, ALERT, []) is expected


def test_placeholders_keep_types_and_reach_into_lists() -> None:
    params = {
        "entity_id": "{{process.entity_id}}",
        "pid": "{{process.pid}}",
        "allow": ["{{destination.ip}}", "10.0.0.1"],
        "note": "stays {as it is}",
    }
    assert resolve_params(params, ALERT["event"]) == {  # type: ignore[arg-type]
        "entity_id": "e1",
        "pid": 42,
        "allow": ["192.0.2.1", "10.0.0.1"],
        "note": "stays {as it is}",
    }
    with pytest.raises(PlaceholderError, match="no file.path"):
        resolve_params({"path": "{{file.path}}"}, ALERT["event"])  # type: ignore[arg-type]
    with pytest.raises(PlaybookError, match="not valid JSON"):
        parse_playbook("{", "json")
