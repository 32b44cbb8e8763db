"""The server: the FastAPI app, first-start set-up, and running it on uvicorn with mTLS."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

import vigil
from vigil.server import (
    admin_api,
    agent_api,
    analyst_api,
    evidence_api,
    intel_api,
    playbook_api,
    response_api,
)
from vigil.server.context import ServerConfig, ServerContext
from vigil.server.correlate import flush_periodically
from vigil.server.errors import RequestRefused
from vigil.server.playbook_runner import run_playbooks
from vigil.server.tasks import expire_periodically
from vigil.server.tls import ClientCertH11Protocol
from vigil.server.visibility import watch_agents
from vigil.store.state import DEFAULT_TENANT

log = logging.getLogger(__name__)

ADMIN_TOKEN_FILE = "admin-token"
CLIENT_FILE = "server.json"


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {error.get('msg')}")
    return "; ".join(parts) + ("; ..." if len(exc.errors()) > 5 else "")


def create_app(ctx: ServerContext) -> FastAPI:
    """The ASGI app of one server context."""

    def store_flushed_alert(tenant_id: str, alert: dict[str, Any]) -> None:
        ctx.state.add_alert(tenant_id, alert)
        run_playbooks(ctx, tenant_id, [alert])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx.doorbells.loop = asyncio.get_running_loop()
        background = [
            asyncio.create_task(watch_agents(ctx)),
            asyncio.create_task(flush_periodically(ctx.correlator, store_flushed_alert)),
            asyncio.create_task(intel_api.refresh_periodically(ctx)),
            asyncio.create_task(expire_periodically(ctx)),
        ]
        yield
        for task in background:
            task.cancel()

    app = FastAPI(title="Vigil", version=vigil.__version__, lifespan=lifespan)
    app.state.ctx = ctx
    app.include_router(agent_api.router)
    app.include_router(analyst_api.router)
    app.include_router(intel_api.router)
    app.include_router(evidence_api.router)
    app.include_router(admin_api.router)
    app.include_router(response_api.router)
    app.include_router(playbook_api.router)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = _validation_message(exc)
        log.warning("refused %s %s: %s", request.method, request.url.path, message)
        # A refused read changes nothing, so only a refused write says so.
        tail = "" if request.method in ("GET", "HEAD") else "; nothing was stored"
        detail = f"invalid request: {message}{tail}"
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(RequestRefused)
    async def refused(request: Request, exc: RequestRefused) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": str(exc), **exc.details()})

    return app


def ensure_admin(ctx: ServerContext) -> Path:
    """Make the first admin's API token on first start; return the file that holds it."""
    path = ctx.config.data_dir / ADMIN_TOKEN_FILE
    if not path.exists():
        token = ctx.state.create_api_token(DEFAULT_TENANT, "admin", "admin")
        path.write_text(token + "\n")
        os.chmod(path, 0o600)
        log.info("created the admin API token in %s", path)
    (ctx.config.data_dir / CLIENT_FILE).write_text(
        json.dumps({"url": ctx.config.url, "ca": str(ctx.authority.ca_path)}, indent=2) + "\n"
    )
    return path


def build_server(config: ServerConfig) -> tuple[ServerContext, uvicorn.Server]:
    """Open the data directory, issue the TLS certificate and make the uvicorn server."""
    ctx = ServerContext.open(config)
    ctx.authority.issue_server_cert([config.host, *config.server_names])
    ensure_admin(ctx)
    uv_config = uvicorn.Config(
        create_app(ctx),
        host=config.host,
        port=config.port,
        http=ClientCertH11Protocol,
        ssl_keyfile=str(ctx.authority.server_key_path),
        ssl_certfile=str(ctx.authority.server_cert_path),
        ssl_ca_certs=str(ctx.authority.ca_path),
        ssl_cert_reqs=ssl.CERT_OPTIONAL,
        log_level="warning",
        lifespan="on",
        # Agents hold long polls open; shutdown must not wait on them.
        timeout_graceful_shutdown=3,
    )
    return ctx, uvicorn.Server(uv_config)
