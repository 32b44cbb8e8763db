"""Response actions run on the endpoint; importing this package registers every action.

Every module of this package is imported here, so a new action needs no edit anywhere else.
See ``vigil.agent.respond.base`` for the interface and ``REGISTRY`` for the registered actions.
"""

from __future__ import annotations

import importlib
import pkgutil

from vigil.agent.respond.base import REGISTRY, Action, ActionContext

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "Action", "ActionContext"]
