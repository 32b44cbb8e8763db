"""The agent-server protocol against a real server on loopback: enrollment, batches, tasks."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningServer
from vigil.agent import identity
from vigil.agent.errors import AgentError, TaskRejected
from vigil.agent.tasks import TaskChecker
from vigil.agent.transport import ServerLink
from vigil.schema import signing
from vigil.schema.ecs import utc_now_iso


def process_event(seq: int, command_line: str, executable: str = "/usr/bin/true") -> dict[str, Any]:
    return {
        "@timestamp": utc_now_iso(),
        "event": {
            "kind": "event",
            "category": ["process"],
            "type": ["start"],
            "action": "exec",
            "sequence": seq,
        },
        "host": {"os": {"type": "linux"}},
        "process": {
            "entity_id": f"e{seq}",
            "pid": 1000 + seq,
            "executable": executable,
            "command_line": command_line,
            "args": command_line.split(" "),
        },
    }


@pytest.fixture
def enrolled(running_server: RunningServer, tmp_path: Path) -> identity.Identity:
    return identity.enroll(tmp_path / "agent", running_server.url, running_server.enroll_token())


@pytest.fixture
def link(enrolled: identity.Identity) -> Iterator[ServerLink]:
    server_link = ServerLink(enrolled)
    yield server_link
    server_link.close()


def stored_command_lines(server: RunningServer) -> list[str]:
    rows = server.api.call(
        "POST",
        "/hunt",
        {"sql": 'SELECT "process.command_line" AS c FROM events ORDER BY "event.sequence"'},
    )["rows"]
    return [r["c"] for r in rows]


def test_enrollment_pins_the_ca_and_rejects_a_wrong_fingerprint(
    running_server: RunningServer, tmp_path: Path
) -> None:
    secret_token = running_server.enroll_token()
    wrong = secret_token.rsplit(".", 1)[0] + "." + "0" * 64
    with pytest.raises(AgentError, match="not the pinned"):
        identity.enroll(tmp_path / "bad", running_server.url, wrong)
    good = identity.enroll(tmp_path / "good", running_server.url, secret_token)
    hosts = running_server.api.call("GET", "/hosts")
    assert [h["id"] for h in hosts] == [good.agent_id]


def test_agent_endpoints_need_the_client_certificate(running_server: RunningServer) -> None:
    ca = str(running_server.ctx.authority.ca_path)
    response = httpx.post(
        f"{running_server.url}/api/v1/agent/events",
        verify=ssl.create_default_context(cafile=ca),
        json={"spool_epoch": "x", "events": []},
    )
    assert response.status_code == 401
    assert "client certificate" in response.json()["detail"]


def test_batches_are_deduplicated_by_spool_sequence(
    running_server: RunningServer, link: ServerLink
) -> None:
    first = [process_event(1, "echo one"), process_event(2, "echo two")]
    ack = link.post("/events", {"spool_epoch": "ep1", "events": first}).json()
    assert ack == {"committed_sequence": 2, "accepted": 2, "duplicates": 0}

    # The same events again (a lost ack) plus one new: only the new one is stored.
    again = [*first, process_event(3, "echo three")]
    ack = link.post("/events", {"spool_epoch": "ep1", "events": again}).json()
    assert ack == {"committed_sequence": 3, "accepted": 1, "duplicates": 2}
    assert stored_command_lines(running_server) == ["echo one", "echo two", "echo three"]


@pytest.mark.parametrize(
    ("bad_event", "message"),
    [
        pytest.param({"event": {"sequence": 2}}, "@timestamp is missing", id="no-timestamp"),
        pytest.param(
            {"@timestamp": "yesterday", "event": {"sequence": 2}},
            "not an ISO 8601 timestamp",
            id="bad-timestamp",
        ),
        pytest.param(
            {
                "@timestamp": "2026-01-01T00:00:00Z",
                "event": {"sequence": 2},
                "process": {"pid": "12"},
            },
            "process.pid must be an integer",
            id="pid-str",
        ),
        pytest.param({"@timestamp": "2026-01-01T00:00:00Z"}, "event.sequence", id="no-sequence"),
        pytest.param("not an object", "must be a JSON object", id="not-object"),
    ],
)
def test_a_malformed_batch_is_refused_whole_and_loses_nothing(
    running_server: RunningServer, link: ServerLink, bad_event: Any, message: str
) -> None:
    assert (
        link.post("/events", {"spool_epoch": "e", "events": [process_event(1, "kept")]}).status_code
        == 200
    )

    response = link.post(
        "/events", {"spool_epoch": "e", "events": [process_event(2, "never"), bad_event]}
    )
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert message in detail and "not stored" in detail
    assert stored_command_lines(running_server) == ["kept"]


def test_a_batch_that_is_not_json_gets_a_clear_4xx(
    running_server: RunningServer, link: ServerLink
) -> None:
    response = link._client.post(
        "/events", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "invalid request" in response.json()["detail"]


def test_hunts_are_read_only_and_see_only_events(running_server: RunningServer) -> None:
    for sql, message in [
        ("DELETE FROM events", "read-only"),
        ("SELECT * FROM telemetry", "unknown table"),
        ("SELECT * FROM read_text('/etc/passwd')", "table functions"),
        ("SELECT 1; SELECT 2", "exactly one statement"),
    ]:
        with pytest.raises(Exception, match=message):
            running_server.api.call("POST", "/hunt", {"sql": sql})


def test_tasks_are_signed_for_one_agent_and_cannot_be_replayed(
    running_server: RunningServer,
    enrolled: identity.Identity,
    link: ServerLink,
    tmp_path: Path,
) -> None:
    task = running_server.api.call(
        "POST", f"/hosts/{enrolled.agent_id}/isolate", {"reason": "test"}
    )
    envelopes = link.poll_tasks(wait=5)
    assert [e["body"] for e in envelopes if task["id"] in e["body"]]
    envelope = envelopes[0]

    checker = TaskChecker(
        enrolled.agent_id, enrolled.task_key_path.read_text(), tmp_path / "nonces.json"
    )
    body = checker.check(envelope["body"], envelope["signature"])
    assert body.action == "isolate" and body.agent_id == enrolled.agent_id

    with pytest.raises(TaskRejected, match="nonce was already used"):
        checker.check(envelope["body"], envelope["signature"])

    forged = envelope["body"].replace('"isolate"', '"release"')
    with pytest.raises(TaskRejected, match="does not verify"):
        checker.check(forged, envelope["signature"])

    other = TaskChecker(
        "another-agent", enrolled.task_key_path.read_text(), tmp_path / "other.json"
    )
    with pytest.raises(TaskRejected, match="meant for agent"):
        other.check(envelope["body"], envelope["signature"])

    expired_body = dict(
        signing.verify(enrolled.task_key_path.read_text(), envelope["body"], envelope["signature"])
    )
    expired_body.update(expires_at=time.time() - 1, nonce="fresh")
    text, signature = signing.sign(running_server.ctx.authority.task_key, expired_body)
    with pytest.raises(TaskRejected, match="expired"):
        checker.check(text, signature)

    audit = running_server.api.call("GET", "/audit")
    assert any(a["action"] == "task.isolate" and a["params"]["reason"] == "test" for a in audit)


def test_the_api_is_described_by_openapi(running_server: RunningServer) -> None:
    ca = ssl.create_default_context(cafile=str(running_server.ctx.authority.ca_path))
    spec = httpx.get(f"{running_server.url}/openapi.json", verify=ca).json()
    for path in (
        "/api/v1/alerts",
        "/api/v1/alerts/{alert_id}",
        "/api/v1/hunt",
        "/api/v1/hosts/{host_id}/isolate",
        "/api/v1/agent/events",
    ):
        assert path in spec["paths"], path
