"""Threat-intelligence endpoints: import feeds, look back over history, allow-list values.

A feed is uploaded as its files (a MISP feed is a folder: the manifest and its events), or
named by URL for TAXII. What an import adds is at once matched on every new event, and run back
over the stored telemetry of every tenant (a retro-hunt): past sightings become alerts marked
``retro_hunt``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from vigil.hunt.errors import HuntError
from vigil.hunt.sql import run_hunt
from vigil.intel import (
    AllowList,
    ImportReport,
    Indicator,
    IntelError,
    import_feed,
    intel_alert,
    retro_hunt,
)
from vigil.server import auth
from vigil.server.auth import Analyst
from vigil.server.context import ServerContext

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/intel", tags=["intel"])

MAX_FEED_BYTES = 200 * 2**20
REFRESH_CHECK_SECONDS = 60.0


class FeedUpload(BaseModel):
    kind: str = Field(description="stix, taxii, misp, csv or list")
    source: str | None = Field(default=None, max_length=200)
    files: dict[str, str] = Field(default_factory=dict, description="relative path -> text")
    url: str | None = Field(default=None, max_length=2000, description="for taxii")
    options: dict[str, Any] = Field(default_factory=dict)


class Subscription(BaseModel):
    kind: str = Field(description="stix, taxii, misp, csv or list")
    url: str = Field(pattern="^https?://", max_length=2000)
    source: str = Field(min_length=1, max_length=200)
    every_seconds: float = Field(default=3600, ge=60, le=30 * 24 * 3600)


class AllowRequest(BaseModel):
    value: str = Field(min_length=1, max_length=2000)
    kind: str | None = None
    reason: str = Field(default="", max_length=2000)


def _write_feed(folder: Path, files: dict[str, str]) -> Path:
    """Lay the uploaded files out under ``folder``; return what to import (file or folder)."""
    if sum(len(text) for text in files.values()) > MAX_FEED_BYTES:
        raise HTTPException(413, f"feed larger than {MAX_FEED_BYTES} bytes; split it")
    for name, text in files.items():
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise HTTPException(400, f"feed file name {name!r} must be a relative path")
        target = folder.joinpath(*relative.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    if len(files) == 1:
        return folder.joinpath(*PurePosixPath(next(iter(files))).parts)
    return folder


def apply_import(ctx: ServerContext, report: ImportReport) -> int:
    """Match what an import brought from now on, and look for it in history."""
    ctx.reload_intel()
    return retro_hunt_all(ctx, report.added)


def refresh_due(ctx: ServerContext, now: float | None = None) -> list[str]:
    """Re-import every subscribed feed whose interval has passed; return their names."""
    now = time.time() if now is None else now
    refreshed = []
    for feed in ctx.intel.subscriptions():
        if feed["last_run"] is not None and now - feed["last_run"] < feed["every_seconds"]:
            continue
        try:
            report = import_feed(ctx.intel, feed["url"], feed["kind"], feed["source"])
        except IntelError as exc:
            log.warning("refreshing feed %s failed: %s", feed["source"], exc)
            ctx.intel.record_run(feed["source"], now, f"failed: {exc}")
            continue
        retro = apply_import(ctx, report)
        counts = ", ".join(f"{k} {v}" for k, v in report.counts().items())
        ctx.intel.record_run(feed["source"], now, f"{counts}; {retro} retro-hunt alerts")
        refreshed.append(feed["source"])
    return refreshed


async def refresh_periodically(ctx: ServerContext) -> None:
    """Keep subscribed feeds fresh for as long as the server runs."""
    while True:
        await asyncio.sleep(REFRESH_CHECK_SECONDS)
        try:
            await asyncio.to_thread(refresh_due, ctx)
        except Exception:  # the loop must outlive one bad round
            log.exception("refreshing intelligence feeds failed")


def retro_hunt_all(ctx: ServerContext, indicators: list[Indicator]) -> int:
    """Run new indicators back over every tenant's telemetry; alert on past sightings."""
    hunt = retro_hunt(indicators, allow=AllowList(ctx.intel.allow_list()))
    if not hunt.sql:
        return 0
    raised = 0
    for tenant_id in ctx.state.tenant_ids():
        try:
            rows = run_hunt(ctx.telemetry, tenant_id, hunt.sql)["rows"]
        except HuntError as exc:
            log.warning("retro-hunt failed for tenant %s: %s", tenant_id, exc)
            continue
        for flat, hits in hunt.confirm(rows):
            alert = intel_alert(hits, flat, str(flat.get("host.name") or ""))
            alert["rule"]["retro_hunt"] = True
            ctx.state.add_alert(tenant_id, alert)
            raised += 1
    log.info("retro-hunt over stored telemetry raised %d alerts", raised)
    return raised


@router.post("/import")
def import_intel(
    upload: FeedUpload,
    analyst: Analyst = Depends(auth.intel_writer),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    """Import a feed, match it from now on, and retro-hunt what it adds."""
    if not upload.files and not upload.url:
        raise HTTPException(400, "give the feed's files, or a url for taxii")
    with tempfile.TemporaryDirectory(prefix="vigil-feed-") as folder:
        target = upload.url or _write_feed(Path(folder), upload.files)
        try:
            report = import_feed(ctx.intel, target, upload.kind, upload.source, **upload.options)
        except IntelError as exc:
            # The uploaded files are named as the analyst sent them, not by the server's copy.
            raise HTTPException(422, str(exc).replace(folder + os.sep, "")) from exc
    ctx.reload_intel()
    retro = retro_hunt_all(ctx, report.added)
    ctx.state.audit(
        analyst.tenant_id,
        analyst.name,
        "intel.import",
        report.source,
        {"kind": upload.kind, "counts": report.counts()},
        "ok",
    )
    return {
        "source": report.source,
        "counts": report.counts(),
        "retro_hunt_alerts": retro,
        "skipped": [
            {"item": s.item, "reason": s.reason, "detail": s.detail} for s in report.skipped[:100]
        ],
    }


@router.get("/indicators")
def indicators(
    analyst: Analyst = Depends(auth.analyst), ctx: ServerContext = Depends(auth.server)
) -> dict[str, Any]:
    """How many indicators are stored, per type, and the allow-list."""
    return {
        "counts": ctx.intel.count(),
        "sources": ctx.intel.count_by_source(),
        "allow": [
            {"type": str(e.type), "value": e.value, "reason": e.reason}
            for e in ctx.intel.allow_list()
        ],
    }


@router.post("/subscriptions")
def subscribe(
    feed: Subscription,
    analyst: Analyst = Depends(auth.intel_writer),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    """Import a feed by URL now and again every ``every_seconds``."""
    ctx.intel.subscribe(feed.source, feed.kind, feed.url, feed.every_seconds)
    ctx.state.audit(
        analyst.tenant_id, analyst.name, "intel.subscribe", feed.source, feed.model_dump(), "ok"
    )
    refresh_due(ctx)
    found = next(f for f in ctx.intel.subscriptions() if f["source"] == feed.source)
    return found


@router.get("/subscriptions")
def subscriptions(
    analyst: Analyst = Depends(auth.analyst), ctx: ServerContext = Depends(auth.server)
) -> list[dict[str, Any]]:
    return ctx.intel.subscriptions()


@router.post("/allow")
def allow(
    request: AllowRequest,
    analyst: Analyst = Depends(auth.intel_writer),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    """Never alert on this value again (hash, address, network, domain and its subdomains)."""
    try:
        entry = ctx.intel.allow(request.value, request.kind, request.reason)
    except IntelError as exc:
        raise HTTPException(422, str(exc)) from exc
    ctx.reload_intel()
    ctx.state.audit(
        analyst.tenant_id,
        analyst.name,
        "intel.allow",
        entry.value,
        {"reason": request.reason},
        "ok",
    )
    return {"type": str(entry.type), "value": entry.value, "reason": entry.reason}


class DisallowRequest(BaseModel):
    value: str = Field(min_length=1, max_length=2000)
    kind: str | None = None


@router.post("/disallow")
def disallow(
    request: DisallowRequest,
    analyst: Analyst = Depends(auth.intel_writer),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    """Take a value off the allow-list: it alerts again from now on."""
    try:
        removed = ctx.intel.disallow(request.value, request.kind)
    except IntelError as exc:
        raise HTTPException(422, str(exc)) from exc
    if not removed:
        raise HTTPException(
            404, f"{request.value!r} is not on the allow-list; see vigil intel list"
        )
    ctx.reload_intel()
    ctx.state.audit(analyst.tenant_id, analyst.name, "intel.disallow", request.value, {}, "ok")
    return {"removed": request.value}


@router.delete("/sources/{source}")
def remove_source(
    source: str,
    analyst: Analyst = Depends(auth.intel_writer),
    ctx: ServerContext = Depends(auth.server),
) -> dict[str, Any]:
    """Drop every indicator of one feed; its alerts already raised stay."""
    removed = ctx.intel.remove_source(source)
    if not removed:
        raise HTTPException(
            404, f"no indicators from a feed named {source!r}; see vigil intel list"
        )
    ctx.reload_intel()
    ctx.state.audit(
        analyst.tenant_id, analyst.name, "intel.remove", source, {"indicators": removed}, "ok"
    )
    return {"source": source, "removed": removed}
