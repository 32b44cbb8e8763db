"""The agent policy: which sensors run, with which options, within which budget.

A policy is a YAML file (``vigil agent run --policy FILE``)::

    sensors:
      process_audit: {}
      file_fanotify:
        file_exclude: [/var/lib/docker]
      inventory:
        inventory_interval: 600
      dns_capture: false          # off
    budget:
      cpu_percent: 5              # of one core, sustained
      rss_mb: 150
    response:
      run_command: false          # the run_command action stays refused unless true

Sensors not named keep their default (on, when they can run here). ``--sensor NAME`` on the
command line runs only the sensors named.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vigil.agent.errors import AgentError

log = logging.getLogger(__name__)

# Sensors that only stand in for another when it cannot run are not started by default.
FALLBACK_ONLY = frozenset({"process_poll"})


@dataclass
class Budget:
    """What the agent may cost the host; the watchdog sheds sensors to stay within it."""

    cpu_percent: float = 5.0
    rss_mb: float = 150.0


@dataclass
class Policy:
    """Sensors to run, each with its options, and the budget."""

    sensors: dict[str, dict[str, Any]] = field(default_factory=dict)
    budget: Budget = field(default_factory=Budget)
    # Running arbitrary commands is off unless the policy turns it on.
    allow_run_command: bool = False

    @classmethod
    def default(cls, known: list[str]) -> Policy:
        """Every sensor that is not only a fallback, with its own defaults."""
        return cls(sensors={name: {} for name in known if name not in FALLBACK_ONLY})

    @classmethod
    def load(cls, path: Path, known: list[str]) -> Policy:
        """Read a policy file; raise AgentError naming what is wrong in it."""
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise AgentError(f"cannot read agent policy {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise AgentError(f"agent policy {path} must be a mapping with 'sensors' and 'budget'")
        unknown_keys = set(data) - {"sensors", "budget", "response"}
        if unknown_keys:
            raise AgentError(f"agent policy {path}: unknown keys {sorted(unknown_keys)}")

        policy = cls.default(known)
        for name, options in (data.get("sensors") or {}).items():
            if name not in known:
                raise AgentError(
                    f"agent policy {path}: no sensor {name!r}; known: {', '.join(sorted(known))}"
                )
            if options is False:
                policy.sensors.pop(name, None)
            elif options is None or options is True:
                policy.sensors[name] = {}
            elif isinstance(options, dict):
                policy.sensors[name] = dict(options)
            else:
                raise AgentError(
                    f"agent policy {path}: sensor {name} takes a mapping of options, or false"
                )
        response = data.get("response") or {}
        if not isinstance(response, dict) or set(response) - {"run_command"}:
            raise AgentError(f"agent policy {path}: 'response' takes only run_command: true|false")
        policy.allow_run_command = bool(response.get("run_command", False))
        budget = data.get("budget") or {}
        try:
            policy.budget = Budget(**budget)
        except TypeError as exc:
            raise AgentError(f"agent policy {path}: bad budget: {exc}") from exc
        return policy

    def only(self, names: list[str]) -> Policy:
        """The same policy running just these sensors (options kept where the policy had them)."""
        return Policy(
            {name: self.sensors.get(name, {}) for name in names},
            self.budget,
            self.allow_run_command,
        )
