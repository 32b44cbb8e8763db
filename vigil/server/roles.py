"""Analyst roles and what each may do.

A role is a set of permissions plus whether it may run destructive response actions. Response
actions declare their own permission (``response.isolate``, ``response.live``...) and whether
they are destructive (``vigil.agent.respond.base.Action``); a role runs an action only when it
holds that permission and, for a destructive action, is allowed destructive ones. Reading (every
GET, and hunts) needs no permission: every role may read its own tenant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vigil.agent.respond.base import Action

# Permissions outside response actions.
ALERTS_TRIAGE = "alerts.triage"
INTEL_WRITE = "intel.write"
HOSTS_TAG = "hosts.tag"
AGENTS_ENROLL = "agents.enroll"
POLICY_WRITE = "policy.write"
TOKENS_WRITE = "tokens.write"


@dataclass(frozen=True)
class Role:
    """What a role may do: permissions (``response.*`` covers every response action)."""

    name: str
    description: str
    permissions: frozenset[str]
    destructive: bool

    def holds(self, permission: str) -> bool:
        if "*" in self.permissions or permission in self.permissions:
            return True
        area = permission.split(".", 1)[0]
        return f"{area}.*" in self.permissions


ROLES: dict[str, Role] = {
    role.name: role
    for role in (
        Role(
            "admin", "everything, including policy, tokens and enrollment", frozenset({"*"}), True
        ),
        Role(
            "responder",
            "every response action, host tags, triage and intelligence",
            frozenset({"response.*", HOSTS_TAG, ALERTS_TRIAGE, INTEL_WRITE}),
            True,
        ),
        Role(
            "analyst",
            "read, hunt, triage and live views; nothing destructive",
            frozenset({"response.live", ALERTS_TRIAGE, INTEL_WRITE}),
            False,
        ),
        Role("readonly", "read and hunt only", frozenset(), False),
    )
}


def role(name: str) -> Role:
    """The role of that name; an unknown name (a damaged token row) may do nothing."""
    return ROLES.get(name) or Role(name, "unknown role", frozenset(), False)


def roles_holding(permission: str, destructive: bool = False) -> list[str]:
    """Names of the roles that hold a permission (and may run destructive actions, if asked)."""
    return [
        r.name for r in ROLES.values() if r.holds(permission) and (r.destructive or not destructive)
    ]


def may_run(role_name: str, action: type[Action]) -> str | None:
    """None when the role may ask for the action; otherwise why not and what to do."""
    held = role(role_name)
    if held.holds(action.permission) and (held.destructive or not action.destructive):
        return None
    which = "destructive action" if action.destructive else "action"
    allowed = ", ".join(roles_holding(action.permission, action.destructive))
    return (
        f"role {role_name!r} may not run the {which} {action.name} (permission "
        f"{action.permission!r}); roles that may: {allowed}. "
        "Ask someone with one of them, or an admin for such a token "
        "('vigil tokens create NAME --role ROLE')"
    )


def may(role_name: str, permission: str) -> str | None:
    """None when the role holds a permission; otherwise why not and what to do."""
    if role(role_name).holds(permission):
        return None
    return (
        f"role {role_name!r} lacks permission {permission!r}; roles that hold it: "
        f"{', '.join(roles_holding(permission))}. Ask an admin for such a token "
        "('vigil tokens create NAME --role ROLE')"
    )
