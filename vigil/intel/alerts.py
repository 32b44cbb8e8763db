"""Turning intel hits on one event into one alert, shaped like a rule's alert."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from vigil.intel.index import IntelHit
from vigil.schema.ecs import unflatten

# An indicator's confidence (0-100) -> alert level, lowest bound first wins from the top.
LEVELS = ((80, "high"), (50, "medium"), (0, "low"))


def intel_alert(
    hits: Sequence[IntelHit], flat_event: dict[str, Any], host_name: str
) -> dict[str, Any]:
    """One alert for every indicator an event shows.

    The ``rule`` part names the first indicator, so alerts on the same indicator group
    together; ``intel`` lists every hit with its feed, tags and reference.

    Args:
        hits: What :meth:`IntelIndex.match` returned for the event (not empty).
        flat_event: The event, flat.
        host_name: The host's name as enrolled.
    """
    first = hits[0].indicator
    confidence = max(h.indicator.confidence for h in hits)
    level = next(name for bound, name in LEVELS if confidence >= bound)
    return {
        "id": str(uuid.uuid4()),
        "@timestamp": flat_event.get("@timestamp"),
        "rule": {
            "id": f"intel:{first.type.value}:{first.value}",
            "title": f"Threat intel: {first.type.value} {first.value} ({first.source})",
            "level": level,
            "tactics": [],
        },
        "attack": [],
        "host": {"id": flat_event.get("host.id"), "name": host_name},
        "entity_id": flat_event.get("process.entity_id"),
        "intel": [h.as_dict() for h in hits],
        "event": unflatten(flat_event),
    }
