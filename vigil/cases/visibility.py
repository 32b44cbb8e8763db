"""Alerts when an agent's view of its host drops.

Attackers blind sensors on purpose: they stop the agent, kill a sensor, flood the kernel queues
until events are lost. Each of these shows in what the agent reports (or stops reporting), and
each becomes an alert an analyst sees next to the detections.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from vigil.schema.ecs import utc_now_iso

# Counters whose growth means telemetry was lost, by sensor-agnostic name.
LOSS_COUNTERS = ("lost", "overflow", "dropped")


@dataclass(frozen=True)
class VisibilityRule:
    """A built-in rule about the agent itself rather than about an event."""

    id: str
    title: str
    level: str
    attack: tuple[str, ...]
    tactics: tuple[str, ...]


SENSOR_DOWN = VisibilityRule(
    "vigil-visibility-sensor-down",
    "Agent sensor stopped or failed",
    "high",
    ("T1562.001",),
    ("defense-impairment",),
)
TELEMETRY_LOST = VisibilityRule(
    "vigil-visibility-telemetry-lost",
    "Agent lost telemetry",
    "medium",
    ("T1562.006",),
    ("defense-impairment",),
)
HEARTBEAT_MISSING = VisibilityRule(
    "vigil-visibility-heartbeat-missing",
    "Agent stopped reporting",
    "high",
    ("T1562.001",),
    ("defense-impairment",),
)


def visibility_alert(
    rule: VisibilityRule, agent: dict[str, Any], details: dict[str, Any]
) -> dict[str, Any]:
    """An alert in the same shape as a detection, its event describing what was seen."""
    return {
        "id": str(uuid.uuid4()),
        "@timestamp": utc_now_iso(),
        "rule": {
            "id": rule.id,
            "title": rule.title,
            "level": rule.level,
            "tactics": list(rule.tactics),
        },
        "attack": list(rule.attack),
        "host": {"id": agent["id"], "name": agent["hostname"]},
        "entity_id": None,
        "event": {
            "@timestamp": utc_now_iso(),
            "event": {"kind": "alert", "category": ["host"], "action": rule.id},
            "host": {"id": agent["id"], "name": agent["hostname"]},
            "agent": {"id": agent["id"]},
            "vigil": {"visibility": details},
        },
    }


def _loss(counters: dict[str, Any]) -> int:
    return sum(int(counters.get(name, 0) or 0) for name in LOSS_COUNTERS)


def heartbeat_changes(
    agent: dict[str, Any], previous: dict[str, Any], current: dict[str, Any]
) -> list[dict[str, Any]]:
    """Alerts for what got worse between two heartbeats of one agent."""
    alerts = []
    before = previous.get("sensors", {})
    for name, health in current.get("sensors", {}).items():
        was = before.get(name, {})
        if was.get("state") == "running" and health.get("state") != "running":
            alerts.append(
                visibility_alert(
                    SENSOR_DOWN,
                    agent,
                    {
                        "sensor": name,
                        "state": health.get("state"),
                        "message": health.get("message"),
                    },
                )
            )
        grown = _loss(health.get("counters", {})) - _loss(was.get("counters", {}))
        if was and grown > 0:
            alerts.append(
                visibility_alert(
                    TELEMETRY_LOST,
                    agent,
                    {
                        "sensor": name,
                        "events_lost": grown,
                        "counters": health.get("counters", {}),
                    },
                )
            )
    for name in before:
        if before[name].get("state") == "running" and name not in current.get("sensors", {}):
            alerts.append(
                visibility_alert(
                    SENSOR_DOWN,
                    agent,
                    {"sensor": name, "state": "missing", "message": "no longer reported"},
                )
            )
    dropped = (current.get("spool", {}).get("dropped", 0) or 0) - (
        previous.get("spool", {}).get("dropped", 0) or 0
    )
    if previous and dropped > 0:
        alerts.append(
            visibility_alert(TELEMETRY_LOST, agent, {"sensor": "spool", "events_lost": dropped})
        )
    return alerts
