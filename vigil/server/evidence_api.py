"""Evidence endpoints: agents upload collected files (mTLS), analysts read them (bearer token).

An agent opens an upload (``POST /api/v1/agent/evidence``), sends numbered base64 chunks with
their sha256 (``POST .../{upload_id}/chunks/{n}``), then finishes with the sha256 of the whole
file (``POST .../{upload_id}/finish``); the server keeps the file only when what it received
hashes to that value. Analysts list evidence, read its metadata and custody, and download its
bytes; every read is written to the chain of custody and the audit trail.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import uuid
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from vigil.agent.respond import REGISTRY as ACTIONS
from vigil.server import auth
from vigil.server.auth import Analyst
from vigil.server.context import ServerContext
from vigil.store.evidence import EvidenceError, EvidenceStore

log = logging.getLogger(__name__)

router = APIRouter(tags=["evidence"])

# The largest file an agent may send; the collect action refuses larger files before sending.
MAX_BYTES = 100 * 1024 * 1024
# A chunk is 1 MiB of file; the cap leaves room for a client that sends somewhat larger ones.
MAX_CHUNK = 4 * 1024 * 1024


class UploadStart(BaseModel):
    """What the agent is about to send."""

    path: str = Field(min_length=1)
    size: int = Field(ge=0)
    task_id: str | None = None


class Chunk(BaseModel):
    """One numbered piece of the file, base64, with its own sha256."""

    data: str
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")


class UploadFinish(BaseModel):
    """The whole file as the agent read it."""

    chunks: int = Field(ge=0)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    collected_at: str
    metadata: dict[str, Any] = Field(default_factory=dict)


def evidence_store(request: Request) -> EvidenceStore:
    """The server's evidence store, or 503 when this server was started without one."""
    store: EvidenceStore | None = getattr(auth.server(request), "evidence", None)
    if store is None:
        raise HTTPException(503, "this server has no evidence store; upgrade or restart it")
    return store


def _upload(store: EvidenceStore, agent: dict[str, Any], upload_id: uuid.UUID) -> dict[str, Any]:
    upload = store.upload(agent["id"], upload_id.hex)
    if upload is None:
        raise HTTPException(404, f"upload {upload_id.hex} is not an open upload of this agent")
    return upload


@router.post("/api/v1/agent/evidence")
def start_upload(
    start: UploadStart,
    agent: dict[str, Any] = Depends(auth.agent),
    ctx: ServerContext = Depends(auth.server),
    store: EvidenceStore = Depends(evidence_store),
) -> dict[str, str]:
    """Open an upload; a ``task_id`` must name a collect or collect_triage task of this agent.

    The task's requester is kept for the chain of custody.
    """
    if start.size > MAX_BYTES:
        raise HTTPException(
            413, f"{start.path} is {start.size} bytes, over the cap of {MAX_BYTES}; not accepted"
        )
    requested_by = None
    if start.task_id is not None:
        task = ctx.state.task_for_agent(agent["id"], start.task_id)
        action = ACTIONS.get(task["action"]) if task is not None else None
        if task is None or action is None or not action.uploads_evidence:
            raise HTTPException(
                404, f"task {start.task_id} is not a collect task of this agent; upload refused"
            )
        requested_by = task["requested_by"]
    upload_id = store.start_upload(
        agent["tenant_id"], agent["id"], start.path, start.size, start.task_id, requested_by
    )
    return {"upload_id": upload_id}


@router.post("/api/v1/agent/evidence/{upload_id}/chunks/{index}")
def add_chunk(
    upload_id: uuid.UUID,
    index: int,
    chunk: Chunk,
    agent: dict[str, Any] = Depends(auth.agent),
    store: EvidenceStore = Depends(evidence_store),
) -> dict[str, int]:
    """Store chunk ``index`` after checking its own sha256."""
    upload = _upload(store, agent, upload_id)
    if index < 0:
        raise HTTPException(422, f"chunk number must be 0 or more, got {index}")
    try:
        data = base64.b64decode(chunk.data, validate=True)
    except binascii.Error as exc:
        raise HTTPException(422, f"chunk {index} is not valid base64: {exc}") from exc
    if len(data) > MAX_CHUNK:
        raise HTTPException(413, f"chunk {index} is over {MAX_CHUNK} bytes; send 1 MiB chunks")
    if hashlib.sha256(data).hexdigest() != chunk.sha256.lower():
        raise HTTPException(
            422, f"chunk {index} does not match its sha256; it was damaged in transit, resend it"
        )
    try:
        received = store.add_chunk(upload, index, data, MAX_BYTES)
    except EvidenceError as exc:
        store.abort_upload(upload)
        raise HTTPException(413, f"{exc}; the upload was dropped") from exc
    return {"received": received}


@router.post("/api/v1/agent/evidence/{upload_id}/finish")
def finish_upload(
    upload_id: uuid.UUID,
    finish: UploadFinish,
    agent: dict[str, Any] = Depends(auth.agent),
    ctx: ServerContext = Depends(auth.server),
    store: EvidenceStore = Depends(evidence_store),
) -> dict[str, Any]:
    """Join the chunks and keep them as evidence if their sha256 is the agent's; else refuse."""
    upload = _upload(store, agent, upload_id)
    try:
        record = store.finish_upload(
            upload,
            finish.chunks,
            finish.sha256,
            finish.size,
            finish.collected_at,
            finish.metadata,
        )
    except EvidenceError as exc:
        log.warning("refused evidence from agent %s: %s", agent["id"], exc)
        ctx.state.audit(
            agent["tenant_id"],
            f"agent:{agent['id']}",
            "evidence.receive",
            upload["path"],
            {"task_id": upload["task_id"], "sha256": finish.sha256},
            f"refused: {exc}",
        )
        raise HTTPException(422, str(exc)) from exc
    ctx.state.audit(
        agent["tenant_id"],
        f"agent:{agent['id']}",
        "evidence.receive",
        record["id"],
        {"task_id": record["task_id"], "path": record["original_path"], "sha256": record["sha256"]},
        "ok",
    )
    return record


@router.post("/api/v1/agent/evidence/{upload_id}/abort")
def abort_upload(
    upload_id: uuid.UUID,
    agent: dict[str, Any] = Depends(auth.agent),
    store: EvidenceStore = Depends(evidence_store),
) -> dict[str, str]:
    """Drop an upload the agent could not complete."""
    store.abort_upload(_upload(store, agent, upload_id))
    return {"status": "aborted"}


@router.get("/api/v1/evidence")
def list_evidence(
    analyst: Analyst = Depends(auth.analyst),
    store: EvidenceStore = Depends(evidence_store),
) -> list[dict[str, Any]]:
    """The newest evidence of the analyst's tenant."""
    return store.newest(analyst.tenant_id)


def _evidence(store: EvidenceStore, analyst: Analyst, evidence_id: uuid.UUID) -> dict[str, Any]:
    record = store.evidence(analyst.tenant_id, evidence_id.hex)
    if record is None:
        raise HTTPException(404, f"no evidence {evidence_id.hex}; list it with GET /evidence")
    return record


@router.get("/api/v1/evidence/{evidence_id}")
def evidence_metadata(
    evidence_id: uuid.UUID,
    analyst: Analyst = Depends(auth.analyst),
    store: EvidenceStore = Depends(evidence_store),
) -> dict[str, Any]:
    """Metadata and chain of custody of one piece of evidence; the read itself is logged."""
    _evidence(store, analyst, evidence_id)
    store.log_access(
        analyst.tenant_id, evidence_id.hex, f"analyst:{analyst.name}", "viewed metadata", {}
    )
    return _evidence(store, analyst, evidence_id)


@router.get("/api/v1/evidence/{evidence_id}/content")
def evidence_content(
    evidence_id: uuid.UUID,
    analyst: Analyst = Depends(auth.analyst),
    ctx: ServerContext = Depends(auth.server),
    store: EvidenceStore = Depends(evidence_store),
) -> FileResponse:
    """The bytes of one piece of evidence; the download is logged in custody and audit."""
    record = _evidence(store, analyst, evidence_id)
    path = store.content_path(analyst.tenant_id, record["id"])
    store.log_access(analyst.tenant_id, record["id"], f"analyst:{analyst.name}", "downloaded", {})
    ctx.state.audit(
        analyst.tenant_id,
        analyst.name,  # as every other audit record names its analyst
        "evidence.download",
        record["id"],
        {"sha256": record["sha256"]},
        "ok",
    )
    # The agent says what it sent; only a known format names the download.
    suffix = "tar.gz" if record["metadata"].get("format") == "tar.gz" else "bin"
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{record['id']}.{suffix}",
        headers={"X-Vigil-SHA256": record["sha256"]},
    )
