"""Checking events against the model before anything of their batch is stored."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from vigil.schema.ecs import EVENT_COLUMNS, flatten
from vigil.schema.errors import SchemaError

_COLUMN_TYPES = dict(EVENT_COLUMNS)
MAX_FIELD_CHARS = 1_000_000


def parse_timestamp(value: Any, field: str) -> datetime:
    """Parse an ISO 8601 timestamp with an offset (``Z`` allowed) into an aware UTC datetime."""
    if not isinstance(value, str):
        raise SchemaError(f"{field} must be an ISO 8601 string, got {type(value).__name__}")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise SchemaError(f"{field} is not an ISO 8601 timestamp: {value[:64]!r}") from exc
    if moment.tzinfo is None:
        raise SchemaError(f"{field} has no UTC offset: {value[:64]!r}; add 'Z' or '+00:00'")
    return moment.astimezone(UTC)


def _check_value(name: str, kind: str, value: Any) -> None:
    if value is None:
        return
    if kind == "BIGINT":
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"{name} must be an integer, got {type(value).__name__}")
    elif kind == "VARCHAR":
        if not isinstance(value, str):
            raise SchemaError(f"{name} must be a string, got {type(value).__name__}")
        if len(value) > MAX_FIELD_CHARS:
            raise SchemaError(f"{name} is longer than {MAX_FIELD_CHARS} characters")
    elif kind == "VARCHAR[]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SchemaError(f"{name} must be a list of strings")
    elif kind == "TIMESTAMPTZ":
        parse_timestamp(value, name)


def validate_event(doc: Any) -> dict[str, Any]:
    """Check one nested ECS event and return it flattened; raise SchemaError naming the field."""
    if not isinstance(doc, Mapping):
        raise SchemaError(f"an event must be a JSON object, got {type(doc).__name__}")
    flat = flatten(doc)
    if "@timestamp" not in flat:
        raise SchemaError("@timestamp is missing")
    sequence = flat.get("event.sequence")
    if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 1:
        raise SchemaError("event.sequence must be a positive integer (the spool position)")
    for name, value in flat.items():
        kind = _COLUMN_TYPES.get(name)
        if kind is not None:
            _check_value(name, kind, value)
    return flat


def validate_batch(events: list[Any]) -> list[dict[str, Any]]:
    """Validate every event of a batch; the first bad one refuses the whole batch."""
    flat_events = []
    previous = 0
    for index, doc in enumerate(events):
        try:
            flat = validate_event(doc)
        except SchemaError as exc:
            raise SchemaError(f"event {index}: {exc}; the batch was not stored") from exc
        if flat["event.sequence"] <= previous:
            raise SchemaError(
                f"event {index}: event.sequence {flat['event.sequence']} does not increase; "
                "send events in spool order"
            )
        previous = flat["event.sequence"]
        flat_events.append(flat)
    return flat_events
