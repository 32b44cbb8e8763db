"""Sigma's ``auditd`` log source on the agent's process events.

SigmaHQ's Linux ``service: auditd`` rules are written against raw audit records, mostly
``type: EXECVE`` with its arguments as ``a0``, ``a1``... The agent turns those records into ECS
process events; this module gives each exec event the EXECVE record's shape again, the same
shape the offline auditd reader (``vigil.logsources.auditd``) produces, so those rules run on
live telemetry too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Process fields the raw reader also puts beside the record's own fields.
CONTEXT_FIELDS = (
    "@timestamp",
    "host.name",
    "process.executable",
    "process.name",
    "process.pid",
    "process.command_line",
    "process.working_directory",
    "user.id",
)


def execve_view(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """The EXECVE record of an exec event, as the ``auditd`` log source sees it; else None."""
    args = event.get("process.args")
    if event.get("event.action") != "exec" or not isinstance(args, list):
        return None
    view: dict[str, Any] = {key: event[key] for key in CONTEXT_FIELDS if key in event}
    view.update(
        {
            "event.module": "auditd",
            "host.os.type": "linux",
            "type": "EXECVE",
            "argc": str(len(args)),
        }
    )
    view.update({f"a{index}": arg for index, arg in enumerate(args)})
    return view


def is_auditd_rule(logsource: Mapping[str, str]) -> bool:
    """Whether a rule is written for raw audit records (``service: auditd``)."""
    return str(logsource.get("service", "")).lower() == "auditd"
