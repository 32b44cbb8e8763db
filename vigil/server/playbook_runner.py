"""Running a tenant's playbooks on its new alerts: record, audit, and dispatch their actions.

Ingest calls :func:`run_playbooks` after it has stored a batch's alerts. For each enabled
playbook whose conditions an alert meets, a run is claimed against the playbook's per-host
limit, the parameters of every action are resolved from the alert's event, an audit record is
written, and only then is each action dispatched through :func:`dispatch`: in ``dry_run`` mode
that records what would have been queued; in ``enforce`` mode it queues a signed task with
``queue_task``, asked for by ``playbook:<name>``.

Nothing here raises into ingest: a failure is logged and stored as the run's outcome.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from vigil.server import guardrails
from vigil.server.auth import Analyst
from vigil.server.context import ServerContext
from vigil.server.errors import PlaceholderError
from vigil.server.playbooks import LEVELS, Playbook, matches, resolve_params
from vigil.server.tasks import queue_task

log = logging.getLogger(__name__)

HOUR = 3600.0
# Guardrails judge a playbook as a responder: every response action, within the tenant policy.
PLAYBOOK_ROLE = "responder"


@dataclass(frozen=True)
class ActionRequest:
    """One action a playbook run asks for, with everything a check before dispatch may need."""

    tenant_id: str
    playbook: str
    mode: str
    host: dict[str, Any]
    alert: dict[str, Any]
    action: str
    params: dict[str, Any]
    reason: str

    @property
    def requested_by(self) -> str:
        """Who the task is asked for by, in the task and the audit trail."""
        return f"playbook:{self.playbook}"


def dispatch(ctx: ServerContext, request: ActionRequest) -> dict[str, Any]:
    """The one way a playbook's action reaches a host; returns the action's outcome.

    The outcome is ``{action, params, outcome, task_id, message}`` with ``outcome`` one of
    ``would_run`` (dry run), ``queued``, ``refused`` (a guardrail said no) or ``failed``.
    The tenant's guardrails judge a playbook like an analyst with the responder role, and a
    dry run shows their verdict too: a destructive action on a critical host waits for a human.
    """
    outcome: dict[str, Any] = {
        "action": request.action,
        "params": request.params,
        "outcome": "would_run",
        "task_id": None,
        "message": "",
    }
    analyst = Analyst(request.tenant_id, request.requested_by, PLAYBOOK_ROLE)
    verdict = guardrails.evaluate(
        ctx, analyst, request.host["id"], request.action, params=request.params
    )
    if verdict.outcome == "refuse":
        # Audited as an analyst's refused request is, dry run or not.
        ctx.state.audit(
            request.tenant_id,
            request.requested_by,
            f"task.{request.action}",
            request.host["id"],
            {
                "params": request.params,
                "mode": request.mode,
                "guardrail": verdict.guardrail,
                "message": verdict.message,
            },
            f"refused: {verdict.guardrail}",
        )
        return {
            **outcome,
            "outcome": "refused",
            "message": f"refused by guardrail {verdict.guardrail!r}: {verdict.message}",
        }
    if verdict.outcome == "needs_approval":
        outcome["message"] = f"held for approval: {verdict.message}"
    if request.mode != "enforce":
        return outcome

    try:
        task = queue_task(
            ctx, analyst, request.host["id"], request.action, request.params, request.reason
        )
    except Exception as exc:  # one action failing must not stop the others, nor ingest
        log.warning(
            "playbook %s could not queue %s on %s: %s",
            request.playbook,
            request.action,
            request.host["hostname"],
            exc,
        )
        log.debug("queueing a playbook action failed", exc_info=True)
        return {**outcome, "outcome": "failed", "message": f"not queued: {exc}"}
    return {**outcome, "outcome": "queued", "task_id": task["id"]}


def host_tags(host: dict[str, Any]) -> list[str]:
    """A host's tags from its agent row; a missing or unreadable column means no tags."""
    raw = host.get("tags")
    if not raw:
        return []
    try:
        tags = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return [t.strip() for t in str(raw).split(",") if t.strip()]
    return [str(t) for t in tags] if isinstance(tags, list) else []


def enabled_playbooks(ctx: ServerContext, tenant_id: str) -> list[Playbook]:
    """The tenant's enabled playbooks; one that no longer validates is skipped with a warning."""
    books = []
    for row in ctx.state.playbooks(tenant_id):
        try:
            book = Playbook.model_validate(row["definition"])
        except ValidationError as exc:
            log.warning("playbook %s of tenant %s skipped: %s", row["name"], tenant_id, exc)
            continue
        if book.enabled:
            books.append(book)
    return books


def run_playbooks(
    ctx: ServerContext,
    tenant_id: str,
    alerts: Sequence[dict[str, Any]],
    host: dict[str, Any] | None = None,
) -> None:
    """Run the tenant's enabled playbooks on alerts just stored; never raises.

    Args:
        ctx: The server.
        tenant_id: The tenant the alerts belong to.
        alerts: The new alerts, as stored.
        host: The agent row of the host the alerts are on, when the caller has it (ingest);
            otherwise each alert's host is looked up.
    """
    if not alerts:
        return
    try:
        books = enabled_playbooks(ctx, tenant_id)
    except Exception:
        log.exception("could not load the playbooks of tenant %s; none ran", tenant_id)
        return
    if not books:
        return
    for group in _by_event(alerts):
        try:
            target = _alert_host(ctx, tenant_id, group[0], host)
        except Exception:
            log.exception("could not find the host of alert %s; no playbook ran", group[0]["id"])
            continue
        if target is None:
            log.warning(
                "alert %s names no host of tenant %s; no playbook ran", group[0]["id"], tenant_id
            )
            continue
        tags = host_tags(target)
        for book in books:
            try:
                matched = [a for a in group if matches(book, a, tags)]
                if matched:
                    chosen = max(matched, key=_severity)
                    others = [a["id"] for a in matched if a is not chosen]
                    run_playbook(ctx, tenant_id, book, chosen, target, others)
            except Exception as exc:  # recorded and logged; the next playbook still runs
                log.warning("playbook %s on %s failed: %s", book.name, group[0]["id"], exc)
                log.debug("playbook run failed", exc_info=True)


def _by_event(alerts: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The alerts grouped by the event that raised them, in the order they came.

    One event often fires several rules; a playbook answers the event once, not once per rule,
    so a kill is not queued twice for one process.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for alert in alerts:
        event = json.dumps(alert["event"], sort_keys=True, default=str)
        groups.setdefault((str(alert["host"]["id"]), event), []).append(alert)
    return list(groups.values())


def _severity(alert: dict[str, Any]) -> int:
    level = alert["rule"].get("level")
    return LEVELS.index(level) if level in LEVELS else -1


def _alert_host(
    ctx: ServerContext, tenant_id: str, alert: dict[str, Any], known: dict[str, Any] | None
) -> dict[str, Any] | None:
    host_id = alert["host"]["id"]
    if known is not None and known["id"] == host_id:
        return known
    row = ctx.state.agent(host_id) if host_id else None
    return row if row is not None and row["tenant_id"] == tenant_id else None


def run_playbook(
    ctx: ServerContext,
    tenant_id: str,
    book: Playbook,
    alert: dict[str, Any],
    host: dict[str, Any],
    also_matched: Sequence[str] = (),
) -> str:
    """Run one playbook on one alert it matches; return the run's status.

    Args:
        ctx: The server.
        tenant_id: The alert's tenant.
        book: The playbook.
        alert: The alert the run answers, as stored.
        host: The agent row of the alert's host.
        also_matched: Ids of other alerts of the same event that the playbook matched.

    Returns:
        ``dry_run``, ``enforced``, ``rate_limited`` or ``failed``.
    """
    rule = alert["rule"]
    limited = (
        f"not run on host {host['hostname']} because of alert {alert['id']}"
        f" ({rule.get('title')}, {rule.get('level')}): the limit of"
        f" {book.max_runs_per_host_per_hour} runs per host per hour was reached"
    )
    run_id, allowed = ctx.state.claim_playbook_run(
        {
            "tenant_id": tenant_id,
            "playbook": book.name,
            "mode": book.mode,
            "alert_id": alert["id"],
            "rule_title": rule.get("title"),
            "host_id": host["id"],
            "host_name": host["hostname"],
        },
        book.max_runs_per_host_per_hour,
        HOUR,
        limited,
    )
    if not allowed:
        log.info("playbook %s %s", book.name, limited)
        return "rate_limited"
    try:
        return _carry_out(ctx, tenant_id, book, alert, host, run_id, also_matched)
    except Exception as exc:
        ctx.state.finish_playbook_run(run_id, "failed", [], f"the run failed: {exc}")
        raise


def _carry_out(
    ctx: ServerContext,
    tenant_id: str,
    book: Playbook,
    alert: dict[str, Any],
    host: dict[str, Any],
    run_id: str,
    also_matched: Sequence[str],
) -> str:
    """Resolve every action's parameters, audit, dispatch each action, record the outcome."""
    rule = alert["rule"]
    because = f"because alert {alert['id']} ({rule.get('title')}, {rule.get('level')})"
    if also_matched:
        because += f" (the same event also raised {', '.join(also_matched)})"
    actor = f"playbook:{book.name}"
    audit_params: dict[str, Any] = {
        "run_id": run_id,
        "alert_id": alert["id"],
        "rule": rule.get("id"),
        "also_matched": list(also_matched),
    }

    # Every placeholder is resolved before anything is dispatched: all actions or none.
    try:
        steps = [(s.action, resolve_params(s.params, alert["event"])) for s in book.actions]
    except PlaceholderError as exc:
        message = f"nothing run on host {host['hostname']} {because}: {exc}"
        ctx.state.audit(
            tenant_id, actor, f"playbook.{book.mode}", host["id"], audit_params, message
        )
        ctx.state.finish_playbook_run(run_id, "failed", [], message)
        log.warning("playbook %s: %s", book.name, message)
        return "failed"

    # The audit record is written before anything is dispatched.
    names = ", ".join(action for action, _ in steps)
    verb = "would run" if book.mode == "dry_run" else "running"
    message = f"{verb} {names} on host {host['hostname']} {because}"
    audit_params["actions"] = [{"action": a, "params": p} for a, p in steps]
    ctx.state.audit(tenant_id, actor, f"playbook.{book.mode}", host["id"], audit_params, message)

    reason = f"{actor}: alert {alert['id']} ({rule.get('title')}, {rule.get('level')})"
    outcomes = [
        dispatch(ctx, ActionRequest(tenant_id, book.name, book.mode, host, alert, a, p, reason))
        for a, p in steps
    ]
    # Anything but would_run or queued (failed, or a later check's refusal) fails the run.
    failed = [o for o in outcomes if o["outcome"] not in ("would_run", "queued")]
    if failed:
        status = "failed"
        message += "; " + "; ".join(f"{o['action']}: {o['message']}" for o in failed)
    else:
        status = "dry_run" if book.mode == "dry_run" else "enforced"
    ctx.state.finish_playbook_run(run_id, status, outcomes, message)
    log.info("playbook %s (%s): %s", book.name, status, message)
    return status
