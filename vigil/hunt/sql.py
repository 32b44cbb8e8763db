"""Read-only SQL hunts over the ``events`` view.

A hunt is one SELECT statement. Before it runs it is parsed by DuckDB itself and its tree is
walked: every table it reads must be ``events`` or one of its own CTEs, and it may call no table
function. The tenant boundary is the ``events`` view the store puts on the hunt's cursor.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from typing import Any

import duckdb

from vigil.hunt.errors import HuntError
from vigil.store.telemetry import TelemetryStore

log = logging.getLogger(__name__)

MAX_ROWS = 10_000
ALLOWED_TABLES = {"events"}


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def check_query(db: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but one SELECT that reads only ``events`` and its own CTEs."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise HuntError(f"the query does not parse: {exc}") from exc
    if len(statements) != 1:
        raise HuntError(f"a hunt is exactly one statement; this has {len(statements)}")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise HuntError(
            f"hunts are read-only: only SELECT is allowed, not {statements[0].type.name}"
        )
    row = db.execute("SELECT json_serialize_sql(?)", (sql,)).fetchone()
    tree = json.loads(row[0]) if row else {"error": True, "error_message": "no parse tree"}
    if tree.get("error"):
        raise HuntError(f"the query does not parse: {tree.get('error_message')}")

    nodes = list(_walk(tree))
    cte_names = {
        entry["key"]
        for node in nodes
        if isinstance(node.get("cte_map"), dict)
        for entry in node["cte_map"].get("map", [])
    }
    for node in nodes:
        if node.get("type") == "TABLE_FUNCTION":
            raise HuntError("hunts may not call table functions; query the events view")
        if node.get("type") == "BASE_TABLE":
            name = node.get("table_name", "")
            if node.get("schema_name") or node.get("catalog_name"):
                raise HuntError(f"hunts read only the events view, not {name!r} in a schema")
            if name not in ALLOWED_TABLES | cte_names:
                raise HuntError(f"unknown table {name!r}: hunts read the 'events' view")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return value


def run_hunt(store: TelemetryStore, tenant_id: str, sql: str) -> dict[str, Any]:
    """Run a hunt for one tenant and return its columns and rows (at most MAX_ROWS)."""
    with store.tenant_cursor(tenant_id) as cur:
        check_query(cur, sql)
        try:
            result = cur.execute(sql)
            columns = [d[0] for d in result.description or []]
            rows = result.fetchmany(MAX_ROWS + 1)
        except duckdb.Error as exc:
            raise HuntError(f"the query failed: {exc}") from exc
    truncated = len(rows) > MAX_ROWS
    return {
        "columns": columns,
        "rows": [
            {c: _jsonable(v) for c, v in zip(columns, row, strict=True)} for row in rows[:MAX_ROWS]
        ],
        "truncated": truncated,
    }
