"""Collecting a file as evidence through the real agent endpoints of a server on loopback."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import ssl
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import RunningServer, free_port
from tests.triage_host import make_host
from vigil.agent import identity, runtime
from vigil.agent.policy import Policy
from vigil.agent.respond import ActionContext
from vigil.agent.respond.collect import CollectAction
from vigil.agent.respond.errors import ResponseError
from vigil.agent.respond.triage import CollectTriageAction
from vigil.agent.tasks import run_action
from vigil.agent.transport import ServerLink
from vigil.cli.client import ApiClient
from vigil.cli.main import main
from vigil.detect import builtin_rules_dir
from vigil.schema.ecs import utc_now_iso
from vigil.schema.wire import TaskBody
from vigil.server import evidence_api
from vigil.server.app import ADMIN_TOKEN_FILE, build_server
from vigil.server.context import ServerConfig
from vigil.store.evidence import EvidenceStore


@pytest.fixture
def evidence_server(tmp_path: Path) -> Iterator[RunningServer]:
    """A real server with the evidence router and store (added here until the app has them)."""
    data_dir = tmp_path / "server"
    config = ServerConfig(data_dir=data_dir, port=free_port(), rule_paths=[builtin_rules_dir()])
    ctx, server = build_server(config)
    app = server.config.app
    assert isinstance(app, FastAPI)
    if not any(getattr(r, "path", "") == "/api/v1/evidence" for r in app.routes):
        app.include_router(evidence_api.router)
    if getattr(ctx, "evidence", None) is None:
        setattr(ctx, "evidence", EvidenceStore.open(data_dir))  # noqa: B010
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "test server did not start"
    token = (data_dir / ADMIN_TOKEN_FILE).read_text().strip()
    running = RunningServer(config, ctx, ApiClient(config.url, token, str(ctx.authority.ca_path)))
    try:
        yield running
    finally:
        running.api.close()
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "test server did not stop"
        ctx.evidence.close()  # type: ignore[attr-defined]
        ctx.close()


@pytest.fixture
def enrolled(evidence_server: RunningServer, tmp_path: Path) -> identity.Identity:
    return identity.enroll(tmp_path / "agent", evidence_server.url, evidence_server.enroll_token())


@pytest.fixture
def link(enrolled: identity.Identity) -> Iterator[ServerLink]:
    server_link = ServerLink(enrolled)
    yield server_link
    server_link.close()


@pytest.fixture
def collect(enrolled: identity.Identity, link: ServerLink) -> CollectAction:
    context = ActionContext(
        agent_id=enrolled.agent_id,
        state_dir=str(enrolled.state_dir),
        server_host=enrolled.server_host,
        server_port=enrolled.server_port,
        link=link,
    )
    return CollectAction(context)


def content(server: RunningServer, evidence_id: str) -> httpx.Response:
    token = (server.config.data_dir / ADMIN_TOKEN_FILE).read_text().strip()
    return httpx.get(
        f"{server.url}/api/v1/evidence/{evidence_id}/content",
        headers={"Authorization": f"Bearer {token}"},
        verify=ssl.create_default_context(cafile=str(server.ctx.authority.ca_path)),
    )


def test_collect_uploads_the_file_with_its_chain_of_custody(
    evidence_server: RunningServer,
    enrolled: identity.Identity,
    collect: CollectAction,
    tmp_path: Path,
) -> None:
    # Three chunks, the last one partial.
    data = os.urandom(2 * 1024 * 1024 + 4321)
    sample = tmp_path / "sample.bin"
    sample.write_bytes(data)
    task = evidence_server.api.call(
        "POST",
        f"/hosts/{enrolled.agent_id}/respond",
        {"action": "collect", "params": {"path": str(sample)}, "reason": "triage"},
    )

    result = collect.run({"path": str(sample), "task_id": task["id"]})

    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    assert result["size"] == len(data)
    listed = evidence_server.api.call("GET", "/evidence")
    assert [e["id"] for e in listed] == [result["evidence_id"]]
    record = evidence_server.api.call("GET", f"/evidence/{result['evidence_id']}")
    assert record["sha256"] == result["sha256"] and record["size"] == len(data)
    assert record["original_path"] == str(sample)
    assert record["agent_id"] == enrolled.agent_id
    assert record["task_id"] == task["id"] and record["requested_by"] == "admin"
    assert record["collected_at"] and record["received_at"]
    assert record["metadata"]["mode"] == sample.stat().st_mode & 0o7777
    assert [c["action"] for c in record["custody"]] == ["received", "viewed metadata"]
    assert record["custody"][0]["actor"] == f"agent:{enrolled.agent_id}"

    downloaded = content(evidence_server, result["evidence_id"])
    assert downloaded.status_code == 200 and downloaded.content == data
    record = evidence_server.api.call("GET", f"/evidence/{result['evidence_id']}")
    assert [c["action"] for c in record["custody"]][-2:] == ["downloaded", "viewed metadata"]
    audit = evidence_server.api.call("GET", "/audit", params={"limit": 1})
    assert [(a["actor"], a["action"], a["target"]) for a in audit] == [
        ("admin", "evidence.download", result["evidence_id"])
    ]
    stored = evidence_server.config.data_dir / "evidence" / "default" / result["evidence_id"]
    assert stored.read_bytes() == data


def test_an_empty_file_is_collected(collect: CollectAction, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    result = collect.run({"path": str(empty)})
    assert result["size"] == 0 and result["sha256"] == hashlib.sha256(b"").hexdigest()


def _finish(link: ServerLink, upload_id: str, chunks: int, data: bytes) -> httpx.Response:
    return link.post(
        f"/evidence/{upload_id}/finish",
        {
            "chunks": chunks,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "collected_at": "2026-01-01T00:00:00Z",
        },
    )


def _chunk(data: bytes) -> dict[str, Any]:
    return {"data": base64.b64encode(data).decode(), "sha256": hashlib.sha256(data).hexdigest()}


def test_a_corrupted_upload_is_refused_and_nothing_is_stored(
    evidence_server: RunningServer, link: ServerLink
) -> None:
    original = b"the bytes the agent read" * 100
    corrupted = bytes([original[0] ^ 0xFF]) + original[1:]
    upload_id = link.post("/evidence", {"path": "/tmp/x", "size": len(original)}).json()[
        "upload_id"
    ]
    assert link.post(f"/evidence/{upload_id}/chunks/0", _chunk(corrupted)).status_code == 200

    response = _finish(link, upload_id, 1, original)

    assert response.status_code == 422
    assert "corrupted or changed in transit, nothing was stored" in response.json()["detail"]
    assert evidence_server.api.call("GET", "/evidence") == []
    tenant_dir = evidence_server.config.data_dir / "evidence" / "default"
    assert [p.name for p in tenant_dir.iterdir()] == ["uploads"]
    assert list((tenant_dir / "uploads").iterdir()) == []
    # The upload is gone: finishing it again is refused too.
    assert _finish(link, upload_id, 1, original).status_code == 404


def test_a_chunk_that_does_not_match_its_own_hash_is_refused(link: ServerLink) -> None:
    upload_id = link.post("/evidence", {"path": "/tmp/x", "size": 4}).json()["upload_id"]
    bad = {"data": base64.b64encode(b"abcd").decode(), "sha256": "0" * 64}
    response = link.post(f"/evidence/{upload_id}/chunks/0", bad)
    assert response.status_code == 422
    assert "damaged in transit, resend it" in response.json()["detail"]


def test_over_cap_is_refused(
    collect: CollectAction, link: ServerLink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample = tmp_path / "big"
    sample.write_bytes(b"x" * 5000)
    with pytest.raises(ResponseError, match="5000 bytes, over the cap of 1000; nothing was sent"):
        collect.run({"path": str(sample), "max_bytes": 1000})
    with pytest.raises(ResponseError, match="over the limit of 104857600 bytes"):
        collect.run({"path": str(sample), "max_bytes": 200 * 1024 * 1024})

    # The server enforces its own cap, whatever the agent says.
    response = link.post("/evidence", {"path": "/tmp/huge", "size": 200 * 1024 * 1024})
    assert response.status_code == 413 and "over the cap" in response.json()["detail"]
    monkeypatch.setattr(evidence_api, "MAX_BYTES", 4000)
    with pytest.raises(ResponseError, match="server refused the upload: .* over the cap of 4000"):
        collect.run({"path": str(sample)})


def test_collect_refuses_links_and_folders(collect: CollectAction, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"x")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(ResponseError, match="symbolic link"):
        collect.run({"path": str(tmp_path / "link")})
    with pytest.raises(ResponseError, match="is a directory"):
        collect.run({"path": str(tmp_path)})


def test_upload_endpoints_need_the_client_certificate(evidence_server: RunningServer) -> None:
    response = httpx.post(
        f"{evidence_server.url}/api/v1/agent/evidence",
        verify=ssl.create_default_context(cafile=str(evidence_server.ctx.authority.ca_path)),
        json={"path": "/x", "size": 1},
    )
    assert response.status_code == 401


def test_collect_without_a_server_link_says_so(tmp_path: Path) -> None:
    sample = tmp_path / "f"
    sample.write_bytes(b"x")
    context = ActionContext(
        agent_id="a", state_dir=str(tmp_path / "state"), server_host="h", server_port=1
    )
    with pytest.raises(ResponseError, match="without a connection to the server"):
        CollectAction(context).run({"path": str(sample)})


def test_an_upload_naming_another_agents_or_unknown_task_is_refused(link: ServerLink) -> None:
    response = link.post(
        "/evidence", {"path": "/x", "size": 1, "task_id": "00000000-0000-0000-0000-000000000000"}
    )
    assert response.status_code == 404 and "not a collect task of this agent" in response.text


def test_the_cli_downloads_evidence_to_a_file(
    evidence_server: RunningServer, collect: CollectAction, tmp_path: Path
) -> None:
    sample = tmp_path / "notes.txt"
    sample.write_bytes(b"exfiltration list\n" * 1000)
    result = collect.run({"path": str(sample)})
    target = tmp_path / "downloaded.txt"
    written, sha256 = evidence_server.api.download(
        f"/evidence/{result['evidence_id']}/content", target
    )
    assert written == sample.stat().st_size and target.read_bytes() == sample.read_bytes()
    assert sha256 == result["sha256"]


def _sha256_of_members(bundle: bytes) -> tuple[dict[str, Any], dict[str, str]]:
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
        hashes = {
            m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest()  # type: ignore[union-attr]
            for m in tar.getmembers()
        }
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    return manifest, hashes


def test_a_triage_bundle_arrives_as_evidence_with_its_sha256_and_custody(
    evidence_server: RunningServer,
    enrolled: identity.Identity,
    link: ServerLink,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = make_host(tmp_path)
    context = ActionContext(
        agent_id=enrolled.agent_id,
        state_dir=str(enrolled.state_dir),
        server_host=enrolled.server_host,
        server_port=enrolled.server_port,
        link=link,
    )
    task = evidence_server.api.call(
        "POST",
        f"/hosts/{enrolled.agent_id}/respond",
        {"action": "collect_triage", "params": {}, "reason": "alert 42"},
    )

    result = CollectTriageAction(context, root=str(host)).run({"task_id": task["id"]})

    record = evidence_server.api.call("GET", f"/evidence/{result['evidence_id']}")
    assert record["sha256"] == result["sha256"] and record["size"] == result["size"]
    assert record["task_id"] == task["id"] and record["requested_by"] == "admin"
    assert record["metadata"]["kind"] == "triage" and record["metadata"]["format"] == "tar.gz"
    assert record["metadata"]["entries"] == result["entries"]
    assert record["original_path"].startswith("triage:") and record["original_path"].endswith(
        ".tar.gz"
    )
    assert record["custody"][0]["actor"] == f"agent:{enrolled.agent_id}"
    # The agent keeps nothing of the bundle once it is sent.
    assert list((enrolled.state_dir / "triage").iterdir()) == []

    downloaded = content(evidence_server, result["evidence_id"])
    assert downloaded.status_code == 200
    assert hashlib.sha256(downloaded.content).hexdigest() == record["sha256"]
    assert downloaded.headers["X-Vigil-SHA256"] == record["sha256"]
    assert f"{result['evidence_id']}.tar.gz" in downloaded.headers["content-disposition"]
    manifest, hashes = _sha256_of_members(downloaded.content)
    assert {e["name"]: e["sha256"] for e in manifest["entries"]} == {
        name: digest for name, digest in hashes.items() if name != "manifest.json"
    }
    assert "files/root/.bash_history" in hashes and "files/etc/shadow" not in hashes

    # `vigil evidence get` fetches it too.
    for name in ("VIGIL_SERVER", "VIGIL_TOKEN", "VIGIL_CA"):
        monkeypatch.delenv(name, raising=False)
    target = tmp_path / "bundle.tar.gz"
    argv = ["evidence", "get", result["evidence_id"], "-o", str(target)]
    capsys.readouterr()
    assert main([*argv, "--data-dir", str(evidence_server.config.data_dir)]) == 0
    assert hashlib.sha256(target.read_bytes()).hexdigest() == record["sha256"]
    said = capsys.readouterr().out
    assert said.startswith(f"saved {record['size']} bytes to {target}") and "(checked)" in said

    # A copy that does not hash to the evidence's sha256 is refused, loudly.
    stored = evidence_server.config.data_dir / "evidence" / "default" / result["evidence_id"]
    damaged = bytearray(stored.read_bytes())
    damaged[100] ^= 0xFF
    stored.write_bytes(damaged)
    assert main([*argv, "--data-dir", str(evidence_server.config.data_dir)]) == 1
    assert "is not the evidence's" in capsys.readouterr().err

    # `vigil evidence list` shows it as a table, with its path and the start of its hash.
    capsys.readouterr()
    assert main(["evidence", "list", "--data-dir", str(evidence_server.config.data_dir)]) == 0
    listing = capsys.readouterr().out
    assert listing.startswith("ID") and result["evidence_id"] in listing
    assert record["sha256"][:16] in listing and "triage:" in listing


def test_the_task_loop_runs_collect_triage_and_names_its_task(
    evidence_server: RunningServer, enrolled: identity.Identity, link: ServerLink
) -> None:
    """Through the registry, as the agent runs a task: the real file system, a small cap."""
    context = ActionContext(
        agent_id=enrolled.agent_id,
        state_dir=str(enrolled.state_dir),
        server_host=enrolled.server_host,
        server_port=enrolled.server_port,
        link=link,
    )
    task = evidence_server.api.call(
        "POST",
        f"/hosts/{enrolled.agent_id}/respond",
        {"action": "collect_triage", "params": {"max_bytes": 2_000_000}, "reason": "triage"},
    )
    body = TaskBody(
        task_id=task["id"],
        tenant_id="default",
        agent_id=enrolled.agent_id,
        action="collect_triage",
        params={"max_bytes": 2_000_000, "since_minutes": 10},
        nonce="n",
        issued_at=time.time(),
        expires_at=time.time() + 60,
    )

    status, result, message = run_action(body, context)

    assert (status, message) == ("done", "")
    assert result["size"] <= 2_000_000
    record = evidence_server.api.call("GET", f"/evidence/{result['evidence_id']}")
    assert record["task_id"] == task["id"] and record["sha256"] == result["sha256"]
    manifest, hashes = _sha256_of_members(content(evidence_server, record["id"]).content)
    assert manifest["root"] == "/" and "files/etc/passwd" in hashes
    assert "live/processes.json" in hashes


def test_a_bundle_carries_the_agents_newest_events_sent_or_not(
    evidence_server: RunningServer,
    enrolled: identity.Identity,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime, "RECENT_EVENTS", 10)
    agent = runtime.Agent(enrolled, policy=Policy.default([]))
    try:
        stamp = utc_now_iso()
        for n in range(25):
            agent.emit({"@timestamp": stamp, "event": {"kind": "event"}, "n": n})
        # What the writer thread does: spool them (nothing sends them in this test).
        agent._flush_queue()
        assert [e["n"] for e in agent.recent_events()] == list(range(15, 25))

        result = CollectTriageAction(agent.action_context, root=str(make_host(tmp_path))).run(
            {"max_events": 4}
        )
    finally:
        agent.link.close()
        agent.spool.close()

    bundle = content(evidence_server, result["evidence_id"]).content
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
        recent = tar.extractfile("telemetry/recent.jsonl").read()  # type: ignore[union-attr]
        unsent = tar.extractfile("telemetry/unsent.jsonl").read()  # type: ignore[union-attr]
    assert [json.loads(line)["n"] for line in recent.splitlines()] == [21, 22, 23, 24]
    rows = [json.loads(line) for line in unsent.splitlines()]
    assert [(e["n"], e["event"]["sequence"]) for e in rows] == [(n, n + 1) for n in range(21, 25)]
