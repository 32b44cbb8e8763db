"""ECS documents as Vigil passes them around.

Agents build nested ECS documents (``{"process": {"pid": 1}}``); detection, storage and hunting
read them flat, keyed by dotted names (``"process.pid"``), because Sigma field mapping and SQL
columns both speak dotted names. Lists stay lists: ``process.args`` is one field.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

# The columns every stored event has, in the order hunts see them. Fields outside this list are
# kept in the event's JSON document and can be queried there.
EVENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("@timestamp", "TIMESTAMPTZ"),
    ("event.id", "VARCHAR"),
    ("event.kind", "VARCHAR"),
    ("event.category", "VARCHAR[]"),
    ("event.type", "VARCHAR[]"),
    ("event.action", "VARCHAR"),
    ("event.outcome", "VARCHAR"),
    ("host.id", "VARCHAR"),
    ("host.name", "VARCHAR"),
    ("agent.id", "VARCHAR"),
    ("process.entity_id", "VARCHAR"),
    ("process.pid", "BIGINT"),
    ("process.name", "VARCHAR"),
    ("process.executable", "VARCHAR"),
    ("process.args", "VARCHAR[]"),
    ("process.command_line", "VARCHAR"),
    ("process.working_directory", "VARCHAR"),
    ("process.start", "TIMESTAMPTZ"),
    ("process.exit_code", "BIGINT"),
    ("process.hash.sha256", "VARCHAR"),
    ("process.parent.entity_id", "VARCHAR"),
    ("process.parent.pid", "BIGINT"),
    ("process.parent.name", "VARCHAR"),
    ("process.parent.executable", "VARCHAR"),
    ("process.parent.command_line", "VARCHAR"),
    ("user.id", "VARCHAR"),
    ("user.name", "VARCHAR"),
    ("user.effective.id", "VARCHAR"),
    ("user.effective.name", "VARCHAR"),
    ("process.tty.char_device.major", "BIGINT"),
    ("process.session_leader.entity_id", "VARCHAR"),
    ("container.id", "VARCHAR"),
    ("file.path", "VARCHAR"),
    ("file.name", "VARCHAR"),
    ("file.directory", "VARCHAR"),
    ("file.extension", "VARCHAR"),
    ("file.Ext.original.path", "VARCHAR"),
    ("file.hash.sha256", "VARCHAR"),
    ("source.ip", "VARCHAR"),
    ("source.port", "BIGINT"),
    ("destination.ip", "VARCHAR"),
    ("destination.port", "BIGINT"),
    ("network.transport", "VARCHAR"),
    ("network.type", "VARCHAR"),
    ("network.direction", "VARCHAR"),
    ("dns.question.name", "VARCHAR"),
    ("dns.question.type", "VARCHAR"),
    ("dns.resolved_ip", "VARCHAR[]"),
    ("package.name", "VARCHAR"),
    ("package.version", "VARCHAR"),
)


def flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested ECS document into dotted keys; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Rebuild a nested ECS document from dotted keys (``@timestamp`` stays top level)."""
    doc: dict[str, Any] = {}
    for name, value in flat.items():
        parts = name.split(".")
        node = doc
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return doc


def entity_id(agent_id: str, pid: int, start_ticks: int | str) -> str:
    """A stable id of one process instance: pids are reused, (agent, pid, start) is not."""
    raw = f"{agent_id}:{pid}:{start_ticks}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def utc_now_iso() -> str:
    """The current time as an ECS ``@timestamp`` (ISO 8601, UTC, microseconds)."""
    return iso(datetime.now(UTC))


def iso_epoch(seconds: float | None) -> str | None:
    """An epoch time as an ECS timestamp; None stays None."""
    return None if seconds is None else iso(datetime.fromtimestamp(seconds, UTC))


def iso(moment: datetime) -> str:
    """Format an aware datetime as ECS expects: UTC with a ``Z``."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
