"""The server's watch over its agents: sensor and loss changes, and agents that fall silent."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from vigil.cases.visibility import HEARTBEAT_MISSING, heartbeat_changes, visibility_alert
from vigil.schema.ecs import iso_epoch
from vigil.server.context import ServerContext

log = logging.getLogger(__name__)

CHECK_SECONDS = 15.0


def on_heartbeat(ctx: ServerContext, agent: dict[str, Any], beat: dict[str, Any]) -> None:
    """Record a heartbeat, raising alerts for what got worse since the previous one."""
    previous = json.loads(agent.get("health") or "{}")
    if not beat.get("stopping"):
        for alert in heartbeat_changes(agent, previous, beat):
            ctx.state.add_alert(agent["tenant_id"], alert)
            log.warning(
                "visibility alert on %s: %s %s",
                agent["hostname"],
                alert["rule"]["title"],
                alert["event"]["vigil"]["visibility"],
            )
    ctx.state.record_heartbeat(agent["id"], beat, bool(beat.get("isolated")))


def flag_silent_agents(ctx: ServerContext) -> int:
    """Alert once for each agent whose heartbeats stopped; it re-arms when they resume."""
    cutoff = time.time() - ctx.config.heartbeat_timeout
    silent = ctx.state.newly_silent_agents(cutoff)
    for agent in silent:
        last = json.loads(agent.get("health") or "{}")
        details = {
            "last_seen": iso_epoch(agent["last_seen"]),
            "said_it_was_stopping": bool(last.get("stopping")),
            "timeout_seconds": ctx.config.heartbeat_timeout,
        }
        ctx.state.add_alert(agent["tenant_id"], visibility_alert(HEARTBEAT_MISSING, agent, details))
        log.warning("agent %s (%s) stopped reporting", agent["id"], agent["hostname"])
    return len(silent)


async def watch_agents(ctx: ServerContext) -> None:
    """Run ``flag_silent_agents`` for as long as the server runs."""
    while True:
        await asyncio.sleep(min(CHECK_SECONDS, ctx.config.heartbeat_timeout / 2))
        try:
            await asyncio.to_thread(flag_silent_agents, ctx)
        except Exception:  # the watch must outlive one bad round
            log.exception("checking for silent agents failed")
