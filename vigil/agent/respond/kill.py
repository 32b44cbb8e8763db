"""Kill a process, or a process and all its descendants, named by its entity id.

A task names a process by ``process.entity_id`` and pid. Pids are reused, so before any signal
the action reads the pid's start time from ``/proc/<pid>/stat`` and recomputes the entity id; if
the pid now belongs to another process, nothing is killed. psutil's own start-time check guards
the short time between that check and the signal.

A tree is stopped (SIGSTOP) from the top down before anything is killed, so no member can fork
new children while the tree is walked; then every member gets SIGKILL, descendants first.

Reference: proc(5), ``/proc/<pid>/stat`` field 22 ``starttime``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import psutil

from vigil.agent.respond.base import Action
from vigil.agent.respond.errors import ResponseError
from vigil.schema.ecs import entity_id

log = logging.getLogger(__name__)

WAIT_GONE_S = 5.0


def read_start_ticks(pid: int) -> int:
    """Return the start time of ``pid`` in clock ticks after boot (``/proc/<pid>/stat`` field 22).

    Raises:
        ProcessLookupError: there is no process ``pid``.
    """
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError as exc:
        raise ProcessLookupError(pid) from exc
    # Field 2 (comm) is in parentheses and may hold spaces and ')' itself: cut at the last ')'.
    # What follows starts at field 3, so field 22 is the 20th item.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[19])


def parse_target(params: dict[str, Any]) -> tuple[str, int, bool]:
    """The target of a process action: (entity id, pid, whole tree); ResponseError if malformed."""
    wanted = params.get("entity_id")
    pid = params.get("pid")
    tree = params.get("tree", False)
    if not isinstance(wanted, str) or not wanted:
        raise ResponseError("kill: 'entity_id' must be the process.entity_id of the target")
    if not isinstance(pid, int) or isinstance(pid, bool):
        raise ResponseError(f"kill: 'pid' must be an integer, got {pid!r}")
    if not isinstance(tree, bool):
        raise ResponseError(f"kill: 'tree' must be true or false, got {tree!r}")
    return wanted, pid, tree


def refuse_protected(pid: int, what: str) -> None:
    """Raise ResponseError for pids no action may touch: init, the kernel's, the agent itself."""
    if pid <= 1:
        raise ResponseError(f"kill: refusing to kill pid {pid}{what}; nothing was killed")
    if pid == os.getpid():
        raise ResponseError(
            f"kill: refusing to kill pid {pid}{what}: it is the Vigil agent itself; "
            "nothing was killed"
        )


def _freeze_tree(root: psutil.Process) -> list[psutil.Process]:
    """Stop ``root`` and every descendant; return them, each parent before its children.

    Raises:
        ResponseError: the tree holds pid 1 or the agent; whatever was stopped is resumed.
    """
    root.suspend()
    tree = [root]
    seen = {root.pid}
    index = 0
    # A stopped process cannot fork, so listing a member's children after stopping it is final.
    while index < len(tree):
        member = tree[index]
        index += 1
        try:
            children = member.children()
        except psutil.NoSuchProcess:
            continue
        for child in children:
            if child.pid in seen:
                continue
            try:
                refuse_protected(child.pid, f" in the tree of pid {root.pid}")
                child.suspend()
            except psutil.NoSuchProcess:
                continue
            except (ResponseError, psutil.AccessDenied):
                _resume(tree)
                raise
            seen.add(child.pid)
            tree.append(child)
    return tree


def _resume(members: list[psutil.Process]) -> None:
    for member in members:
        try:
            member.resume()
        except psutil.NoSuchProcess:
            continue


def _gone(member: psutil.Process) -> bool:
    try:
        return not member.is_running() or member.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(members: list[psutil.Process], timeout: float) -> list[int]:
    """Wait until every member exited (a zombie counts as exited); return the pids still alive."""
    deadline = time.monotonic() + timeout
    alive = [m for m in members if not _gone(m)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [m for m in alive if not _gone(m)]
    return [m.pid for m in alive]


class KillAction(Action):
    """Kill the process named by entity id and pid, or with ``tree`` its whole tree (SIGKILL).

    Params:
        entity_id: The target's ``process.entity_id``.
        pid: The target's pid.
        tree: Also kill every descendant (default false).

    Returns ``{"killed": [pids], "still_running": [pids], "entity_id": str, "tree": bool}``;
    ``still_running`` lists processes that got SIGKILL but had not exited after a few seconds
    (for example in uninterruptible sleep).
    """

    name = "kill"
    permission = "response.kill"
    destructive = True

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """Check the target's identity, then kill it (and its descendants if asked)."""
        wanted, pid, tree = parse_target(params)
        refuse_protected(pid, "")
        root = self._verified(wanted, pid)

        try:
            targets = _freeze_tree(root) if tree else [root]
        except psutil.NoSuchProcess as exc:
            raise ResponseError(f"kill: pid {pid} exited; nothing was killed") from exc
        except psutil.AccessDenied as exc:
            raise ResponseError(
                f"kill: not allowed to stop pid {pid}; run the agent as root"
            ) from exc

        killed: list[int] = []
        for member in reversed(targets):
            try:
                member.kill()
            except psutil.NoSuchProcess:
                continue
            except psutil.AccessDenied as exc:
                _resume(targets)
                raise ResponseError(
                    f"kill: not allowed to kill pid {member.pid}; killed so far: {killed}; "
                    "run the agent as root"
                ) from exc
            killed.append(member.pid)
        still_running = _wait_gone(targets, WAIT_GONE_S)
        log.info("killed %s (entity %s, tree %s)", killed, wanted, tree)
        if still_running:
            log.warning("pids %s got SIGKILL but are still running", still_running)
        return {
            "killed": killed,
            "still_running": still_running,
            "entity_id": wanted,
            "tree": tree,
        }

    def _verified(self, wanted: str, pid: int) -> psutil.Process:
        """Return the process ``pid`` if its entity id is ``wanted``; refuse otherwise."""
        try:
            # psutil records the start time now and checks it again before any signal.
            process = psutil.Process(pid)
            start_ticks = read_start_ticks(pid)
        except (psutil.NoSuchProcess, ProcessLookupError) as exc:
            raise ResponseError(f"kill: pid {pid} is gone; nothing was killed") from exc
        if entity_id(self.context.agent_id, pid, start_ticks) != wanted:
            raise ResponseError(
                f"kill: pid {pid} now belongs to another process; nothing was killed"
            )
        return process
