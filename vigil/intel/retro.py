"""Retro-hunts: find past sightings of new indicators in stored telemetry.

:func:`retro_hunt` turns indicators into one SELECT over the ``events`` view (DuckDB, ECS
dotted column names), which the server runs like an analyst's hunt: ``events`` is the tenant's
view, so the same query serves every tenant. Fields that are not columns are read from the
event's JSON document. The SQL is a prefilter: exact values, parent domains and IPv4 ranges are
decided in SQL, IPv6 networks only narrowed by their first group. :meth:`RetroHunt.confirm`
then runs the rows through an :class:`~vigil.intel.index.IntelIndex` of the same indicators,
which also applies expiry and the allow-list, and returns the real hits.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vigil.intel.index import (
    DOMAIN_FIELDS,
    FILENAME_FIELDS,
    HASH_FIELDS,
    IP_FIELDS,
    REGKEY_FIELDS,
    URL_FIELDS,
    AllowList,
    IntelHit,
    IntelIndex,
)
from vigil.intel.model import Indicator, IndicatorType
from vigil.schema.ecs import EVENT_COLUMNS, flatten

_COLUMNS = {name: kind for name, kind in EVENT_COLUMNS}
_HASHES = (IndicatorType.SHA256, IndicatorType.SHA1, IndicatorType.MD5)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _list(values: Iterable[str]) -> str:
    return "[" + ", ".join(_literal(v) for v in sorted(set(values))) + "]"


def _scalar(field: str) -> str:
    """A field as a VARCHAR expression: its column, or its value in the JSON document."""
    if field in _COLUMNS:
        return '"' + field + '"'
    return f"json_extract_string(doc, {_literal('$.' + field)})"


def _as_list(field: str) -> str:
    """A field as a VARCHAR[] expression, whether it holds one value or a list."""
    if _COLUMNS.get(field, "").endswith("[]"):
        return '"' + field + '"'
    return f"[{_scalar(field)}]"


def _ipv4_number(var: str) -> str:
    parts = " + ".join(
        f"TRY_CAST(split_part({var}, '.', {n}) AS BIGINT) * {256 ** (4 - n)}" for n in range(1, 5)
    )
    return f"({parts})"


def _network_condition(networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """A lambda body on ``x`` true when address x may be inside one of the networks."""
    ranges = []
    for net in networks:
        if net.version == 4:
            ranges.append(
                f"{_ipv4_number('x')} BETWEEN {int(net.network_address)} "
                f"AND {int(net.broadcast_address)}"
            )
        elif net.prefixlen >= 16 and int(net.network_address) >> 112:
            first = f"{int(net.network_address) >> 112:x}:"
            ranges.append(f"starts_with(lower(x), {_literal(first)})")
        else:
            ranges.append("contains(x, ':')")
    return " OR ".join(dict.fromkeys(ranges))


@dataclass(frozen=True)
class RetroHunt:
    """A retro-hunt: the SQL to run over ``events`` and the index that confirms its rows.

    Attributes:
        sql: One SELECT over the ``events`` view; empty when there is nothing to look for.
        index: The indicators as a matcher, for :meth:`confirm`.
        fields: The event fields the query looks at.
    """

    sql: str
    index: IntelIndex
    fields: tuple[str, ...]

    def confirm(
        self, rows: Iterable[Mapping[str, Any]]
    ) -> list[tuple[dict[str, Any], list[IntelHit]]]:
        """The rows that really show an indicator, each as a flat event with its hits.

        Args:
            rows: Rows of :attr:`sql` as column -> value (``doc`` may be a JSON string).
        """
        found = []
        for row in rows:
            flat = dict(row)
            doc = flat.pop("doc", None)
            if isinstance(doc, str):
                doc = json.loads(doc)
            if isinstance(doc, Mapping):
                flat = {**flatten(doc), **{k: v for k, v in flat.items() if v is not None}}
            hits = self.index.match(flat)
            if hits:
                found.append((flat, hits))
        return found


def retro_hunt(
    indicators: Iterable[Indicator],
    since: datetime | None = None,
    allow: AllowList | None = None,
    now: datetime | None = None,
) -> RetroHunt:
    """The query that finds past sightings of indicators, typically those an import added.

    Args:
        indicators: What to look for (expired and allow-listed ones are left out).
        since: Only events at or after this time.
        allow: The allow-list to honour when confirming.
        now: The moment for expiry (default: now).

    Returns:
        The hunt; run ``sql`` on a tenant cursor (e.g. ``vigil.hunt.sql.run_hunt``) and pass the
        rows to :meth:`RetroHunt.confirm`.
    """
    index = IntelIndex(indicators, allow, now)
    by_type: dict[IndicatorType, list[Indicator]] = {}
    for indicator in index.indicators():
        by_type.setdefault(indicator.type, []).append(indicator)

    conditions: list[str] = []
    for algo in _HASHES:
        hashes = [i.value for i in by_type.get(algo, ())]
        fields = [f for f in HASH_FIELDS if f.endswith(f".{algo.value}")] if hashes else []
        conditions += [f"lower({_scalar(f)}) IN {_in(hashes)}" for f in fields]
    addresses = [
        i.value for t in (IndicatorType.IPV4, IndicatorType.IPV6) for i in by_type.get(t, ())
    ]
    networks = [ipaddress.ip_network(i.value) for i in by_type.get(IndicatorType.CIDR, ())]
    for field in IP_FIELDS if addresses or networks else ():
        if addresses:
            conditions.append(f"list_has_any({_as_list(field)}, {_list(addresses)})")
        if networks:
            body = _network_condition(networks)
            conditions.append(f"len(list_filter({_as_list(field)}, lambda x: {body})) > 0")
    domains = [i.value for i in by_type.get(IndicatorType.DOMAIN, ())]
    for field in DOMAIN_FIELDS if domains else ():
        name = f"lower(rtrim({_scalar(field)}, '.'))"
        parents = (
            f"list_transform(range(len(string_split({name}, '.'))), "
            f"lambda i: array_to_string(string_split({name}, '.')[i + 1:], '.'))"
        )
        conditions.append(f"list_has_any({parents}, {_list(domains)})")
    urls = [i.value for i in by_type.get(IndicatorType.URL, ())]
    # URLs are compared as stored and confirmed after normalising; hosts differing only in
    # case are found through the lower-case comparison.
    conditions += [
        f"lower({_scalar(f)}) IN {_in(u.lower() for u in urls)}" for f in URL_FIELDS if urls
    ]
    names = [i.value.lower() for i in by_type.get(IndicatorType.FILENAME, ())]
    conditions += [f"lower({_scalar(f)}) IN {_in(names)}" for f in FILENAME_FIELDS if names]
    keys = [i.value.partition("|")[0] for i in by_type.get(IndicatorType.REGKEY, ())]
    conditions += [
        f"contains(lower({_scalar(f)}), {_literal(k)})" for f in REGKEY_FIELDS for k in keys
    ]

    if not conditions:
        return RetroHunt("", index, ())
    where = "(" + "\n   OR ".join(conditions) + ")"
    if since is not None:
        where += f'\n  AND "@timestamp" >= TIMESTAMPTZ {_literal(since.isoformat())}'
    sql = f'SELECT * FROM events\nWHERE {where}\nORDER BY "@timestamp"'
    return RetroHunt(sql, index, index.fields)


def _in(values: Iterable[str]) -> str:
    return "(" + ", ".join(_literal(v) for v in sorted(set(values))) + ")"
