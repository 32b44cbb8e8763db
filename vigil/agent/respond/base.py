"""The response action interface and its registry.

An action runs on the endpoint when a signed task names it. It declares the permission an analyst
needs to ask for it, whether it is destructive and which action undoes it; it returns a result
dict for the server or raises ResponseError. The agent's task loop catches everything at this
boundary and reports a status with a message, so one failing action never stops the agent.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

REGISTRY: dict[str, type[Action]] = {}


@dataclass
class ActionContext:
    """What an action may use: identity, state folder, server address, processes, recent events."""

    agent_id: str
    state_dir: str
    server_host: str
    server_port: int
    processes: Any = None
    link: Any = None
    allow_run_command: bool = False
    # The newest events the agent wrote to its spool, oldest first (sent or not).
    recent_events: Callable[[], list[dict[str, Any]]] | None = None
    # The agent's exec guard (``vigil.agent.respond.exec_guard.ExecGuard``), which enforces the
    # block list of ``block_exec``; None where the agent runs none.
    exec_guard: Any = None
    # Folders no action collects from (``Policy.private_paths``).
    private_paths: tuple[str, ...] = ()


class Action(abc.ABC):
    """Base class of every response action; subclasses register themselves by name."""

    name: ClassVar[str]
    permission: ClassVar[str]
    destructive: ClassVar[bool] = False
    # An action that uploads evidence gets its task id from the agent, and the server accepts
    # uploads that name a task of this action.
    uploads_evidence: ClassVar[bool] = False
    # The agent tells the server it started (task state ``running``) before it runs an action
    # that can take long, so an analyst can tell a slow action from a lost one.
    long_running: ClassVar[bool] = False
    # The name of the action that takes this one back (isolate: release), if there is one.
    undo: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A class naming itself is an action; an intermediate base class names nothing. (ABC's
        # abstract-method set is not known yet when this runs.)
        if isinstance(cls.__dict__.get("name"), str):
            REGISTRY[cls.name] = cls

    def __init__(self, context: ActionContext) -> None:
        self.context = context

    @abc.abstractmethod
    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """Carry out the action and return what happened; raise ResponseError on failure."""
