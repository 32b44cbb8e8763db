"""Ingest: validate a batch, commit what is new, run detection on it, store the alerts.

Once the batch's alerts are stored, the tenant's playbooks run on them (see
``vigil.server.playbook_runner``); a playbook failure is recorded there and never fails ingest.
"""

from __future__ import annotations

import logging
from typing import Any

from vigil.cases.alerts import build_alert
from vigil.detect.auditd_view import execve_view, is_auditd_rule
from vigil.intel import intel_alert
from vigil.schema.validate import validate_batch
from vigil.schema.wire import BatchAck, EventBatch
from vigil.server.context import ServerContext
from vigil.server.playbook_runner import run_playbooks

log = logging.getLogger(__name__)


def ingest_batch(ctx: ServerContext, agent: dict[str, Any], batch: EventBatch) -> BatchAck:
    """Store a batch from an enrolled agent; raises SchemaError before storing anything bad."""
    flat_events = validate_batch(batch.events)

    # The server, not the agent, says which host and agent an event came from.
    for flat in flat_events:
        flat["host.id"] = agent["id"]
        flat["host.name"] = agent["hostname"]
        flat["agent.id"] = agent["id"]

    fresh, committed = ctx.telemetry.commit_batch(
        agent["tenant_id"], agent["id"], batch.spool_epoch, flat_events
    )
    ctx.state.touch_agent(agent["id"])

    intel = ctx.intel_index
    alerts: list[dict[str, Any]] = []
    for flat in fresh:
        hits = intel.match(flat)
        if hits:
            alert = intel_alert(hits, flat, agent["hostname"])
            ctx.state.add_alert(agent["tenant_id"], alert)
            alerts.append(alert)
            log.info(
                "intel alert %s: %s on %s", alert["id"], alert["rule"]["title"], agent["hostname"]
            )
        fired = ctx.rules.match(flat)
        view = execve_view(flat)
        if view is not None:
            # Only auditd rules: product-only rules have already seen the event itself.
            fired += [r for r in ctx.rules.match(view) if is_auditd_rule(r.logsource)]
        for alert in ctx.correlator.feed(agent["tenant_id"], flat, fired):
            ctx.state.add_alert(agent["tenant_id"], alert)
            alerts.append(alert)
            log.info(
                "correlation alert %s: %s on %s",
                alert["id"],
                alert["rule"]["title"],
                agent["hostname"],
            )
        for rule in fired:
            if not rule.generate:
                continue  # it only feeds correlation rules
            alert = build_alert(rule, flat, agent["hostname"])
            ctx.state.add_alert(agent["tenant_id"], alert)
            alerts.append(alert)
            log.info(
                "alert %s: %s on %s (%s)",
                alert["id"],
                rule.title,
                agent["hostname"],
                ",".join(rule.attack_techniques),
            )
    run_playbooks(ctx, agent["tenant_id"], alerts, agent)
    return BatchAck(
        committed_sequence=committed,
        accepted=len(fresh),
        duplicates=len(flat_events) - len(fresh),
    )
