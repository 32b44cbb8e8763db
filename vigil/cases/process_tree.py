"""The ancestry of an alerted process, rebuilt from stored exec events by entity id."""

from __future__ import annotations

from typing import Any

from vigil.store.telemetry import TelemetryStore

MAX_DEPTH = 64


def _node(process: dict[str, Any]) -> dict[str, Any]:
    return {
        "entity_id": process.get("entity_id"),
        "pid": process.get("pid"),
        "executable": process.get("executable"),
        "command_line": process.get("command_line"),
        "start": process.get("start"),
    }


def process_tree(
    store: TelemetryStore, tenant_id: str, event: dict[str, Any]
) -> list[dict[str, Any]]:
    """The chain from the oldest known ancestor down to the event's process.

    Each step follows ``process.parent.entity_id``. Where no exec of a parent was recorded (it
    started before the agent), the parent as the child's event describes it ends the chain.
    """
    process = event.get("process") or {}
    chain = [_node(process)]
    seen = {process.get("entity_id")}
    parent = process.get("parent") or {}

    while parent.get("entity_id") and parent["entity_id"] not in seen and len(chain) < MAX_DEPTH:
        seen.add(parent["entity_id"])
        execs = store.process_instances(tenant_id, parent["entity_id"])
        if not execs:
            chain.append(_node(parent))
            break
        # A process that exec'd more than once keeps its entity id; its latest image is the one
        # that started the child.
        recorded = execs[-1].get("process") or {}
        chain.append(_node(recorded))
        parent = recorded.get("parent") or {}

    chain.reverse()
    return chain
