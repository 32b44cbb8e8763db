"""Which Sigma log sources an ECS event belongs to.

Sigma rules name a log source (``product``, ``category``, ``service``); Vigil events name what
happened in ECS terms (``event.category``, ``event.type``, ``host.os.type``, ``event.module``).
This module translates the second into the first, and gives the index keys a rule is filed
under so that an event is only tested against the rules of its log sources.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from itertools import product as cartesian
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogSource:
    """A Sigma log source; None means "not stated" (a rule) or "not known" (an event)."""

    product: str | None = None
    category: str | None = None
    service: str | None = None

    @classmethod
    def from_mapping(cls, logsource: Mapping[str, str]) -> LogSource:
        """Build from a rule's ``logsource`` mapping (lower-cased, extra keys ignored)."""

        def get(key: str) -> str | None:
            value = logsource.get(key)
            return str(value).lower() if value else None

        return cls(get("product"), get("category"), get("service"))

    def generalisations(self) -> Iterator[LogSource]:
        """Every log source a rule could state and still apply to this event's log source.

        A rule that leaves an attribute out applies whatever the event has there, so the event
        ``(linux, process_creation, None)`` is looked up under four keys, from most specific on.
        """
        options = [(value, None) if value is not None else (None,) for value in self]
        for combination in cartesian(*options):
            yield LogSource(*combination)

    def covers(self, other: LogSource) -> bool:
        """Whether a rule stating this log source applies to an event of ``other``."""
        return all(mine is None or mine == theirs for mine, theirs in zip(self, other, strict=True))

    def __iter__(self) -> Iterator[str | None]:
        return iter((self.product, self.category, self.service))


def _as_set(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset((value.lower(),))
    return frozenset(str(item).lower() for item in value)


# (Sigma category, test on event.category and event.type), first match wins per category.
CategoryTest = Callable[[frozenset[str], frozenset[str], Mapping[str, Any]], bool]
CATEGORY_ROUTES: tuple[tuple[str, CategoryTest], ...] = (
    ("process_creation", lambda cats, types, _: "process" in cats and "start" in types),
    ("process_termination", lambda cats, types, _: "process" in cats and "end" in types),
    ("file_event", lambda cats, types, _: "file" in cats and "creation" in types),
    ("file_change", lambda cats, types, _: "file" in cats and "change" in types),
    ("file_delete", lambda cats, types, _: "file" in cats and "deletion" in types),
    (
        "dns_query",
        lambda cats, _, event: "network" in cats and bool(event.get("dns.question.name")),
    ),
    (
        "network_connection",
        lambda cats, _, event: "network" in cats and not event.get("dns.question.name"),
    ),
)

# ECS host.os.type values to Sigma products; an event without host.os.type is a Linux event,
# because the Vigil agent runs on Linux.
PRODUCTS = {"linux": "linux", "windows": "windows", "macos": "macos"}
DEFAULT_PRODUCT = "linux"


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def logsource_key(event: Mapping[str, Any]) -> tuple[Any, ...]:
    """Every field :func:`event_logsources` reads: events with equal keys have equal sources.

    Cheaper than working the sources out, so callers remember sources by this key.
    """
    get = event.get
    return (
        get("host.os.type"),
        get("event.module"),
        _frozen(get("event.category")),
        _frozen(get("event.type")),
        _frozen(get("vigil.sigma.category")),
        bool(get("dns.question.name")),
    )


def event_logsources(event: Mapping[str, Any]) -> list[LogSource]:
    """Tell which Sigma log sources a flat ECS event belongs to.

    Args:
        event: A flat ECS event (dotted keys).

    Returns:
        One log source per matching category (from ``event.category``/``event.type``, plus
        any Sigma categories a reader declared in ``vigil.sigma.category``), each carrying the
        product and the service
        (``event.module``, e.g. ``auditd`` or ``sshd``); a bare ``(product, None, service)``
        when no category fits. Never empty.
    """
    os_type = event.get("host.os.type")
    product = PRODUCTS.get(str(os_type).lower(), str(os_type).lower()) if os_type else None
    product = product or DEFAULT_PRODUCT
    module = event.get("event.module")
    service = str(module).lower() if module else None

    cats = _as_set(event.get("event.category"))
    types = _as_set(event.get("event.type"))
    found = [
        LogSource(product, category, service)
        for category, test in CATEGORY_ROUTES
        if test(cats, types, event)
    ]
    # Readers of third-party logs know the exact Sigma categories of a record (registry_set,
    # image_load, ps_script...) that ECS categories cannot express; they declare them here.
    declared = _as_set(event.get("vigil.sigma.category"))
    have = {source.category for source in found}
    found += [LogSource(product, category, service) for category in sorted(declared - have)]
    return found or [LogSource(product, None, service)]
