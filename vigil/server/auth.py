"""Who is calling: analysts by bearer token, agents by their client certificate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from fastapi import HTTPException, Request

from vigil.server import roles
from vigil.server.context import ServerContext


@dataclass(frozen=True)
class Analyst:
    """Who asks: an analyst's token (or a playbook acting under a name and role)."""

    tenant_id: str
    name: str
    role: str


def server(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


def analyst(request: Request) -> Analyst:
    """The analyst behind a ``Authorization: Bearer`` token, or 401."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "missing bearer token: pass 'Authorization: Bearer <token>'")
    row = server(request).state.api_token(token.strip())
    if row is None:
        raise HTTPException(401, "unknown or revoked API token")
    return Analyst(tenant_id=row["tenant_id"], name=row["name"], role=row["role"])


def require(permission: str) -> Callable[[Request], Analyst]:
    """A dependency: the calling analyst, or 403 when their role lacks ``permission``."""

    def analyst_with_permission(request: Request) -> Analyst:
        caller = analyst(request)
        why = roles.may(caller.role, permission)
        if why:
            raise HTTPException(403, f"refused by role: {why}")
        return caller

    return analyst_with_permission


# One dependency per permission an endpoint needs (response actions are checked by the
# guardrails, against each action's own permission).
policy_admin = require(roles.POLICY_WRITE)
token_admin = require(roles.TOKENS_WRITE)
enroller = require(roles.AGENTS_ENROLL)
triager = require(roles.ALERTS_TRIAGE)
intel_writer = require(roles.INTEL_WRITE)
tagger = require(roles.HOSTS_TAG)


def agent(request: Request) -> dict[str, Any]:
    """The enrolled agent whose CA-signed client certificate this connection presented."""
    tls = request.scope.get("extensions", {}).get("tls", {})
    der = tls.get("client_cert_der")
    if der is None:
        raise HTTPException(401, "agent endpoints need the client certificate from enrollment")
    cert = x509.load_der_x509_certificate(der)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    agent_id = str(names[0].value) if names else ""
    row = server(request).state.agent(agent_id)
    if row is None:
        raise HTTPException(403, f"agent {agent_id!r} is not enrolled here; enroll it again")
    return row
