"""STIX 2.1 (and 2.0) bundles: indicators whose patterns name observables we can match.

Each indicator object is parsed with the ``stix2`` library and its pattern with ``stix2``'s
pattern parser. A pattern becomes indicators only when it is one observation, or observations
joined by OR, each comparing with ``=`` one of the properties in :data:`PROPERTIES`, joined by
OR. Anything else (AND, FOLLOWEDBY, qualifiers such as WITHIN or REPEATS, MATCHES, other object
types, non-STIX pattern languages) is recorded as unsupported with the pattern, never guessed at.
Malware an indicator ``indicates`` (by relationship) is added to its tags.

Reference: STIX 2.1, sections 4.7 (indicator) and 9 (patterning),
https://docs.oasis-open.org/cti/stix/v2.1/stix-v2.1.html
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import stix2  # type: ignore[import-untyped]
from stix2 import patterns as sp
from stix2.pattern_visitor import create_pattern_object  # type: ignore[import-untyped]

from vigil.intel.errors import FeedError, UnsupportedPattern
from vigil.intel.feeds.base import FeedReader, FeedResult, fetch_text
from vigil.intel.model import IndicatorType

log = logging.getLogger(__name__)

# (object type, property path) -> indicator type; hash names as STIX spells them and as feeds do.
PROPERTIES: dict[tuple[str, str], IndicatorType] = {
    ("ipv4-addr", "value"): IndicatorType.IPV4,
    ("ipv6-addr", "value"): IndicatorType.IPV6,
    ("domain-name", "value"): IndicatorType.DOMAIN,
    ("url", "value"): IndicatorType.URL,
    ("file", "name"): IndicatorType.FILENAME,
    ("windows-registry-key", "key"): IndicatorType.REGKEY,
    **{
        ("file", f"hashes.{name}"): kind
        for kind, names in {
            IndicatorType.SHA256: ("SHA-256", "SHA256", "sha256", "sha-256"),
            IndicatorType.SHA1: ("SHA-1", "SHA1", "sha1", "sha-1"),
            IndicatorType.MD5: ("MD5", "md5"),
        }.items()
        for name in names
    },
}


class StixReader(FeedReader):
    """Indicators from a STIX 2.x bundle file or URL (``pattern_type`` ``stix`` only)."""

    name = "stix"
    formats = "STIX 2.1 / 2.0 bundle (JSON)"

    def read(self, location: str | Path) -> FeedResult:
        """Read the indicators of one bundle.

        Raises:
            FeedError: The file is not JSON or holds no STIX objects.
        """
        try:
            document = json.loads(fetch_text(location))
        except json.JSONDecodeError as exc:
            raise FeedError(f"{location} is not JSON ({exc}); expected a STIX bundle") from exc
        if not isinstance(document, dict) or not isinstance(document.get("type"), str):
            # Every STIX object and bundle has a type; JSON without one is some other document.
            raise FeedError(
                f"{location} holds no STIX bundle or object (no 'type'); expected a STIX bundle "
                "(give MISP JSON as a MISP event or feed)"
            )
        objects = document.get("objects") if document.get("type") == "bundle" else [document]
        if not isinstance(objects, list):
            raise FeedError(f"{location} is a bundle without an 'objects' list")
        result = FeedResult(self.source_name(location))
        read_objects(objects, result)
        return result


def read_objects(objects: Iterable[Mapping[str, Any]], result: FeedResult) -> None:
    """Add the indicators among STIX objects to a result (the TAXII reader reuses this)."""
    objects = [o for o in objects if isinstance(o, Mapping)]
    malware = {
        o["id"]: str(o.get("name", "")).lower()
        for o in objects
        if o.get("type") == "malware" and o.get("name")
    }
    families: dict[str, set[str]] = {}
    for rel in objects:
        if rel.get("type") == "relationship" and rel.get("relationship_type") == "indicates":
            if rel.get("target_ref") in malware:
                families.setdefault(rel["source_ref"], set()).add(malware[rel["target_ref"]])
    for raw in objects:
        if raw.get("type") == "indicator":
            _read_indicator(raw, families.get(str(raw.get("id")), set()), result)


def _read_indicator(raw: Mapping[str, Any], families: set[str], result: FeedResult) -> None:
    pattern = str(raw.get("pattern", ""))
    try:
        indicator = stix2.parse(dict(raw), allow_custom=True)
    except Exception as exc:  # stix2 raises many unrelated types for one bad object
        result.skip(pattern or str(raw.get("id")), "invalid", f"not a valid STIX indicator: {exc}")
        return
    if indicator.get("pattern_type", "stix") != "stix":
        result.skip(pattern, "unsupported", f"pattern language {indicator['pattern_type']!r}")
        return
    try:
        comparisons = observables(pattern, str(indicator.get("spec_version", "2.0")))
    except UnsupportedPattern as exc:
        result.skip(pattern, "unsupported", str(exc))
        return

    tags = {str(t).lower() for t in indicator.get("indicator_types", ()) or ()}
    tags |= {str(t).lower() for t in indicator.get("labels", ()) or ()}
    context: dict[str, Any] = {
        "confidence": int(indicator.get("confidence", 50)),
        "first_seen": _aware(indicator.get("valid_from")),
        "valid_until": _aware(indicator.get("valid_until")),
        "tags": tuple(sorted(tags | families)),
        "reference": str(indicator["id"]),
        "description": str(indicator.get("name") or indicator.get("description") or ""),
    }
    for kind, value in comparisons:
        result.add(kind, value, pattern, **context)


def observables(pattern: str, version: str = "2.1") -> list[tuple[IndicatorType, str]]:
    """The (type, value) pairs a pattern ORs together.

    Raises:
        UnsupportedPattern: The pattern does not parse, or uses anything but ``=`` comparisons on
            known properties joined by OR.
    """
    try:
        tree = create_pattern_object(pattern, version="2.1" if version >= "2.1" else "2.0")
    except Exception as exc:  # the ANTLR-based parser raises its own exception types
        raise UnsupportedPattern(f"pattern does not parse: {exc}") from exc
    found: list[tuple[IndicatorType, str]] = []
    _walk_observation(tree, found)
    return found


def _walk_observation(node: Any, found: list[tuple[IndicatorType, str]]) -> None:
    if isinstance(node, sp.OrObservationExpression):
        for operand in node.operands:
            _walk_observation(operand, found)
    elif isinstance(node, sp.ObservationExpression):
        _walk_comparison(node.operand, found)
    elif isinstance(node, sp.QualifiedObservationExpression):
        raise UnsupportedPattern(f"qualifier {node.qualifier} (a time window or repeat count)")
    else:
        operator = getattr(node, "operator", type(node).__name__)
        raise UnsupportedPattern(f"observations joined by {operator}: needs several events at once")


def _walk_comparison(node: Any, found: list[tuple[IndicatorType, str]]) -> None:
    if isinstance(node, sp.OrBooleanExpression):
        for operand in node.operands:
            _walk_comparison(operand, found)
        return
    if not isinstance(node, sp.EqualityComparisonExpression) or node.negated:
        operator = getattr(node, "operator", type(node).__name__)
        negated = "NOT " if getattr(node, "negated", False) else ""
        raise UnsupportedPattern(f"comparison {negated}{operator}: only = and OR can be matched")
    path = ".".join(str(part.property_name) for part in node.lhs.property_path)
    kind = PROPERTIES.get((node.lhs.object_type_name, path))
    if kind is None:
        raise UnsupportedPattern(f"property {node.lhs.object_type_name}:{path} is not matched")
    found.append((kind, str(node.rhs.value)))


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return datetime.fromisoformat(value.isoformat())
