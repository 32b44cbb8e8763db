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
      block_exec:                 # where block_exec enforces its block list (default: nowhere)
        paths: [/tmp, /dev/shm]   # directories and their direct children (not recursive)
        mounts: []                # whole mounts, e.g. [/]: every exec there waits for a verdict
        hash_timeout_seconds: 2   # an exec whose file is not hashed by then is allowed
        max_hash_bytes: 268435456 # larger files are allowed without hashing

Sensors not named keep their default (on, when they can run here). ``--sensor NAME`` on the
command line runs only the sensors named.
"""

from __future__ import annotations

import logging
import os
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
class BlockExecPolicy:
    """Where the ``block_exec`` action enforces its block list, and what a hash may cost.

    Nothing is covered by default: ``block_exec`` is refused until ``paths`` or ``mounts`` is
    set. A directory in ``paths`` covers the files directly in it, not those in its
    subdirectories (fanotify inode marks are not recursive). A mount in ``mounts`` covers every
    file on that mount, but not on mounts below it; every exec there then waits for the agent.
    """

    paths: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    hash_timeout_seconds: float = 2.0
    max_hash_bytes: int = 256 * 1024 * 1024

    @property
    def configured(self) -> bool:
        """Whether any directory or mount is in scope."""
        return bool(self.paths or self.mounts)

    @classmethod
    def from_mapping(cls, data: Any, where: str) -> BlockExecPolicy:
        """Read ``response.block_exec`` of a policy; raise AgentError naming what is wrong."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise AgentError(f"{where}: response.block_exec takes a mapping (paths, mounts, ...)")
        unknown = set(data) - {"paths", "mounts", "hash_timeout_seconds", "max_hash_bytes"}
        if unknown:
            raise AgentError(
                f"{where}: response.block_exec has unknown keys {sorted(unknown)}; known: paths, "
                "mounts, hash_timeout_seconds, max_hash_bytes"
            )
        policy = cls(
            paths=_absolute_paths(data.get("paths"), "response.block_exec.paths", where),
            mounts=_absolute_paths(data.get("mounts"), "response.block_exec.mounts", where),
        )
        timeout = data.get("hash_timeout_seconds", policy.hash_timeout_seconds)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise AgentError(
                f"{where}: response.block_exec.hash_timeout_seconds={timeout!r} must be a "
                "positive number of seconds"
            )
        limit = data.get("max_hash_bytes", policy.max_hash_bytes)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise AgentError(
                f"{where}: response.block_exec.max_hash_bytes={limit!r} must be a positive integer"
            )
        policy.hash_timeout_seconds = float(timeout)
        policy.max_hash_bytes = limit
        return policy


def _absolute_paths(value: Any, key: str, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise AgentError(f"{where}: {key} must be a list of absolute paths")
    for item in value:
        if not item.startswith("/"):
            raise AgentError(f"{where}: {key} has {item!r}: use absolute paths such as '/tmp'")
    return [os.path.realpath(item) for item in value]


@dataclass
class Policy:
    """Sensors to run, each with its options, and the budget."""

    sensors: dict[str, dict[str, Any]] = field(default_factory=dict)
    budget: Budget = field(default_factory=Budget)
    # Running arbitrary commands is off unless the policy turns it on.
    allow_run_command: bool = False
    block_exec: BlockExecPolicy = field(default_factory=BlockExecPolicy)
    # Folders response actions never collect from (the server's data folder under `vigil up`:
    # its keys and admin token must not reach a triage bundle an analyst can download).
    private_paths: tuple[str, ...] = ()

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
        if not isinstance(response, dict) or set(response) - {"run_command", "block_exec"}:
            raise AgentError(
                f"agent policy {path}: 'response' takes only run_command: true|false and "
                "block_exec: {paths: [...], mounts: [...]}"
            )
        policy.allow_run_command = bool(response.get("run_command", False))
        policy.block_exec = BlockExecPolicy.from_mapping(
            response.get("block_exec"), f"agent policy {path}"
        )
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
            self.block_exec,
        )
