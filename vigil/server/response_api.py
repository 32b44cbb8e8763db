"""Host tags and the second analyst's say on held tasks (approve, deny).

Tags are free labels (``critical``, ``db``, ``dmz``...). ``critical`` is also a guardrail: a
destructive action on such a host waits for approval. So any role with ``hosts.tag`` may add it,
but removing it loosens the guardrails and needs the admin role.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from vigil.server import auth, guardrails, roles
from vigil.server.analyst_api import _host, _tenant_host
from vigil.server.auth import Analyst
from vigil.server.context import ServerContext
from vigil.server.tasks import approve_task, deny_task

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["response"])

TAG = r"^[a-z0-9][a-z0-9_.:-]{0,63}$"


class TagRequest(BaseModel):
    tags: list[str] = Field(min_length=1, max_length=32)


class Decision(BaseModel):
    """An approval or denial must say why: the reason goes into the audit trail."""

    reason: str = Field(min_length=1, max_length=4000)


@router.get("/hosts/{host_id}/tags")
def host_tags(
    host_id: str,
    analyst: Analyst = Depends(auth.analyst),
    ctx: ServerContext = Depends(auth.server),
) -> list[str]:
    tags: list[str] = _host(_tenant_host(ctx, analyst, host_id))["tags"]
    return tags


@router.post("/hosts/{host_id}/tags")
def add_tags(
    host_id: str,
    request: TagRequest,
    analyst: Analyst = Depends(auth.tagger),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    """Add tags (lower case letters, digits and ``_.:-``) to a host; returns the host."""
    bad = [t for t in request.tags if not re.match(TAG, t)]
    if bad:
        raise HTTPException(
            422, f"bad tag {bad[0]!r}: use lower case letters, digits and _.:- (up to 64)"
        )
    _tenant_host(ctx, analyst, host_id)
    ctx.state.audit(
        analyst.tenant_id, analyst.name, "host.tag", host_id, {"add": request.tags}, "ok"
    )
    ctx.state.change_tags(host_id, add=request.tags)
    return _host(_tenant_host(ctx, analyst, host_id))


@router.delete("/hosts/{host_id}/tags/{tag}")
def remove_tag(
    host_id: str,
    tag: str,
    analyst: Analyst = Depends(auth.tagger),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    """Remove one tag from a host; removing ``critical`` needs the admin role."""
    row = _tenant_host(ctx, analyst, host_id)
    if tag not in _host(row)["tags"]:
        raise HTTPException(404, f"host {host_id} has no tag {tag!r}")
    if tag == guardrails.CRITICAL_TAG:
        why = roles.may(analyst.role, roles.POLICY_WRITE)
        if why:
            ctx.state.audit(
                analyst.tenant_id,
                analyst.name,
                "host.untag",
                host_id,
                {"remove": [tag]},
                "refused: role",
            )
            raise HTTPException(
                403,
                f"refused by role: removing the {tag!r} tag lifts the approval guardrail; {why}",
            )
    ctx.state.audit(analyst.tenant_id, analyst.name, "host.untag", host_id, {"remove": [tag]}, "ok")
    ctx.state.change_tags(host_id, remove=[tag])
    return _host(_tenant_host(ctx, analyst, host_id))


@router.post("/tasks/{task_id}/approve")
def approve(
    task_id: str,
    decision: Decision,
    analyst: Analyst = Depends(auth.analyst),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    """Approve a task held for a second analyst: it is then signed and sent to the host."""
    return approve_task(ctx, analyst, task_id, decision.reason)


@router.post("/tasks/{task_id}/deny")
def deny(
    task_id: str,
    decision: Decision,
    analyst: Analyst = Depends(auth.analyst),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    """Refuse a task held for approval (its requester may withdraw it the same way)."""
    return deny_task(ctx, analyst, task_id, decision.reason)
