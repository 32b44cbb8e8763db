"""Block and unblock the execution of files by SHA-256, and list what is blocked.

The actions hand their request to the agent's exec guard (``ActionContext.exec_guard``, see
:mod:`vigil.agent.respond.exec_guard`), which keeps the block list in the state folder, enforces
it with fanotify permission events on the scope of the agent policy (``response.block_exec``)
and applies it again when the agent starts.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from vigil.agent.respond.base import Action
from vigil.agent.respond.errors import ResponseError
from vigil.agent.respond.exec_guard import parse_sha256

if TYPE_CHECKING:
    from vigil.agent.respond.exec_guard import ExecGuard

log = logging.getLogger(__name__)

MAX_TEXT = 1000


def _text_param(params: dict[str, Any], name: str, action: str) -> str:
    value = params.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ResponseError(
            f"{action}: '{name}' must be text of at most {MAX_TEXT} characters, got {value!r:.80}"
        )
    return value


def _guard(action: Action, name: str) -> ExecGuard:
    guard: ExecGuard | None = action.context.exec_guard
    if guard is None:
        raise ResponseError(
            f"{name}: this agent runs no exec guard (it needs Linux, root and fanotify "
            "permission events); nothing was done"
        )
    return guard


class BlockExecAction(Action):
    """Refuse every execution of files with a SHA-256, in the scope the agent policy sets.

    Params:
        sha256: The 64 hex digits of the file's SHA-256.
        reason: Optional text kept with the block and put in ``exec_blocked`` events.
        note: Optional text kept with the block.

    Returns ``{"sha256", "blocked": True, "already_blocked": bool, "blocked_count": int,
    "marked": [paths], "unmarked": ["path: why"]}``. Refused when the policy sets no scope
    (``response.block_exec.paths`` or ``mounts``) or when the hash is that of a program the
    host needs (shell, init, dynamic loader, the agent's interpreter...).
    """

    name = "block_exec"
    permission = "response.block_exec"
    destructive = True
    undo = "unblock_exec"

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """Check the parameters, then add the hash to the guard's block list."""
        sha256 = parse_sha256(params.get("sha256"), self.name)
        reason = _text_param(params, "reason", self.name)
        note = _text_param(params, "note", self.name)
        return _guard(self, self.name).block(sha256, reason=reason, note=note)


class UnblockExecAction(Action):
    """Allow the execution of files with a SHA-256 again.

    Params:
        sha256: The 64 hex digits the file was blocked by.

    Returns ``{"sha256", "blocked": False, "was_blocked": bool, "blocked_count": int}``;
    unblocking a hash that is not blocked succeeds and says so.
    """

    name = "unblock_exec"
    permission = "response.block_exec"
    destructive = False

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """Remove the hash from the guard's block list."""
        sha256 = parse_sha256(params.get("sha256"), self.name)
        return _guard(self, self.name).unblock(sha256)


class ListBlockedAction(Action):
    """List the hashes whose execution is refused on this host.

    Returns ``{"blocked": [{"sha256", "reason", "note", "blocked_at"}], "enforced": bool,
    "marked": [paths], "unmarked": ["path: why"]}``.
    """

    name = "list_blocked"
    permission = "response.block_exec"
    destructive = False

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """Read the guard's block list."""
        return _guard(self, self.name).listing()
