"""Matching flat ECS events against indicators, at a cost that does not grow with their number.

:class:`IntelIndex` holds one hash table per kind of value (hashes, addresses, domains, URLs,
file names, registry keys) and, for networks, one table per prefix length keyed by the masked
address. A lookup is a few dictionary probes per event field present, whether the index holds
ten indicators or a million: a domain is looked up as itself and as each parent domain, an
address once per distinct prefix length of the networks held.

Expiry and allow-lists are applied to hits only, so they add nothing to events that hit nothing.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from vigil.intel.errors import InvalidIndicator
from vigil.intel.model import (
    AllowEntry,
    Indicator,
    IndicatorType,
    normalize_regkey,
    normalize_url,
)

log = logging.getLogger(__name__)

# The event fields each kind of value is looked up in.
HASH_FIELDS = tuple(
    f"{owner}.hash.{algo}"
    for algo in ("sha256", "sha1", "md5")
    for owner in ("process", "file", "dll", "process.parent")
)
IP_FIELDS = ("destination.ip", "source.ip", "client.ip", "server.ip", "dns.resolved_ip")
DOMAIN_FIELDS = ("dns.question.name", "destination.domain", "url.domain", "server.domain")
URL_FIELDS = ("url.full", "url.original")
FILENAME_FIELDS = ("file.name", "process.name")
REGKEY_FIELDS = ("registry.key", "registry.path")

_HASH_TYPES = (IndicatorType.SHA256, IndicatorType.SHA1, IndicatorType.MD5)
_IP_TYPES = (IndicatorType.IPV4, IndicatorType.IPV6)


@dataclass(frozen=True, slots=True)
class IntelHit:
    """One indicator seen in one event field.

    Attributes:
        indicator: The indicator that matched.
        field: The ECS field it matched in, e.g. ``destination.ip``.
        observed: The field's value as the event has it.
    """

    indicator: Indicator
    field: str
    observed: str

    def as_dict(self) -> dict[str, Any]:
        """The hit as JSON-ready data for an alert."""
        ind = self.indicator
        return {
            "field": self.field,
            "observed": self.observed,
            "type": ind.type.value,
            "value": ind.value,
            "source": ind.source,
            "confidence": ind.confidence,
            "tags": list(ind.tags),
            "reference": ind.reference,
            "description": ind.description,
            "port": ind.port,
            "valid_until": ind.valid_until.isoformat() if ind.valid_until else None,
        }


@lru_cache(maxsize=65536)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _dotted_quad(text: str) -> int | None:
    """A canonical dotted-quad IPv4 address as a number; None for anything else."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    number = 0
    for part in parts:
        if not (part.isascii() and part.isdigit()) or (part[0] == "0" and len(part) > 1):
            return None
        octet = int(part)
        if octet > 255:
            return None
        number = number << 8 | octet
    return number


@lru_cache(maxsize=16384)
def _url(text: str) -> str | None:
    try:
        return normalize_url(text)
    except InvalidIndicator:
        return None


def _parents(name: str) -> Iterable[str]:
    """A domain and each of its parent domains, longest first."""
    name = name.lower().rstrip(".")
    while True:
        yield name
        dot = name.find(".")
        if dot < 0:
            return
        name = name[dot + 1 :]


class AllowList:
    """Values never to alert on: exact values, networks, and domains with their subdomains."""

    def __init__(self, entries: Iterable[AllowEntry] = ()) -> None:
        """Build the lookup tables of a set of allow-list entries."""
        self.entries = list(entries)
        self._values = {e.value.lower() for e in self.entries if e.type is not IndicatorType.CIDR}
        self._networks = [
            ipaddress.ip_network(e.value) for e in self.entries if e.type is IndicatorType.CIDR
        ]

    def __bool__(self) -> bool:
        return bool(self.entries)

    def allows(self, field: str, observed: str) -> bool:
        """Whether a value seen in an event field is allow-listed."""
        if field in IP_FIELDS:
            address = _address(observed)
            if address is None:
                return False
            return str(address) in self._values or any(address in n for n in self._networks)
        if field in DOMAIN_FIELDS:
            return any(p in self._values for p in _parents(observed))
        if field in URL_FIELDS:
            return observed in self._values or _url(observed) in self._values
        return observed.lower() in self._values

    def covers(self, indicator: Indicator) -> bool:
        """Whether an indicator's value itself is allow-listed (it would never alert)."""
        if indicator.type in _IP_TYPES:
            return self.allows("destination.ip", indicator.value)
        if indicator.type is IndicatorType.DOMAIN:
            return self.allows("dns.question.name", indicator.value)
        return indicator.value.lower() in self._values


class IntelIndex:
    """Indicators indexed for matching flat ECS events; build once, match many times."""

    def __init__(
        self,
        indicators: Iterable[Indicator],
        allow: AllowList | None = None,
        now: datetime | None = None,
    ) -> None:
        """Index the indicators that are neither expired at ``now`` nor allow-listed.

        Args:
            indicators: What to match.
            allow: Values never to alert on.
            now: The moment for expiry at build time (default: now); expiry is checked again
                on every hit, so a long-lived index stops matching indicators as they expire.
        """
        now = now or datetime.now(UTC)
        self.allow = allow or AllowList()
        self._hashes: dict[str, list[Indicator]] = {}
        self._ips: dict[str, list[Indicator]] = {}
        # prefix length -> masked network address as int -> indicators, per IP version.
        self._nets: dict[int, dict[int, dict[int, list[Indicator]]]] = {4: {}, 6: {}}
        self._domains: dict[str, list[Indicator]] = {}
        self._urls: dict[str, list[Indicator]] = {}
        self._filenames: dict[str, list[Indicator]] = {}
        self._regkeys: dict[str, list[Indicator]] = {}
        self.size = 0
        for indicator in indicators:
            if indicator.expired(now) or self.allow.covers(indicator):
                continue
            self._add(indicator)
        self._plan = self._build_plan()
        log.debug("intel index: %d indicators, %d fields to check", self.size, len(self._plan))

    def __len__(self) -> int:
        return self.size

    def _add(self, indicator: Indicator) -> None:
        kind = indicator.type
        self.size += 1
        if kind is IndicatorType.CIDR:
            network = ipaddress.ip_network(indicator.value)
            by_length = self._nets[network.version].setdefault(network.prefixlen, {})
            by_length.setdefault(int(network.network_address), []).append(indicator)
            return
        if kind in _HASH_TYPES:
            table, key = self._hashes, indicator.value
        elif kind in _IP_TYPES:
            table, key = self._ips, indicator.value
        elif kind is IndicatorType.DOMAIN:
            table, key = self._domains, indicator.value
        elif kind is IndicatorType.URL:
            table, key = self._urls, indicator.value
        elif kind is IndicatorType.FILENAME:
            table, key = self._filenames, indicator.value.lower()
        else:
            table, key = self._regkeys, indicator.value.partition("|")[0]
        table.setdefault(key, []).append(indicator)

    def _build_plan(self) -> list[tuple[str, Callable[[str], list[Indicator]]]]:
        # Only the fields some indicator could match are read from each event.
        plan: list[tuple[str, Callable[[str], list[Indicator]]]] = []
        if self._hashes:
            plan += [(f, self._lookup_hash) for f in HASH_FIELDS]
        if self._ips or self._nets[4] or self._nets[6]:
            plan += [(f, self._lookup_ip) for f in IP_FIELDS]
        if self._domains:
            plan += [(f, self._lookup_domain) for f in DOMAIN_FIELDS]
        if self._urls:
            plan += [(f, self._lookup_url) for f in URL_FIELDS]
        if self._filenames:
            plan += [(f, self._lookup_filename) for f in FILENAME_FIELDS]
        if self._regkeys:
            plan += [(f, self._lookup_regkey) for f in REGKEY_FIELDS]
        return plan

    def indicators(self) -> Iterator[Indicator]:
        """Every indicator the index holds (not expired at build time, not allow-listed)."""
        tables: list[Mapping[Any, list[Indicator]]] = [self._hashes, self._ips, self._domains]
        tables += [self._urls, self._filenames, self._regkeys]
        tables += [*self._nets[4].values(), *self._nets[6].values()]
        for table in tables:
            for found in table.values():
                yield from found

    @property
    def fields(self) -> tuple[str, ...]:
        """The event fields this index reads."""
        return tuple(field for field, _ in self._plan)

    def match(self, event: Mapping[str, Any]) -> list[IntelHit]:
        """The indicators a flat ECS event shows, after expiry and the allow-list.

        Args:
            event: A flat event keyed by ECS dotted names (lists allowed, e.g.
                ``dns.resolved_ip``).

        Returns:
            One hit per (indicator, field, value), in field order; empty for most events.
        """
        hits: list[IntelHit] = []
        for field, lookup in self._plan:
            value = event.get(field)
            if value is None:
                continue
            for observed in value if isinstance(value, list) else (value,):
                if isinstance(observed, str) and observed:
                    for indicator in lookup(observed):
                        hits.append(IntelHit(indicator, field, observed))
        if hits:
            hits = self._confirm(hits, event)
        return hits

    def _confirm(self, hits: list[IntelHit], event: Mapping[str, Any]) -> list[IntelHit]:
        now = datetime.now(UTC)
        kept = []
        for hit in hits:
            if hit.indicator.expired(now) or self.allow.allows(hit.field, hit.observed):
                continue
            if hit.indicator.type is IndicatorType.REGKEY and not _regdata_matches(hit, event):
                continue
            kept.append(hit)
        return kept

    def _lookup_hash(self, value: str) -> list[Indicator]:
        return self._hashes.get(value) or self._hashes.get(value.lower()) or []

    def _lookup_ip(self, value: str) -> list[Indicator]:
        number = _dotted_quad(value)
        if number is not None:
            # The common case, a canonical IPv4 address, without building an address object.
            found = self._ips.get(value, [])
            if self._nets[4]:
                found = [*found, *self._networks_of(4, number, 32)]
            return found
        address = _address(value)
        if address is None:
            return []
        found = self._ips.get(str(address), [])
        if self._nets[address.version]:
            found = [
                *found,
                *self._networks_of(address.version, int(address), address.max_prefixlen),
            ]
        return found

    def _networks_of(self, version: int, number: int, bits: int) -> list[Indicator]:
        found: list[Indicator] = []
        for length, table in self._nets[version].items():
            shift = bits - length
            found += table.get(number >> shift << shift, ())
        return found

    def _lookup_domain(self, value: str) -> list[Indicator]:
        found: list[Indicator] = []
        for name in _parents(value):
            found += self._domains.get(name, ())
        return found

    def _lookup_url(self, value: str) -> list[Indicator]:
        found = self._urls.get(value)
        if found is None:
            canonical = _url(value)
            found = self._urls.get(canonical, []) if canonical else []
        return found

    def _lookup_filename(self, value: str) -> list[Indicator]:
        return self._filenames.get(value.lower(), [])

    def _lookup_regkey(self, value: str) -> list[Indicator]:
        try:
            key = normalize_regkey(value)
        except InvalidIndicator:
            return []
        # registry.path ends with the value name: its parent is the key.
        parent = key.rpartition("\\")[0]
        return [*self._regkeys.get(key, ()), *self._regkeys.get(parent, ())]


def _regdata_matches(hit: IntelHit, event: Mapping[str, Any]) -> bool:
    """A ``key|data`` indicator also needs the value data written (a Run key alone is normal)."""
    _, sep, data = hit.indicator.value.partition("|")
    if not sep or not data:
        return True
    written = event.get("registry.data.strings") or []
    written = written if isinstance(written, list) else [written]
    return any(data == str(w).lower() for w in written)
