"""The analyst REST API: hosts, alerts, hunts and response, all scoped to the caller's tenant."""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from vigil.agent.respond import REGISTRY as ACTIONS
from vigil.cases.alerts import attack_details
from vigil.cases.process_tree import process_tree
from vigil.hunt.errors import HuntError
from vigil.hunt.sql import run_hunt
from vigil.schema.ecs import iso_epoch
from vigil.schema.tokens import make_enroll_token
from vigil.server import auth
from vigil.server.auth import Analyst
from vigil.server.context import ServerContext
from vigil.server.tasks import expire_due, queue_task
from vigil.store.state import ENROLL_TOKEN_ID_LENGTH, token_hash

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["analyst"])


class EnrollTokenRequest(BaseModel):
    ttl_seconds: float = Field(default=7 * 24 * 3600, gt=0, le=365 * 24 * 3600)
    uses: int = Field(default=100, ge=1, le=100_000)


class RemoveHostRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=2000)


class HuntRequest(BaseModel):
    sql: str = Field(min_length=1, max_length=100_000)


class ResponseRequest(BaseModel):
    reason: str = Field(default="", max_length=4000)
    dry_run: bool = Field(default=False, description="audit and return the verdict, queue nothing")


class DestructiveRequest(BaseModel):
    """Destructive actions must say why: the reason goes into the audit trail."""

    reason: str = Field(min_length=1, max_length=4000)
    dry_run: bool = Field(default=False, description="audit and return the verdict, queue nothing")


class KillRequest(DestructiveRequest):
    entity_id: str = Field(min_length=1, max_length=128)
    tree: bool = False


@router.get("/status")
def status(ctx: ServerContext = Depends(auth.server)) -> dict[str, Any]:
    """Ready when this answers; says how many rules are loaded."""
    return {"status": "ready", "rules": len(ctx.rules.rules), "rule_errors": len(ctx.rules.errors)}


@router.post("/enroll-tokens")
def create_enroll_token(
    request: EnrollTokenRequest,
    analyst: Analyst = Depends(auth.enroller),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    """A token that enrolls agents into the caller's tenant, with the CA fingerprint in it."""
    secret = ctx.state.create_enroll_secret(analyst.tenant_id, request.ttl_seconds, request.uses)
    ctx.state.audit(
        analyst.tenant_id,
        analyst.name,
        "enroll_token.create",
        analyst.tenant_id,
        request.model_dump(),
        "ok",
    )
    return {
        "token": make_enroll_token(secret, ctx.authority.ca_fingerprint),
        "id": token_hash(secret)[:ENROLL_TOKEN_ID_LENGTH],
        "ca_fingerprint": ctx.authority.ca_fingerprint,
        "server": ctx.config.url,
    }


@router.get("/enroll-tokens")
def list_enroll_tokens(
    analyst: Analyst = Depends(auth.enroller), ctx: ServerContext = Depends(auth.server)
) -> list[dict[str, Any]]:
    """The tenant's enrollment tokens: id, created, expires, uses left (never the secret)."""
    return ctx.state.enroll_tokens(analyst.tenant_id)


@router.delete("/enroll-tokens/{token_id}")
def revoke_enroll_token(
    token_id: str,
    analyst: Analyst = Depends(auth.enroller),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    """Revoke an enrollment token: no agent can enroll with it any more."""
    if not ctx.state.revoke_enroll_token(analyst.tenant_id, token_id):
        raise HTTPException(
            404, f"no enrollment token {token_id!r} in this tenant; see vigil enroll-token list"
        )
    ctx.state.audit(analyst.tenant_id, analyst.name, "enroll_token.revoke", token_id, {}, "ok")
    return {"revoked": token_id}


def _host(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["hostname"],
        "machine_id": row["host_id"],
        "os": row["os"],
        "agent_version": row["version"],
        "enrolled": iso_epoch(row["enrolled"]),
        "last_seen": iso_epoch(row["last_seen"]),
        "isolated": bool(row["isolated"]),
        "tags": json.loads(row.get("tags") or "[]"),
        "health": json.loads(row["health"] or "{}"),
    }


@router.get("/hosts")
def hosts(
    analyst: Analyst = Depends(auth.analyst), ctx: ServerContext = Depends(auth.server)
) -> list[dict[str, Any]]:
    return [_host(row) for row in ctx.state.agents(analyst.tenant_id)]


def _tenant_host(ctx: ServerContext, analyst: Analyst, host_id: str) -> dict[str, Any]:
    row = ctx.state.agent(host_id)
    if row is None or row["tenant_id"] != analyst.tenant_id:
        raise HTTPException(404, f"no host {host_id!r}; see 'vigil hosts list'")
    return row


@router.get("/hosts/{host_id}")
def host(
    host_id: str,
    analyst: Analyst = Depends(auth.analyst),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    return _host(_tenant_host(ctx, analyst, host_id))


@router.post("/hosts/{host_id}/remove")
def remove_host(
    host_id: str,
    request: RemoveHostRequest,
    analyst: Analyst = Depends(auth.enroller),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    """Unenroll a host (decommissioned, or a start that went wrong); its telemetry stays."""
    row = _tenant_host(ctx, analyst, host_id)
    ctx.state.audit(
        analyst.tenant_id,
        analyst.name,
        "host.remove",
        host_id,
        {"hostname": row["hostname"], "reason": request.reason},
        "ok",
    )
    ctx.state.remove_agent(host_id)
    return {"removed": host_id, "name": row["hostname"]}


@router.post("/hosts/{host_id}/isolate")
def isolate(
    host_id: str,
    request: DestructiveRequest,
    analyst: Analyst = Depends(auth.analyst),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    """Cut the host off the network except for its line to this server."""
    _tenant_host(ctx, analyst, host_id)
    return queue_task(ctx, analyst, host_id, "isolate", {}, request.reason, dry_run=request.dry_run)


@router.post("/hosts/{host_id}/release")
def release(
    host_id: str,
    request: ResponseRequest,
    analyst: Analyst = Depends(auth.analyst),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    _tenant_host(ctx, analyst, host_id)
    return queue_task(ctx, analyst, host_id, "release", {}, request.reason, dry_run=request.dry_run)


@router.post("/hosts/{host_id}/kill")
def kill(
    host_id: str,
    request: KillRequest,
    analyst: Analyst = Depends(auth.analyst),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    """Kill one process instance (or its tree) by entity id; the agent checks it is the same."""
    _tenant_host(ctx, analyst, host_id)
    pid = ctx.telemetry.latest_pid(analyst.tenant_id, host_id, request.entity_id)
    if pid is None:
        raise HTTPException(404, f"no process {request.entity_id!r} in this host's telemetry")
    params = {"entity_id": request.entity_id, "pid": pid, "tree": request.tree}
    return queue_task(
        ctx, analyst, host_id, "kill", params, request.reason, dry_run=request.dry_run
    )


class RespondRequest(BaseModel):
    action: str = Field(min_length=1, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)
    reason: str = Field(default="", max_length=4000)
    dry_run: bool = Field(default=False, description="audit and return the verdict, queue nothing")


@router.get("/actions")
def actions(analyst: Analyst = Depends(auth.analyst)) -> list[dict[str, Any]]:
    """The response actions agents have: permission, destructive, what undoes them."""
    return [
        {
            "name": name,
            "summary": (action.__doc__ or "").strip().splitlines()[0] if action.__doc__ else "",
            "permission": action.permission,
            "destructive": action.destructive,
            "undo": action.undo,
            "long_running": action.long_running,
        }
        for name, action in sorted(ACTIONS.items())
    ]


@router.post("/hosts/{host_id}/respond")
def respond(
    host_id: str,
    request: RespondRequest,
    analyst: Analyst = Depends(auth.analyst),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    """Any response action the agent has, by name; destructive ones need a reason.

    The guardrails (role, tenant policy, isolation cap, approval on critical hosts) apply to
    this and to every other response endpoint alike; see ``vigil.server.guardrails``.
    """
    _tenant_host(ctx, analyst, host_id)
    action = ACTIONS.get(request.action)
    if action is None:
        raise HTTPException(
            422, f"no action {request.action!r}; one of: {', '.join(sorted(ACTIONS))}"
        )
    if action.destructive and not request.reason.strip():
        raise HTTPException(422, f"{request.action} is destructive: give a reason (--reason)")
    return queue_task(
        ctx,
        analyst,
        host_id,
        request.action,
        request.params,
        request.reason,
        dry_run=request.dry_run,
    )


@router.get("/tasks")
def tasks(
    analyst: Analyst = Depends(auth.analyst), ctx: ServerContext = Depends(auth.server)
) -> list[dict[str, Any]]:
    expire_due(ctx, analyst.tenant_id)
    return ctx.state.tasks(analyst.tenant_id)


@router.get("/tasks/{task_id}")
def task(
    task_id: str,
    analyst: Analyst = Depends(auth.analyst),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    expire_due(ctx, analyst.tenant_id)
    found = ctx.state.task(analyst.tenant_id, task_id)
    if found is None:
        raise HTTPException(404, f"no task {task_id!r}")
    return found


LEVELS = ("informational", "low", "medium", "high", "critical")
AlertStatus = Literal["new", "acknowledged", "closed"]
AlertLevel = Literal["informational", "low", "medium", "high", "critical"]


class AlertUpdate(BaseModel):
    status: AlertStatus


@router.get("/alerts")
def alerts(
    limit: int = Query(500, ge=1, le=10_000),
    status: AlertStatus | None = None,
    level: AlertLevel | None = Query(None, description="this level or higher"),
    host: str | None = None,
    analyst: Analyst = Depends(auth.analyst),
    ctx: ServerContext = Depends(auth.server),
) -> list[dict[str, Any]]:
    """Newest first; filter by triage status, minimum level and host."""
    levels = LEVELS[LEVELS.index(level) :] if level else None
    found = ctx.state.alerts(analyst.tenant_id, limit, status, levels, host)
    for item in found:
        item["attack_details"] = attack_details(item["attack"])
    return found


@router.patch("/alerts/{alert_id}")
def update_alert(
    alert_id: str,
    update: AlertUpdate,
    analyst: Analyst = Depends(auth.triager),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    """Triage: mark an alert acknowledged or closed (or new again)."""
    if not ctx.state.set_alert_status(analyst.tenant_id, alert_id, update.status):
        raise HTTPException(404, f"no alert {alert_id!r}; see 'vigil alerts list'")
    ctx.state.audit(
        analyst.tenant_id, analyst.name, "alert.status", alert_id, {"status": update.status}, "ok"
    )
    found = ctx.state.alert(analyst.tenant_id, alert_id)
    assert found is not None
    return found


@router.get("/alerts/{alert_id}")
def alert(
    alert_id: str,
    analyst: Analyst = Depends(auth.analyst),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    """The alert with the process tree that led to it."""
    found = ctx.state.alert(analyst.tenant_id, alert_id)
    if found is None:
        raise HTTPException(404, f"no alert {alert_id!r}; see 'vigil alerts list'")
    found["attack_details"] = attack_details(found["attack"])
    found["process_tree"] = process_tree(ctx.telemetry, analyst.tenant_id, found["event"])
    return found


@router.post("/hunt")
def hunt(
    request: HuntRequest,
    analyst: Analyst = Depends(auth.analyst),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    """Read-only SQL over the tenant's telemetry (the ``events`` view)."""
    try:
        result = run_hunt(ctx.telemetry, analyst.tenant_id, request.sql)
    except HuntError as exc:
        raise HTTPException(400, str(exc)) from exc
    ctx.state.audit(
        analyst.tenant_id,
        analyst.name,
        "hunt.sql",
        "events",
        {"sql": request.sql},
        f"{len(result['rows'])} rows",
    )
    return result


@router.get("/audit")
def audit_log(
    limit: int = Query(500, ge=1, le=10_000),
    analyst: Analyst = Depends(auth.analyst),
    ctx: ServerContext = Depends(auth.server),
) -> list[dict[str, Any]]:
    """The tenant's audit trail, newest first."""
    return ctx.state.audit_log(analyst.tenant_id, limit)
