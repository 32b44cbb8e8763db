"""Response guardrails on a real server: isolation cap, two-person approval, dry runs, expiry and
the task states the agent reports."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningServer
from tests.server.guardrail_helpers import analyst, enroll_host
from vigil.agent import identity
from vigil.agent.runtime import Agent
from vigil.agent.tasks import TaskChecker
from vigil.agent.transport import ServerLink
from vigil.cli.client import ApiClient, CliError
from vigil.server.auth import Analyst
from vigil.server.guardrails import evaluate
from vigil.server.tasks import expire_due, queue_task


@pytest.fixture
def host(
    running_server: RunningServer, tmp_path: Path
) -> Iterator[tuple[identity.Identity, ServerLink]]:
    enrolled, link = enroll_host(running_server, tmp_path / "agent")
    yield enrolled, link
    link.close()


@pytest.fixture
def responders(running_server: RunningServer) -> Iterator[tuple[ApiClient, ApiClient]]:
    first, second = (
        analyst(running_server, "rex", "responder"),
        analyst(running_server, "ria", "responder"),
    )
    yield first, second
    first.close()
    second.close()


def test_isolating_more_hosts_than_the_cap_is_refused(
    running_server: RunningServer, tmp_path: Path
) -> None:
    api = running_server.api
    api.call("PATCH", "/policy", {"isolate_cap_per_hour": 2})
    hosts = [enroll_host(running_server, tmp_path / f"agent{i}") for i in range(3)]
    ids = [enrolled.agent_id for enrolled, _ in hosts]

    api.call("POST", f"/hosts/{ids[0]}/isolate", {"reason": "one"})
    api.call("POST", f"/hosts/{ids[1]}/isolate", {"reason": "two"})
    # The same host again is not one more host.
    assert api.call("POST", f"/hosts/{ids[0]}/isolate", {"reason": "again"})["status"] == "queued"
    with pytest.raises(
        CliError,
        match=r"403.*'isolate_cap': 2 hosts .* cap is 2; the next slot frees at 20\d\d-.*"
        r"--isolate-cap-per-hour",
    ):
        api.call("POST", f"/hosts/{ids[2]}/isolate", {"reason": "three"})
    # Through /respond too, and release is never capped.
    with pytest.raises(CliError, match="isolate_cap"):
        api.call("POST", f"/hosts/{ids[2]}/respond", {"action": "isolate", "reason": "three"})
    assert api.call("POST", f"/hosts/{ids[2]}/release", {"reason": "r"})["status"] == "queued"
    assert {t["agent_id"] for t in api.call("GET", "/tasks") if t["action"] == "isolate"} == set(
        ids[:2]
    )

    api.call("PATCH", "/policy", {"isolate_cap_per_hour": 3})
    assert api.call("POST", f"/hosts/{ids[2]}/isolate", {"reason": "three"})["status"] == "queued"
    for _, link in hosts:
        link.close()


def test_destructive_action_on_a_critical_host_waits_for_a_second_analyst(
    running_server: RunningServer,
    host: tuple[identity.Identity, ServerLink],
    responders: tuple[ApiClient, ApiClient],
    tmp_path: Path,
) -> None:
    enrolled, link = host
    agent_id = enrolled.agent_id
    rex, ria = responders
    running_server.api.call("POST", f"/hosts/{agent_id}/tags", {"tags": ["critical"]})

    # Non-destructive actions on the host are not held.
    assert rex.call("POST", f"/hosts/{agent_id}/release", {"reason": "r"})["status"] == "queued"
    assert len(link.poll_tasks(wait=0)) == 1

    task = rex.call("POST", f"/hosts/{agent_id}/kill", {"entity_id": "e1", "reason": "miner"})
    assert task["status"] == "pending_approval"
    assert "tagged 'critical'" in task["message"]
    assert f"vigil tasks approve {task['id']} --reason" in task["message"]
    assert link.poll_tasks(wait=0) == []
    row = running_server.ctx.state.task_row("default", task["id"])
    assert row is not None and row["body"] is None and row["signature"] is None

    with pytest.raises(CliError, match="403.*'two_person'.*'rex' asked for task"):
        rex.call("POST", f"/tasks/{task['id']}/approve", {"reason": "me"})
    reader = analyst(running_server, "ana", "analyst")
    with pytest.raises(CliError, match="403.*'role'.*may not run the destructive action kill"):
        reader.call("POST", f"/tasks/{task['id']}/approve", {"reason": "looks bad"})
    reader.close()
    assert link.poll_tasks(wait=0) == []

    approved = ria.call("POST", f"/tasks/{task['id']}/approve", {"reason": "confirmed miner"})
    assert approved["status"] == "queued"
    assert approved["decided_by"] == "ria" and approved["decision_reason"] == "confirmed miner"
    envelopes = link.poll_tasks(wait=5)
    checker = TaskChecker(agent_id, enrolled.task_key_path.read_text(), tmp_path / "nonces.json")
    body = checker.check(envelopes[0]["body"], envelopes[0]["signature"])
    assert body.task_id == task["id"] and body.action == "kill" and body.params["pid"] == 1001

    with pytest.raises(CliError, match="409.*is delivered, not pending_approval"):
        ria.call("POST", f"/tasks/{task['id']}/approve", {"reason": "twice"})

    trail = [
        (a["actor"], a["action"], a["outcome"])
        for a in reversed(running_server.api.call("GET", "/audit"))
        if a["params"].get("task_id") == task["id"]
    ]
    assert trail == [
        ("rex", "task.kill", "pending_approval"),
        ("rex", "task.kill.approve", "refused: two_person"),
        ("ana", "task.kill.approve", "refused: role"),
        ("ria", "task.kill.approve", "approved"),
    ]


def test_an_isolation_dry_run_on_the_agent_is_neither_held_nor_capped(
    running_server: RunningServer, host: tuple[identity.Identity, ServerLink], tmp_path: Path
) -> None:
    # Listing what isolation would cut changes nothing on the host: no second analyst needed,
    # and it takes no slot of the isolation cap.
    enrolled, link = host
    api = running_server.api
    api.call("PATCH", "/policy", {"isolate_cap_per_hour": 1})
    api.call("POST", f"/hosts/{enrolled.agent_id}/tags", {"tags": ["critical"]})
    body = {"action": "isolate", "params": {"dry_run": True}, "reason": "what would it cut?"}
    for _ in range(2):
        assert api.call("POST", f"/hosts/{enrolled.agent_id}/respond", body)["status"] == "queued"
    assert len(link.poll_tasks(wait=0)) == 2
    # The cap of one host is still free for another host: the dry runs did not use it.
    other, other_link = enroll_host(running_server, tmp_path / "other")
    queued = api.call("POST", f"/hosts/{other.agent_id}/isolate", {"reason": "contain"})
    assert queued["status"] == "queued"
    other_link.close()
    # A real isolation does take the slot: now the first host is over the cap.
    with pytest.raises(CliError, match="isolate_cap"):
        api.call("POST", f"/hosts/{enrolled.agent_id}/isolate", {"reason": "contain"})


def test_a_held_task_can_be_denied_or_withdrawn(
    running_server: RunningServer,
    host: tuple[identity.Identity, ServerLink],
    responders: tuple[ApiClient, ApiClient],
) -> None:
    enrolled, link = host
    agent_id = enrolled.agent_id
    rex, ria = responders
    running_server.api.call("POST", f"/hosts/{agent_id}/tags", {"tags": ["critical"]})

    first = rex.call("POST", f"/hosts/{agent_id}/isolate", {"reason": "c2 beacon"})
    denied = ria.call("POST", f"/tasks/{first['id']}/deny", {"reason": "it is the scanner"})
    assert denied["status"] == "denied" and denied["decided_by"] == "ria"
    with pytest.raises(CliError, match="409.*is denied"):
        ria.call("POST", f"/tasks/{first['id']}/approve", {"reason": "changed my mind"})

    second = rex.call("POST", f"/hosts/{agent_id}/isolate", {"reason": "c2 beacon"})
    reader = analyst(running_server, "rita", "readonly")
    with pytest.raises(CliError, match="403.*'role'"):
        reader.call("POST", f"/tasks/{second['id']}/deny", {"reason": "no"})
    reader.close()
    withdrawn = rex.call("POST", f"/tasks/{second['id']}/deny", {"reason": "wrong host"})
    assert withdrawn["status"] == "denied"
    assert link.poll_tasks(wait=0) == []
    with pytest.raises(CliError, match="404"):
        ria.call("POST", "/tasks/no-such-task/approve", {"reason": "x"})


def test_approval_is_off_when_the_policy_says_so(
    running_server: RunningServer,
    host: tuple[identity.Identity, ServerLink],
) -> None:
    agent_id = host[0].agent_id
    running_server.api.call("POST", f"/hosts/{agent_id}/tags", {"tags": ["critical"]})
    running_server.api.call("PATCH", "/policy", {"critical_needs_approval": False})
    task = running_server.api.call("POST", f"/hosts/{agent_id}/isolate", {"reason": "now"})
    assert task["status"] == "queued"


@pytest.mark.parametrize(
    ("tags", "role", "would", "guardrail"),
    [
        pytest.param([], "responder", "be queued", "", id="allowed"),
        pytest.param(
            ["critical"],
            "responder",
            "wait for a second analyst's approval",
            "critical_approval",
            id="hold",
        ),
        pytest.param([], "analyst", "be refused", "role", id="refused"),
    ],
)
def test_a_dry_run_queues_nothing_but_is_audited(
    running_server: RunningServer,
    host: tuple[identity.Identity, ServerLink],
    tags: list[str],
    role: str,
    would: str,
    guardrail: str,
) -> None:
    enrolled, link = host
    agent_id = enrolled.agent_id
    if tags:
        running_server.api.call("POST", f"/hosts/{agent_id}/tags", {"tags": tags})
    client = analyst(running_server, "dee", role)
    body = {"entity_id": "e1", "tree": True, "reason": "what if", "dry_run": True}
    result = client.call("POST", f"/hosts/{agent_id}/kill", body)
    client.close()

    assert result["dry_run"] is True and result["would"] == would
    assert result["action"] == "kill" and result["host"] == enrolled.hostname
    assert result["params"] == {"entity_id": "e1", "pid": 1001, "tree": True}
    assert result["verdict"]["guardrail"] == guardrail
    assert running_server.api.call("GET", "/tasks") == []
    assert link.poll_tasks(wait=0) == []
    audit = running_server.api.call("GET", "/audit")[0]
    assert audit["action"] == "task.kill.dry_run" and audit["actor"] == "dee"
    assert audit["outcome"] == f"dry run: would {would}"
    assert audit["params"]["verdict"]["outcome"] == result["verdict"]["outcome"]


def test_tasks_past_their_expiry_are_marked_expired(
    running_server: RunningServer,
    host: tuple[identity.Identity, ServerLink],
    responders: tuple[ApiClient, ApiClient],
) -> None:
    enrolled, link = host
    agent_id = enrolled.agent_id
    ctx = running_server.ctx
    queued = queue_task(
        ctx, Analyst("default", "rex", "responder"), agent_id, "release", {}, "r", ttl=0.2
    )
    ctx.state.change_tags(agent_id, add=["critical"])
    held = queue_task(
        ctx, Analyst("default", "rex", "responder"), agent_id, "isolate", {}, "i", ttl=0.2
    )
    assert (queued["status"], held["status"]) == ("queued", "pending_approval")
    time.sleep(0.3)

    assert link.poll_tasks(wait=0) == []
    statuses = {t["id"]: t["status"] for t in running_server.api.call("GET", "/tasks")}
    assert statuses == {queued["id"]: "expired", held["id"]: "expired"}
    with pytest.raises(CliError, match="409.*is expired.*ask for the action again"):
        responders[1].call("POST", f"/tasks/{held['id']}/approve", {"reason": "late"})
    expired = [
        a for a in running_server.api.call("GET", "/audit") if a["action"].endswith(".expire")
    ]
    assert {a["params"]["was"] for a in expired} == {"queued", "pending_approval"}
    assert expire_due(ctx) == 0


def test_the_agent_reports_running_then_its_outcome(
    running_server: RunningServer, host: tuple[identity.Identity, ServerLink]
) -> None:
    enrolled, link = host
    task = running_server.api.call(
        "POST", f"/hosts/{enrolled.agent_id}/respond", {"action": "live_processes"}
    )
    assert link.poll_tasks(wait=5)
    result_path = f"/tasks/{task['id']}/result"
    assert link.post(result_path, {"status": "running", "message": "started"}).status_code == 200
    assert running_server.api.call("GET", f"/tasks/{task['id']}")["status"] == "running"
    link.post(result_path, {"status": "done", "result": {"processes": []}}).raise_for_status()
    # A late progress report never takes a task back from its outcome.
    link.post(result_path, {"status": "running"}).raise_for_status()
    final = running_server.api.call("GET", f"/tasks/{task['id']}")
    assert final["status"] == "done" and final["result"] == {"processes": []}


def test_playbooks_can_ask_the_guardrails_without_queuing(
    running_server: RunningServer, host: tuple[identity.Identity, ServerLink]
) -> None:
    agent_id = host[0].agent_id
    ctx = running_server.ctx
    playbook = Analyst("default", "playbook:miner", "responder")
    assert evaluate(ctx, playbook, agent_id, "isolate").outcome == "allow"
    assert evaluate(ctx, playbook, agent_id, "run_command").guardrail == "run_command"
    ctx.state.change_tags(agent_id, add=["critical"])
    verdict = evaluate(ctx, playbook, agent_id, "isolate")
    assert (verdict.outcome, verdict.guardrail) == ("needs_approval", "critical_approval")
    assert running_server.api.call("GET", "/tasks") == []


def test_the_agent_says_a_long_action_started_before_it_reports_the_outcome(
    running_server: RunningServer, host: tuple[identity.Identity, ServerLink], tmp_path: Path
) -> None:
    enrolled, link = host
    sample = tmp_path / "sample.txt"
    sample.write_text("evidence\n")
    task = running_server.api.call(
        "POST",
        f"/hosts/{enrolled.agent_id}/respond",
        {"action": "collect", "params": {"path": str(sample)}, "reason": "triage"},
    )
    agent = Agent(enrolled)
    try:
        for envelope in link.poll_tasks(wait=5):
            agent._handle_task(envelope)
    finally:
        agent.link.close()
        agent.spool.close()

    assert running_server.api.call("GET", f"/tasks/{task['id']}")["status"] == "done"
    reports = [
        (a["action"], a["outcome"])
        for a in reversed(running_server.api.call("GET", "/audit"))
        if a["actor"].startswith("agent:") and a["action"].startswith("task.")
    ]
    assert reports == [("task.collect.progress", "running"), ("task.collect.result", "done")]
