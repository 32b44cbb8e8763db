"""Field mapping from Sigma's taxonomy to ECS, read from ``fieldmap.yml``.

The mapping is resolved once per rule and field at load time into a :class:`FieldAccessor`, which
reads the value from a flat ECS event. The table itself is data: edit ``fieldmap.yml``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from vigil.detect.errors import DetectError

logger = logging.getLogger(__name__)

FIELDMAP_PATH = Path(__file__).with_name("fieldmap.yml")

# Returned by accessors for a field the event does not have (distinct from a present None).
MISSING: Any = object()

_HASH_ALGORITHMS = (("MD5", "md5"), ("SHA1", "sha1"), ("SHA256", "sha256"))


@dataclass(frozen=True)
class FieldAccessor:
    """How to read one Sigma field from a flat ECS event.

    Attributes:
        sigma_name: The field as the rule writes it.
        keys: Event keys tried in order; the first present one gives the value.
        value_aliases: Sigma value (lower case) to the ECS values that stand for it.
        hashes_of: An ECS hash object whose members are joined Sysmon-style, or None.
    """

    sigma_name: str
    keys: tuple[str, ...]
    value_aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    hashes_of: str | None = None

    def getter(self) -> Callable[[Mapping[str, Any]], Any]:
        """Build the fastest function that returns the field's value or :data:`MISSING`."""
        keys = self.keys
        if self.hashes_of is not None:
            raw = self.sigma_name
            # ECS keeps the import hash beside the file's hashes: process.hash -> process.pe.
            owner = self.hashes_of.removesuffix(".hash")
            members = [(label, f"{self.hashes_of}.{name}") for label, name in _HASH_ALGORITHMS]
            members.append(("IMPHASH", f"{owner}.pe.imphash"))

            def get_hashes(event: Mapping[str, Any]) -> Any:
                written = event.get(raw, MISSING)
                if written is not MISSING:
                    return written  # the record's own text (Sysmon), in its own order
                parts = [f"{label}={event[key]}" for label, key in members if event.get(key)]
                return ",".join(parts) if parts else MISSING

            return get_hashes
        if len(keys) == 1:
            key = keys[0]
            return lambda event: event.get(key, MISSING)
        if len(keys) == 2:
            first, second = keys
            return lambda event: (
                event.get(first, MISSING) if first in event else event.get(second, MISSING)
            )

        def get_first(event: Mapping[str, Any]) -> Any:
            for key in keys:
                if key in event:
                    return event[key]
            return MISSING

        return get_first


class FieldMap:
    """The Sigma-to-ECS field table, with per-product and per-category overrides."""

    def __init__(self, table: Mapping[str, Any], source: str = "<memory>") -> None:
        """Check and index a table shaped like ``fieldmap.yml``.

        Args:
            table: The parsed YAML document.
            source: Where the table came from, for error messages.

        Raises:
            DetectError: The table does not have the expected shape.
        """
        self._source = source
        self._common = self._section(table.get("fields") or {}, "fields")
        self._products = {
            str(name): self._section(entries, f"products.{name}")
            for name, entries in (table.get("products") or {}).items()
        }
        self._categories = {
            str(name): self._section(entries, f"categories.{name}")
            for name, entries in (table.get("categories") or {}).items()
        }

    @classmethod
    def load(cls, path: str | Path = FIELDMAP_PATH) -> FieldMap:
        """Read a field map from a YAML file.

        Raises:
            DetectError: The file is missing, is not YAML, or has the wrong shape.
        """
        try:
            table = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise DetectError(f"cannot read field map {path}: {exc}; fix or restore it") from exc
        if not isinstance(table, Mapping):
            raise DetectError(f"field map {path} must be a YAML mapping with a 'fields' section")
        logger.debug("loading field map %s", path)
        return cls(table, str(path))

    def accessor(self, sigma_name: str, logsource: Mapping[str, str]) -> FieldAccessor:
        """Resolve a Sigma field for a rule's log source.

        Args:
            sigma_name: The field as written in the rule (without modifiers).
            logsource: The rule's logsource (``product``, ``category``, ``service``).

        Returns:
            The accessor; an unmapped field is read under its own name.
        """
        entry = self._categories.get(logsource.get("category", ""), {}).get(sigma_name)
        if entry is None:
            entry = self._products.get(logsource.get("product", ""), {}).get(sigma_name)
        if entry is None:
            entry = self._common.get(sigma_name)
        if entry is None:
            return FieldAccessor(sigma_name, (sigma_name,))
        keys = tuple(entry["fields"])
        if sigma_name not in keys:
            keys += (sigma_name,)
        return FieldAccessor(sigma_name, keys, entry["values"], entry["hashes_of"])

    def table(self) -> dict[str, dict[str, str]]:
        """The mapping as section -> Sigma field -> ECS names, for documentation and tests."""
        sections = {"fields": self._common}
        sections.update({f"products.{k}": v for k, v in self._products.items()})
        sections.update({f"categories.{k}": v for k, v in self._categories.items()})
        return {
            name: {
                sigma: entry["hashes_of"] or ", ".join(entry["fields"])
                for sigma, entry in entries.items()
            }
            for name, entries in sections.items()
        }

    def _section(self, entries: Any, where: str) -> dict[str, dict[str, Any]]:
        if not isinstance(entries, Mapping):
            raise DetectError(f"field map {self._source}: section {where} must be a mapping")
        return {str(name): self._entry(entry, f"{where}.{name}") for name, entry in entries.items()}

    def _entry(self, entry: Any, where: str) -> dict[str, Any]:
        if isinstance(entry, str):
            entry = {"field": entry}
        elif isinstance(entry, list):
            entry = {"fields": entry}
        if not isinstance(entry, Mapping):
            raise DetectError(
                f"field map {self._source}: {where} must be an ECS name, a list or a mapping"
            )
        fields = entry.get("fields") or ([entry["field"]] if "field" in entry else [])
        hashes_of = entry.get("hashes_of")
        if not fields and hashes_of is None:
            raise DetectError(f"field map {self._source}: {where} names no ECS field")
        values = {
            str(sigma).lower(): tuple(str(v) for v in (ecs if isinstance(ecs, list) else [ecs]))
            for sigma, ecs in (entry.get("values") or {}).items()
        }
        return {"fields": [str(f) for f in fields], "values": values, "hashes_of": hashes_of}


@cache
def default_fieldmap() -> FieldMap:
    """The field map shipped with Vigil, read once per process."""
    return FieldMap.load()
