"""Playbook endpoints: list, add or replace (YAML or JSON), remove, and what playbooks did.

A playbook is sent as the body itself: YAML with ``Content-Type: application/yaml`` (or any
type not JSON), JSON with ``application/json``. A playbook that is not valid is refused with
422 and a message naming each wrong field; nothing is stored then.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from vigil.server import auth
from vigil.server.auth import Analyst
from vigil.server.context import ServerContext
from vigil.server.errors import PlaybookError
from vigil.server.playbooks import parse_playbook

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/playbooks", tags=["playbooks"])

MAX_PLAYBOOK_BYTES = 256 * 1024

_BODY = {
    "requestBody": {
        "required": True,
        "description": "the playbook, as YAML or as JSON (see docs/response.md, Playbooks)",
        "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
}


@dataclass(frozen=True)
class Document:
    """A playbook as uploaded: its text and whether it is JSON or YAML."""

    text: str
    syntax: Literal["yaml", "json"]


async def document(request: Request) -> Document:
    """The request body as a playbook document, or 413/422."""
    body = await request.body()
    if len(body) > MAX_PLAYBOOK_BYTES:
        raise HTTPException(413, f"playbook larger than {MAX_PLAYBOOK_BYTES} bytes")
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        raise HTTPException(422, f"playbook is not UTF-8 text: {exc}") from exc
    if not text.strip():
        raise HTTPException(422, "empty body: send the playbook as YAML or JSON")
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return Document(text, "json" if media.endswith("json") else "yaml")


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    return {
        **row["definition"],
        "source": row["source"],
        "created": row["created"],
        "updated": row["updated"],
    }


def _store(
    ctx: ServerContext, analyst: Analyst, doc: Document, name: str | None = None
) -> dict[str, Any]:
    try:
        book = parse_playbook(doc.text, doc.syntax)
    except PlaybookError as exc:
        log.warning("refused a playbook from %s: %s", analyst.name, exc)
        raise HTTPException(422, f"{exc}; nothing was stored") from exc
    if name is not None and book.name != name:
        raise HTTPException(
            422, f"name: the playbook is named {book.name!r}, not {name!r} as in the URL"
        )
    created = ctx.state.put_playbook(
        analyst.tenant_id, book.name, book.model_dump(mode="json"), doc.text
    )
    ctx.state.audit(
        analyst.tenant_id,
        analyst.name,
        "playbook.put",
        book.name,
        {"mode": book.mode, "enabled": book.enabled, "definition": book.model_dump(mode="json")},
        "created" if created else "replaced",
    )
    log.info(
        "playbook %s %s by %s (%s)",
        book.name,
        "created" if created else "replaced",
        analyst.name,
        book.mode,
    )
    row = ctx.state.playbook(analyst.tenant_id, book.name)
    assert row is not None
    return {**_shown(row), "created_now": created}


@router.get("")
def playbooks(
    analyst: Analyst = Depends(auth.analyst), ctx: ServerContext = Depends(auth.server)
) -> list[dict[str, Any]]:
    """Every playbook of the tenant, by name."""
    return [_shown(row) for row in ctx.state.playbooks(analyst.tenant_id)]


@router.post("", openapi_extra=_BODY)
def add_playbook(
    analyst: Analyst = Depends(auth.analyst),
    ctx: ServerContext = Depends(auth.server),
    doc: Document = Depends(document),
) -> dict[str, Any]:
    """Add a playbook, or replace the one of the same name."""
    return _store(ctx, analyst, doc)


@router.get("/runs")
def runs(
    playbook: str | None = Query(None, description="only this playbook's runs"),
    limit: int = Query(200, ge=1, le=10_000),
    analyst: Analyst = Depends(auth.analyst),
    ctx: ServerContext = Depends(auth.server),
) -> list[dict[str, Any]]:
    """What playbooks did or would have done, newest first."""
    return ctx.state.playbook_runs(analyst.tenant_id, playbook, limit)


@router.get("/{name}")
def playbook(
    name: str,
    analyst: Analyst = Depends(auth.analyst),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    """One playbook, with the text it was added as."""
    row = ctx.state.playbook(analyst.tenant_id, name)
    if row is None:
        raise HTTPException(404, f"no playbook {name!r}; see 'vigil playbooks list'")
    return _shown(row)


@router.put("/{name}", openapi_extra=_BODY)
def put_playbook(
    name: str,
    analyst: Analyst = Depends(auth.analyst),
    ctx: ServerContext = Depends(auth.server),
    doc: Document = Depends(document),
) -> dict[str, Any]:
    """Add or replace the playbook ``name``; the document must carry the same name."""
    return _store(ctx, analyst, doc, name)


@router.delete("/{name}")
def remove_playbook(
    name: str,
    analyst: Analyst = Depends(auth.analyst),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    """Remove a playbook; its past runs are kept."""
    if not ctx.state.delete_playbook(analyst.tenant_id, name):
        raise HTTPException(404, f"no playbook {name!r}; see 'vigil playbooks list'")
    ctx.state.audit(analyst.tenant_id, analyst.name, "playbook.delete", name, {}, "ok")
    log.info("playbook %s removed by %s", name, analyst.name)
    return {"name": name, "removed": True}
