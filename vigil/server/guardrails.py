"""Response guardrails: who may ask for an action, what a tenant allows, and what needs a second
analyst.

Every response task passes ``evaluate`` before it is queued, in this order:

1. ``role``: the requester's role holds the action's permission (and may run destructive
   actions, if the action is one); see ``vigil.server.roles``.
2. ``allowed_actions``: the tenant's policy allows the action.
3. ``run_command``: ``run_command`` is off unless the tenant turned it on.
4. ``isolate_cap``: isolating one more host stays within the tenant's cap of distinct hosts
   isolated per rolling hour.
5. ``critical_approval``: a destructive action on a host tagged ``critical`` waits for a second
   analyst's approval (when the tenant's policy says so, the default).

The first four refuse; the fifth holds the task back. ``queue_task`` (``vigil.server.tasks``)
runs the checks and the queueing under ``DISPATCH_LOCK`` so two requests cannot both take the
last isolation slot. Playbooks call ``evaluate`` to learn the verdict without queuing anything.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from vigil.agent.respond import REGISTRY as ACTIONS
from vigil.schema.ecs import iso_epoch
from vigil.server import roles
from vigil.server.errors import RequestRefused

if TYPE_CHECKING:
    from vigil.server.auth import Analyst
    from vigil.server.context import ServerContext

DEFAULT_ISOLATE_CAP = 10
MAX_ISOLATE_CAP = 100_000
ISOLATE_WINDOW_SECONDS = 3600.0
CRITICAL_TAG = "critical"
RUN_COMMAND = "run_command"
# Isolations that count against the cap: asked for and not refused, denied or expired.
COUNTED_STATUSES = ("queued", "pending_approval", "delivered", "running", "done")

# Held while a task is checked and stored, so the isolation cap cannot be raced past.
DISPATCH_LOCK = threading.RLock()

Outcome = Literal["allow", "needs_approval", "refuse"]


class PolicyError(RequestRefused):
    """A policy change that cannot be stored as asked (answered with 422)."""

    status = 422


@dataclass(frozen=True)
class ResponsePolicy:
    """A tenant's response guardrails.

    Attributes:
        allowed_actions: the actions the tenant allows, or None for every action the agent has.
        run_command: whether ``run_command`` may be asked for at all (off by default).
        isolate_cap_per_hour: how many distinct hosts may be isolated in any rolling hour.
        critical_needs_approval: whether destructive actions on ``critical`` hosts need a second
            analyst's approval.
    """

    allowed_actions: tuple[str, ...] | None = None
    run_command: bool = False
    isolate_cap_per_hour: int = DEFAULT_ISOLATE_CAP
    critical_needs_approval: bool = True

    def effective_actions(self) -> list[str]:
        """The actions a task may name under this policy."""
        listed = set(self.allowed_actions) if self.allowed_actions is not None else set(ACTIONS)
        if not self.run_command:
            listed.discard(RUN_COMMAND)
        return sorted(listed & set(ACTIONS))

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["allowed_actions"] = (
            list(self.allowed_actions) if self.allowed_actions is not None else None
        )
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResponsePolicy:
        allowed = data.get("allowed_actions")
        return cls(
            allowed_actions=tuple(allowed) if allowed is not None else None,
            run_command=bool(data.get("run_command", False)),
            isolate_cap_per_hour=int(data.get("isolate_cap_per_hour", DEFAULT_ISOLATE_CAP)),
            critical_needs_approval=bool(data.get("critical_needs_approval", True)),
        )

    def changed(self, **changes: Any) -> ResponsePolicy:
        """This policy with some fields changed, checked; raises PolicyError saying what is off."""
        allowed = changes.get("allowed_actions", self.allowed_actions)
        if allowed is not None:
            unknown = sorted(set(allowed) - set(ACTIONS))
            if unknown:
                raise PolicyError(
                    f"no action {', '.join(map(repr, unknown))}; "
                    f"actions are: {', '.join(sorted(ACTIONS))}"
                )
            changes["allowed_actions"] = tuple(sorted(set(allowed)))
        updated = replace(self, **changes)
        if (
            updated.allowed_actions is not None
            and RUN_COMMAND in updated.allowed_actions
            and not updated.run_command
        ):
            raise PolicyError(
                "run_command is listed in the allowed actions but run_command is off: "
                "turn it on too ('vigil policy set --run-command on')"
            )
        if not 1 <= updated.isolate_cap_per_hour <= MAX_ISOLATE_CAP:
            raise PolicyError(f"the isolation cap must be between 1 and {MAX_ISOLATE_CAP} hosts")
        return updated


def load_policy(ctx: ServerContext, tenant_id: str) -> ResponsePolicy:
    """The tenant's policy, or the defaults when it never set one."""
    stored = ctx.state.response_policy(tenant_id)
    return ResponsePolicy.from_dict(stored) if stored else ResponsePolicy()


@dataclass(frozen=True)
class Verdict:
    """What the guardrails say about one task.

    Attributes:
        outcome: ``allow`` (queue it), ``needs_approval`` (hold it for a second analyst) or
            ``refuse``.
        guardrail: the guardrail that decided, or ``""`` when none objected.
        message: for a refusal or a hold, why and what to do.
    """

    outcome: Outcome
    guardrail: str = ""
    message: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


ALLOW = Verdict("allow")


def evaluate(
    ctx: ServerContext,
    requester: Analyst,
    agent_id: str,
    action: str,
    *,
    params: Mapping[str, Any] | None = None,
    approved: bool = False,
    now: float | None = None,
) -> Verdict:
    """Run the guardrails for one task; nothing is stored.

    An agent-side dry run (``params["dry_run"]`` true: isolate lists what it would cut) changes
    nothing on the host, so it needs no second analyst and takes no slot of the isolation cap;
    the role and the tenant's allowed actions still apply.

    Args:
        ctx: the server.
        requester: who asks (for an approval: the approver, whose role is then checked).
        agent_id: the host, already known to be in the requester's tenant.
        action: the action's registered name.
        params: the task's parameters.
        approved: a second analyst has approved, so ``critical_approval`` is satisfied.
        now: the moment to judge the isolation cap at (default: now).
    """
    action_cls = ACTIONS.get(action)
    if action_cls is None:
        return Verdict(
            "refuse", "allowed_actions", f"no action {action!r}; one of: {', '.join(ACTIONS)}"
        )
    why = roles.may_run(requester.role, action_cls)
    if why:
        return Verdict("refuse", "role", why)

    policy = load_policy(ctx, requester.tenant_id)
    if action == RUN_COMMAND and not policy.run_command:
        return Verdict(
            "refuse",
            "run_command",
            f"run_command is off for tenant {requester.tenant_id!r}; an admin turns it on with "
            "'vigil policy set --run-command on' (the host's agent policy must allow it too)",
        )
    if action not in policy.effective_actions():
        return Verdict(
            "refuse",
            "allowed_actions",
            f"tenant {requester.tenant_id!r} does not allow {action}; allowed: "
            f"{', '.join(policy.effective_actions()) or 'none'}. An admin changes this with "
            "'vigil policy set --allow-actions ...'",
        )

    if params is not None and params.get("dry_run") is True:
        return ALLOW
    if action == "isolate":
        refused = _isolate_cap(ctx, requester.tenant_id, agent_id, policy, now or time.time())
        if refused:
            return refused

    host = ctx.state.agent(agent_id) or {}
    tags = _tags(host)
    if (
        action_cls.destructive
        and CRITICAL_TAG in tags
        and policy.critical_needs_approval
        and not approved
    ):
        return Verdict(
            "needs_approval",
            "critical_approval",
            f"host {host.get('hostname') or agent_id} is tagged {CRITICAL_TAG!r}: {action} waits "
            "for a second analyst ('vigil tasks approve TASK_ID --reason ...'); nothing is sent "
            "to the host until then",
        )
    return ALLOW


def _isolate_cap(
    ctx: ServerContext, tenant_id: str, agent_id: str, policy: ResponsePolicy, now: float
) -> Verdict | None:
    since = now - ISOLATE_WINDOW_SECONDS
    isolated = ctx.state.hosts_with_tasks_since(tenant_id, "isolate", since, COUNTED_STATUSES)
    if agent_id in isolated or len(isolated) < policy.isolate_cap_per_hour:
        return None
    frees_at = min(isolated.values()) + ISOLATE_WINDOW_SECONDS
    return Verdict(
        "refuse",
        "isolate_cap",
        f"{len(isolated)} hosts of tenant {tenant_id!r} were isolated in the last hour, the cap "
        f"is {policy.isolate_cap_per_hour}; the next slot frees at {iso_epoch(frees_at)}, or an "
        "admin raises the cap with 'vigil policy set --isolate-cap-per-hour N'",
    )


def _tags(host: dict[str, Any]) -> list[str]:
    raw = host.get("tags") or "[]"
    found: list[str] = json.loads(raw) if isinstance(raw, str) else list(raw)
    return found
