"""Response actions run on the endpoint; importing this package registers every action.

See ``vigil.agent.respond.base`` for the interface and ``REGISTRY`` for the registered actions.
"""

from __future__ import annotations

from vigil.agent.respond import isolate, kill
from vigil.agent.respond.base import REGISTRY, Action, ActionContext

__all__ = ["REGISTRY", "Action", "ActionContext", "isolate", "kill"]
