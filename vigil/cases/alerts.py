"""Turning rule matches into alerts."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from vigil.intel import attack
from vigil.schema.ecs import unflatten

if TYPE_CHECKING:
    from vigil.detect import Rule


def attack_details(technique_ids: list[str]) -> list[dict[str, Any]]:
    """Name and tactics of each technique, from the ATT&CK table shipped with Vigil."""
    details: list[dict[str, Any]] = []
    for tid in technique_ids:
        found = attack.technique(tid)
        if found is None:
            details.append({"id": tid, "name": None, "tactics": []})
            continue
        details.append(
            {
                "id": found.id,
                "name": found.name,
                "tactics": [{"id": t, "name": attack.tactic_name(t)} for t in found.tactics],
                "url": found.url,
            }
        )
    return details


def build_alert(rule: Rule, flat_event: dict[str, Any], host_name: str) -> dict[str, Any]:
    """One alert: the rule, its ATT&CK techniques, the host and the event that fired it."""
    return {
        "id": str(uuid.uuid4()),
        "@timestamp": flat_event.get("@timestamp"),
        "rule": {
            "id": rule.id,
            "title": rule.title,
            "level": rule.level,
            "tactics": list(rule.attack_tactics),
        },
        "attack": list(rule.attack_techniques),
        "host": {"id": flat_event.get("host.id"), "name": host_name},
        "entity_id": flat_event.get("process.entity_id"),
        "event": unflatten(flat_event),
    }
