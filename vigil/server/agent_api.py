"""Endpoints agents call: enroll (token), then events, heartbeat, tasks and results (mTLS)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import PlainTextResponse

from vigil.schema.errors import SchemaError
from vigil.schema.wire import (
    BatchAck,
    EnrollRequest,
    EnrollResponse,
    EventBatch,
    Heartbeat,
    SignedTask,
    TaskResult,
)
from vigil.server import auth
from vigil.server.context import ServerContext
from vigil.server.ingest import ingest_batch
from vigil.server.tasks import record_result
from vigil.server.visibility import on_heartbeat

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/agent", tags=["agent"])

MAX_POLL_SECONDS = 30.0


@router.get("/ca.pem", response_class=PlainTextResponse)
def ca_certificate(ctx: ServerContext = Depends(auth.server)) -> str:
    """The CA certificate; agents check it against the fingerprint they were given."""
    return ctx.authority.ca_path.read_text()


@router.post("/enroll", response_model=EnrollResponse)
def enroll(request: EnrollRequest, ctx: ServerContext = Depends(auth.server)) -> EnrollResponse:
    """Join an agent: redeem the enrollment secret and sign the agent's certificate request."""
    tenant_id = ctx.state.redeem_enroll_secret(request.token)
    if tenant_id is None:
        # No tenant is known for a bad token, so this goes to the server's log, not an audit trail.
        log.warning("refused to enroll host %r: bad enrollment token", request.hostname)
        raise HTTPException(403, "enrollment token unknown, used up or expired; create a new one")
    agent_id = ctx.state.add_agent(
        tenant_id, request.host_id, request.hostname, request.os, request.agent_version
    )
    try:
        cert_pem = ctx.authority.sign_client_csr(request.csr_pem.encode(), agent_id)
    except ValueError as exc:
        raise HTTPException(400, f"bad certificate request: {exc}") from exc
    ctx.state.audit(
        tenant_id,
        f"agent:{agent_id}",
        "agent.enroll",
        agent_id,
        {"hostname": request.hostname},
        "ok",
    )
    log.info("enrolled agent %s for host %s in tenant %s", agent_id, request.hostname, tenant_id)
    return EnrollResponse(
        agent_id=agent_id,
        tenant_id=tenant_id,
        cert_pem=cert_pem.decode(),
        ca_pem=ctx.authority.ca_path.read_text(),
        task_public_key_pem=ctx.authority.task_public_key_pem(),
    )


@router.post("/events", response_model=BatchAck)
def events(
    batch: EventBatch,
    agent: dict[str, Any] = Depends(auth.agent),
    ctx: ServerContext = Depends(auth.server),
) -> BatchAck:
    """Commit a batch; the acknowledgement names the highest sequence now stored."""
    try:
        return ingest_batch(ctx, agent, batch)
    except SchemaError as exc:
        log.warning("refused a batch from agent %s: %s", agent["id"], exc)
        raise HTTPException(422, str(exc)) from exc


@router.post("/heartbeat")
def heartbeat(
    beat: Heartbeat,
    agent: dict[str, Any] = Depends(auth.agent),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, str]:
    on_heartbeat(ctx, agent, beat.model_dump())
    return {"status": "ok"}


@router.get("/tasks", response_model=list[SignedTask])
async def tasks(
    request: Request,
    wait: float = 0.0,
    agent: dict[str, Any] = Depends(auth.agent),
    ctx: ServerContext = Depends(auth.server),
) -> list[SignedTask]:
    """Queued tasks, signed; waits up to ``wait`` seconds for one to arrive (long poll)."""
    pending = ctx.state.pending_tasks(agent["id"])
    if not pending and wait > 0:
        # Read the (empty) request first: then the next message the connection gives is its
        # close, which is_disconnected sees.
        await request.body()
        await ctx.doorbells.wait(agent["id"], min(wait, MAX_POLL_SECONDS))
        if await request.is_disconnected():
            # The agent went away while it waited (stopped, restarted): what was queued
            # meanwhile stays queued for its next poll instead of going to a closed socket.
            return []
        pending = ctx.state.pending_tasks(agent["id"])
    for task in pending:
        ctx.state.set_task_status(task["id"], "delivered")
    ctx.state.touch_agent(agent["id"])
    return [SignedTask(body=t["body"], signature=t["signature"]) for t in pending]


@router.post("/tasks/{task_id}/result")
def task_result(
    task_id: uuid.UUID,
    outcome: TaskResult,
    agent: dict[str, Any] = Depends(auth.agent),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    task = record_result(ctx, agent, str(task_id), outcome.status, outcome.result, outcome.message)
    if task is None:
        raise HTTPException(404, f"task {task_id} is not one of this agent's tasks")
    return task
