"""Suspend (SIGSTOP) or resume (SIGCONT) one process named by its entity id.

The target is checked exactly as the kill action checks it, with kill's own functions: the pid's
start time is read from ``/proc/<pid>/stat`` and the entity id recomputed, so a reused pid is
never signalled; pid 1 and the agent itself are refused. psutil's start-time check guards the
short time between that check and the signal.

Reference: signal(7), SIGSTOP and SIGCONT.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import psutil

from vigil.agent.respond.base import Action, ActionContext
from vigil.agent.respond.errors import ResponseError
from vigil.agent.respond.kill import KillAction, parse_target, refuse_protected

log = logging.getLogger(__name__)


def _reworded(exc: ResponseError, verb: str) -> ResponseError:
    """Kill's check messages, told in the words of ``verb`` (suspend or resume)."""
    done = "suspended" if verb == "suspend" else "resumed"
    text = (
        str(exc)
        .replace("kill: ", f"{verb}: ", 1)
        .replace("nothing was killed", f"nothing was {done}")
        .replace("refusing to kill", f"refusing to {verb}")
    )
    return ResponseError(text)


def signal_checked(
    context: ActionContext,
    params: dict[str, Any],
    verb: str,
    send: Callable[[psutil.Process], None],
) -> dict[str, Any]:
    """Check the target named in ``params`` as kill does, then ``send`` it a signal.

    Raises:
        ResponseError: bad params, a protected pid, or the pid no longer is the named process.
    """
    if "tree" in params:
        raise ResponseError(f"{verb}: 'tree' is not supported; name one process")
    try:
        wanted, pid, _ = parse_target(params)
        refuse_protected(pid, "")
        process = KillAction(context)._verified(wanted, pid)
    except ResponseError as exc:
        raise _reworded(exc, verb) from exc

    try:
        send(process)
        status = process.status()
    except psutil.NoSuchProcess as exc:
        raise ResponseError(f"{verb}: pid {pid} exited; nothing was done") from exc
    except psutil.AccessDenied as exc:
        raise ResponseError(
            f"{verb}: not allowed to signal pid {pid}; run the agent as root"
        ) from exc
    log.info("%s pid %d (entity %s)", verb, pid, wanted)
    return {"pid": pid, "entity_id": wanted, "status": status}


class SuspendAction(Action):
    """Suspend the process named by entity id and pid with SIGSTOP.

    Params:
        entity_id: The target's ``process.entity_id``.
        pid: The target's pid.

    Returns ``{"pid": int, "entity_id": str, "status": str}``, ``status`` as psutil reads it
    after the signal (``stopped`` once the kernel has stopped it).
    """

    name = "suspend"
    undo = "resume"
    permission = "response.kill"
    destructive = True

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """Check the target's identity, then stop it (SIGSTOP)."""
        return signal_checked(self.context, params, "suspend", psutil.Process.suspend)


class ResumeAction(Action):
    """Resume a suspended process named by entity id and pid with SIGCONT.

    Params:
        entity_id: The target's ``process.entity_id``.
        pid: The target's pid.

    Returns ``{"pid": int, "entity_id": str, "status": str}``.
    """

    name = "resume"
    permission = "response.kill"
    destructive = False

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """Check the target's identity, then continue it (SIGCONT)."""
        return signal_checked(self.context, params, "resume", psutil.Process.resume)
