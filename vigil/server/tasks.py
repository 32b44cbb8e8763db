"""Response tasks: checked by the guardrails, audited, signed, queued and tracked to their outcome.

A task's states:

- ``queued``: signed and waiting for the agent's poll;
- ``pending_approval``: held for a second analyst (not signed, never sent);
- ``delivered``: the agent fetched it;
- ``running``: the agent said it started a long action;
- ``done`` / ``failed``: the agent's outcome (``rejected`` when it refused the envelope);
- ``expired``: past its expiry before any agent answered;
- ``denied``: a second analyst (or the requester) refused it while it waited for approval.

The audit record of every request, refusal, approval and denial is written before anything is
sent to the agent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import uuid
from typing import Any, NoReturn

from vigil.agent.respond import REGISTRY as ACTIONS
from vigil.schema import signing
from vigil.server import guardrails, roles
from vigil.server.auth import Analyst
from vigil.server.context import ServerContext
from vigil.server.errors import Conflict, GuardrailRefused, NotFound

log = logging.getLogger(__name__)

DEFAULT_TTL = 24 * 3600.0
EXPIRE_CHECK_SECONDS = 30.0
TASK_STATES = (
    "queued",
    "pending_approval",
    "delivered",
    "running",
    "done",
    "failed",
    "rejected",
    "expired",
    "denied",
)
# The agent's outcome may land on a task it was sent, even one marked expired meanwhile.
ANSWERABLE = ("queued", "delivered", "running", "expired")


def queue_task(
    ctx: ServerContext,
    analyst: Analyst,
    agent_id: str,
    action: str,
    params: dict[str, Any],
    reason: str,
    ttl: float = DEFAULT_TTL,
    *,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Check the guardrails, write the audit record, then sign the task and wake the agent.

    A destructive action on a ``critical`` host is stored as ``pending_approval`` instead, and
    nothing is signed or sent until another analyst approves it (``approve_task``). With
    ``dry_run``, only the audit record is written and the verdict is returned (``dry_run_task``).

    Raises:
        GuardrailRefused: a guardrail refused; the refusal is audited first.
    """
    if dry_run:
        return dry_run_task(ctx, analyst, agent_id, action, params, reason)
    with guardrails.DISPATCH_LOCK:
        verdict = guardrails.evaluate(ctx, analyst, agent_id, action, params=params)
        if verdict.outcome == "refuse":
            refused = {"params": params, "reason": reason}
            _audit_refusal(ctx, analyst, f"task.{action}", agent_id, refused, verdict)
        task_id = str(uuid.uuid4())
        audit_params = {"task_id": task_id, "params": params, "reason": reason}
        now = time.time()
        task = {
            "id": task_id,
            "tenant_id": analyst.tenant_id,
            "agent_id": agent_id,
            "action": action,
            "params": params,
            "requested_by": analyst.name,
            "reason": reason,
            "created": now,
            "expires": now + ttl,
            "body": None,
            "signature": None,
        }
        if verdict.outcome == "needs_approval":
            ctx.state.audit(
                analyst.tenant_id,
                analyst.name,
                f"task.{action}",
                agent_id,
                {**audit_params, "guardrail": verdict.guardrail},
                "pending_approval",
            )
            message = verdict.message.replace("TASK_ID", task_id)
            ctx.state.add_task({**task, "message": message}, status="pending_approval")
            log.info(
                "%s on %s by %s waits for approval as task %s",
                action,
                agent_id,
                analyst.name,
                task_id,
            )
        else:
            ctx.state.audit(
                analyst.tenant_id, analyst.name, f"task.{action}", agent_id, audit_params, "queued"
            )
            task["body"], task["signature"] = _sign(ctx, task, now)
            ctx.state.add_task(task)
            ctx.doorbells.ring(agent_id)
            log.info(
                "queued %s for agent %s as task %s (by %s)", action, agent_id, task_id, analyst.name
            )
    stored = ctx.state.task(analyst.tenant_id, task_id)
    assert stored is not None
    return stored


def dry_run_task(
    ctx: ServerContext,
    analyst: Analyst,
    agent_id: str,
    action: str,
    params: dict[str, Any],
    reason: str,
) -> dict[str, Any]:
    """What ``queue_task`` would do, audited, with nothing queued."""
    verdict = guardrails.evaluate(ctx, analyst, agent_id, action, params=params)
    would = {
        "allow": "be queued",
        "needs_approval": "wait for a second analyst's approval",
        "refuse": "be refused",
    }
    ctx.state.audit(
        analyst.tenant_id,
        analyst.name,
        f"task.{action}.dry_run",
        agent_id,
        {"params": params, "reason": reason, "verdict": verdict.as_dict()},
        f"dry run: would {would[verdict.outcome]}",
    )
    host = ctx.state.agent(agent_id) or {}
    return {
        "dry_run": True,
        "action": action,
        "agent_id": agent_id,
        "host": host.get("hostname"),
        "params": params,
        "reason": reason,
        "requested_by": analyst.name,
        "verdict": verdict.as_dict(),
        "would": would[verdict.outcome],
    }


def approve_task(
    ctx: ServerContext, approver: Analyst, task_id: str, reason: str
) -> dict[str, Any]:
    """A second analyst's approval: audited, then the task is signed and sent.

    Raises:
        NotFound: no such task in the approver's tenant.
        Conflict: the task does not wait for approval (any more).
        GuardrailRefused: the approver asked for it, may not run it, or the tenant's policy
            refuses it now; audited first.
    """
    with guardrails.DISPATCH_LOCK:
        row = _pending(ctx, approver, task_id, "approve")
        target, action = row["agent_id"], row["action"]
        audit_params = {"task_id": task_id, "reason": reason, "requested_by": row["requested_by"]}
        if approver.name == row["requested_by"]:
            verdict = guardrails.Verdict(
                "refuse",
                "two_person",
                f"{approver.name!r} asked for task {task_id} and cannot also approve it; "
                f"another analyst, whose role may run {action}, must approve it",
            )
        else:
            verdict = guardrails.evaluate(ctx, approver, target, action, approved=True)
        if verdict.outcome != "allow":
            _audit_refusal(ctx, approver, f"task.{action}.approve", target, audit_params, verdict)
        ctx.state.audit(
            approver.tenant_id,
            approver.name,
            f"task.{action}.approve",
            target,
            audit_params,
            "approved",
        )
        now = time.time()
        task = {**row, "params": _params(row)}
        signed = _sign(ctx, task, now)
        message = f"approved by {approver.name}"
        if not ctx.state.decide_task(task_id, "queued", approver.name, reason, message, signed):
            raise Conflict(f"task {task_id} was decided meanwhile; see 'vigil tasks show'")
        ctx.doorbells.ring(target)
        log.info("task %s (%s) approved by %s and queued", task_id, action, approver.name)
    found = ctx.state.task(approver.tenant_id, task_id)
    assert found is not None
    return found


def deny_task(ctx: ServerContext, analyst: Analyst, task_id: str, reason: str) -> dict[str, Any]:
    """Refuse a task that waits for approval; the requester may withdraw their own.

    Raises:
        NotFound, Conflict: as for ``approve_task``.
        GuardrailRefused: the caller is neither the requester nor allowed to run the action.
    """
    with guardrails.DISPATCH_LOCK:
        row = _pending(ctx, analyst, task_id, "deny")
        action = row["action"]
        audit_params = {"task_id": task_id, "reason": reason, "requested_by": row["requested_by"]}
        why = roles.may_run(analyst.role, ACTIONS[action])
        if analyst.name != row["requested_by"] and why:
            verdict = guardrails.Verdict("refuse", "role", why)
            _audit_refusal(
                ctx, analyst, f"task.{action}.deny", row["agent_id"], audit_params, verdict
            )
        ctx.state.audit(
            analyst.tenant_id,
            analyst.name,
            f"task.{action}.deny",
            row["agent_id"],
            audit_params,
            "denied",
        )
        if not ctx.state.decide_task(
            task_id, "denied", analyst.name, reason, f"denied by {analyst.name}"
        ):
            raise Conflict(f"task {task_id} was decided meanwhile; see 'vigil tasks show'")
    found = ctx.state.task(analyst.tenant_id, task_id)
    assert found is not None
    return found


def _pending(ctx: ServerContext, analyst: Analyst, task_id: str, verb: str) -> dict[str, Any]:
    expire_due(ctx, analyst.tenant_id)
    row = ctx.state.task_row(analyst.tenant_id, task_id)
    if row is None:
        raise NotFound(f"no task {task_id!r}; see 'vigil tasks list'")
    if row["status"] != "pending_approval":
        raise Conflict(
            f"task {task_id} is {row['status']}, not pending_approval: only a task waiting for "
            f"approval can be {'approved' if verb == 'approve' else 'denied'}"
            + ("; ask for the action again" if row["status"] == "expired" else "")
        )
    return row


def _audit_refusal(
    ctx: ServerContext,
    analyst: Analyst,
    audit_action: str,
    target: str,
    params: dict[str, Any],
    verdict: guardrails.Verdict,
) -> NoReturn:
    """Audit a refusal and raise it."""
    ctx.state.audit(
        analyst.tenant_id,
        analyst.name,
        audit_action,
        target,
        {**params, "guardrail": verdict.guardrail, "message": verdict.message},
        f"refused: {verdict.guardrail}",
    )
    log.warning("refused %s on %s for %s: %s", audit_action, target, analyst.name, verdict.message)
    raise GuardrailRefused(verdict.guardrail, verdict.message)


def _params(row: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = json.loads(row["params"])
    return params


def _sign(ctx: ServerContext, task: dict[str, Any], now: float) -> tuple[str, str]:
    body = {
        "task_id": task["id"],
        "tenant_id": task["tenant_id"],
        "agent_id": task["agent_id"],
        "action": task["action"],
        "params": task["params"],
        "nonce": secrets.token_hex(16),
        "issued_at": now,
        "expires_at": task["expires"],
    }
    return signing.sign(ctx.authority.task_key, body)


def record_result(
    ctx: ServerContext,
    agent: dict[str, Any],
    task_id: str,
    status: str,
    result: dict[str, Any],
    message: str,
) -> dict[str, Any] | None:
    """Store what the agent reported for one of its tasks, and its effect on the host's state.

    ``running`` only moves a task forward (from queued or delivered); a late ``running`` after
    the outcome changes nothing.
    """
    task = ctx.state.task_for_agent(agent["id"], task_id)
    if task is None:
        return None
    only_from = ("queued", "delivered") if status == "running" else ANSWERABLE
    if not ctx.state.set_task_status(task_id, status, result, message, only_from=only_from):
        log.info("task %s is %s; ignored the agent's %s", task_id, task["status"], status)
        return task
    if status == "done" and task["action"] in ("isolate", "release"):
        # The agent says whether the host is isolated now (a dry run leaves it as it was).
        ctx.state.set_isolated(
            agent["id"], bool(result.get("isolated", task["action"] == "isolate"))
        )
    ctx.state.audit(
        agent["tenant_id"],
        f"agent:{agent['id']}",
        f"task.{task['action']}.{'progress' if status == 'running' else 'result'}",
        agent["id"],
        {"task_id": task_id, "result": result, "message": message},
        status,
    )
    log.info(
        "task %s (%s) on %s: %s %s", task_id, task["action"], agent["hostname"], status, message
    )
    return ctx.state.task_for_agent(agent["id"], task_id)


def expire_due(ctx: ServerContext, tenant_id: str | None = None) -> int:
    """Mark tasks past their expiry that no agent answered as expired, and audit each."""
    expired = ctx.state.expire_tasks(tenant_id)
    for row in expired:
        ctx.state.audit(
            row["tenant_id"],
            "server",
            f"task.{row['action']}.expire",
            row["agent_id"],
            {"task_id": row["id"], "was": row["status"]},
            "expired",
        )
        log.info("task %s (%s) expired while %s", row["id"], row["action"], row["status"])
    return len(expired)


async def expire_periodically(ctx: ServerContext) -> None:
    """Run ``expire_due`` for as long as the server runs."""
    while True:
        await asyncio.sleep(EXPIRE_CHECK_SECONDS)
        try:
            await asyncio.to_thread(expire_due, ctx)
        except Exception:  # the loop must outlive one bad round
            log.exception("expiring tasks failed")
