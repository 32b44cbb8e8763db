"""Tenant administration: the response policy (guardrails) and analysts' API tokens.

Reading the policy is open to every role; changing it, and anything about tokens, needs the
admin role. Every change is audited.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from vigil.server import auth, guardrails, roles
from vigil.server.auth import Analyst
from vigil.server.context import ServerContext

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["admin"])

TOKEN_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,63}$"


def _policy_view(ctx: ServerContext, tenant_id: str) -> dict[str, Any]:
    policy = guardrails.load_policy(ctx, tenant_id)
    stored = ctx.state.response_policy(tenant_id) or {}
    return {
        "tenant_id": tenant_id,
        **policy.as_dict(),
        "effective_actions": policy.effective_actions(),
        "updated": stored.get("updated"),
        "updated_by": stored.get("updated_by"),
    }


@router.get("/policy")
def show_policy(
    analyst: Analyst = Depends(auth.analyst), ctx: ServerContext = Depends(auth.server)
) -> dict[str, Any]:
    """The tenant's response guardrails, with the actions they leave allowed."""
    return _policy_view(ctx, analyst.tenant_id)


class PolicyUpdate(BaseModel):
    """Fields to change; a field left out keeps its value. ``allowed_actions: null`` is all."""

    allowed_actions: list[str] | None = Field(default=None, max_length=200)
    run_command: bool | None = None
    isolate_cap_per_hour: int | None = Field(default=None, ge=1, le=guardrails.MAX_ISOLATE_CAP)
    critical_needs_approval: bool | None = None


@router.patch("/policy")
def update_policy(
    update: PolicyUpdate,
    analyst: Analyst = Depends(auth.policy_admin),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    """Change some of the tenant's guardrails (admin)."""
    changes = update.model_dump(exclude_unset=True)
    for key in ("run_command", "isolate_cap_per_hour", "critical_needs_approval"):
        if changes.get(key, 0) is None:
            raise HTTPException(422, f"{key} cannot be null; leave it out to keep its value")
    with guardrails.DISPATCH_LOCK:
        before = guardrails.load_policy(ctx, analyst.tenant_id)
        after = before.changed(**changes)
        ctx.state.audit(
            analyst.tenant_id,
            analyst.name,
            "policy.update",
            analyst.tenant_id,
            {"before": before.as_dict(), "after": after.as_dict()},
            "ok",
        )
        ctx.state.set_response_policy(analyst.tenant_id, after.as_dict(), analyst.name)
    log.info("response policy of tenant %s changed by %s", analyst.tenant_id, analyst.name)
    return _policy_view(ctx, analyst.tenant_id)


class TokenRequest(BaseModel):
    name: str = Field(pattern=TOKEN_NAME, description="the analyst's name, unique in the tenant")
    role: str = Field(default="analyst")


@router.get("/roles")
def list_roles(analyst: Analyst = Depends(auth.analyst)) -> list[dict[str, Any]]:
    """The roles a token may have and what each may do."""
    return [
        {
            "name": role.name,
            "description": role.description,
            "permissions": sorted(role.permissions),
            "destructive": role.destructive,
        }
        for role in roles.ROLES.values()
    ]


@router.post("/tokens")
def create_token(
    request: TokenRequest,
    analyst: Analyst = Depends(auth.token_admin),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    """A new analyst API token with a role (admin); the token is shown only this once."""
    if request.role not in roles.ROLES:
        raise HTTPException(422, f"no role {request.role!r}; roles are: {', '.join(roles.ROLES)}")
    taken = {t["name"] for t in ctx.state.api_tokens(analyst.tenant_id)}
    if request.name in taken:
        raise HTTPException(
            409,
            f"a token named {request.name!r} exists in this tenant; names tell analysts apart "
            "(two-person approval relies on it): pick another, or revoke the old one first",
        )
    ctx.state.audit(
        analyst.tenant_id, analyst.name, "token.create", request.name, request.model_dump(), "ok"
    )
    token = ctx.state.create_api_token(analyst.tenant_id, request.name, request.role)
    return {"name": request.name, "role": request.role, "token": token}


@router.get("/tokens")
def list_tokens(
    analyst: Analyst = Depends(auth.token_admin),
    ctx: ServerContext = Depends(auth.server),
) -> list[dict[str, Any]]:
    """Names, roles and creation times of the tenant's tokens (admin)."""
    return ctx.state.api_tokens(analyst.tenant_id)


@router.delete("/tokens/{name}")
def revoke_token(
    name: str,
    analyst: Analyst = Depends(auth.token_admin),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    """Revoke the tokens of one name (admin); an admin cannot revoke their own."""
    if name == analyst.name:
        raise HTTPException(
            409, "you cannot revoke your own token; another admin revokes it, so one always stays"
        )
    removed = ctx.state.revoke_api_tokens(analyst.tenant_id, name)
    if not removed:
        raise HTTPException(404, f"no token named {name!r}; see 'vigil tokens list'")
    ctx.state.audit(analyst.tenant_id, analyst.name, "token.revoke", name, {"count": removed}, "ok")
    return {"name": name, "revoked": removed}
