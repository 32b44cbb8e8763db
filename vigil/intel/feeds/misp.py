"""MISP feeds: a ``manifest.json`` naming events, each in ``<uuid>.json``; or one event file.

Events are loaded with ``pymisp``'s ``MISPEvent``. Only attributes flagged ``to_ids`` become
indicators (MISP's own rule for what may alert); the others (links, comments, free text) are
counted as filtered. Composite types (``filename|sha256``, ``ip-dst|port``, ``domain|ip``) give
one indicator per matchable part. ``regkey`` and ``regkey|value`` give ``regkey`` indicators,
which match only Windows registry events. Event tags (TLP, galaxies such as malware families)
become the indicators' tags; the event uuid is their reference.

Reference: https://www.misp-project.org/datamodels/ and the MISP feed layout
(https://www.misp-project.org/feeds/).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pymisp import MISPAttribute, MISPEvent

from vigil.intel.errors import FeedError
from vigil.intel.feeds.base import FeedReader, FeedResult, fetch_text, is_url, parse_time
from vigil.intel.model import IndicatorType

log = logging.getLogger(__name__)

# MISP attribute type -> indicator type of each "|"-separated part (None: part not matched).
TYPES: dict[str, tuple[IndicatorType | None, ...]] = {
    "md5": (IndicatorType.MD5,),
    "sha1": (IndicatorType.SHA1,),
    "sha256": (IndicatorType.SHA256,),
    "filename": (IndicatorType.FILENAME,),
    "filename|md5": (IndicatorType.FILENAME, IndicatorType.MD5),
    "filename|sha1": (IndicatorType.FILENAME, IndicatorType.SHA1),
    "filename|sha256": (IndicatorType.FILENAME, IndicatorType.SHA256),
    "malware-sample": (IndicatorType.FILENAME, IndicatorType.MD5),
    "ip-dst": (IndicatorType.IPV4,),
    "ip-src": (IndicatorType.IPV4,),
    "ip-dst|port": (IndicatorType.IPV4, None),
    "ip-src|port": (IndicatorType.IPV4, None),
    "domain": (IndicatorType.DOMAIN,),
    "hostname": (IndicatorType.DOMAIN,),
    "domain|ip": (IndicatorType.DOMAIN, IndicatorType.IPV4),
    "hostname|port": (IndicatorType.DOMAIN, None),
    "url": (IndicatorType.URL,),
}
REGKEY_TYPES = ("regkey", "regkey|value")


class MispReader(FeedReader):
    """Indicators from a MISP feed (directory or URL with ``manifest.json``) or one event file."""

    name = "misp"
    formats = "MISP feed: manifest.json + <uuid>.json events; or one MISP event JSON"

    def read(self, location: str | Path) -> FeedResult:
        """Read every event of a feed, or the one event a file holds.

        Raises:
            FeedError: The manifest or an event is not MISP JSON.
        """
        result = FeedResult(self.source_name(location))
        for uuid_or_file in self._event_locations(location):
            event = MISPEvent()
            try:
                event.load(_load_json(uuid_or_file))
            except (ValueError, KeyError, TypeError) as exc:
                raise FeedError(f"{uuid_or_file} is not a MISP event: {exc}") from exc
            read_event(event, result)
        return result

    def _event_locations(self, location: str | Path) -> list[str | Path]:
        text = str(location)
        if text.endswith("manifest.json"):
            base = text[: -len("manifest.json")]
        elif is_url(location) or Path(location).is_dir():
            base = text.rstrip("/") + "/"
            if not is_url(location) and not Path(base + "manifest.json").is_file():
                raise FeedError(
                    f"{location} is a folder, read as a MISP feed, and has no manifest.json; "
                    "give the feed's folder (manifest.json + <uuid>.json) or a feed file"
                )
        else:
            return [location]
        manifest = _load_json(base + "manifest.json")
        if not isinstance(manifest, dict):
            raise FeedError(f"{base}manifest.json is not a MISP manifest (uuid -> event)")
        log.info("MISP feed %s lists %d events", base, len(manifest))
        return [base + f"{uuid}.json" for uuid in manifest]


def read_event(event: MISPEvent, result: FeedResult) -> None:
    """Add the ``to_ids`` attributes of one event (and of its objects) to a result."""
    tags = tuple(sorted({t.name.lower() for t in event.tags}))
    attributes: list[MISPAttribute] = list(event.attributes)
    for obj in event.objects:
        attributes.extend(obj.attributes)
    for attribute in attributes:
        item = f"{attribute.type} {attribute.value}"
        if not attribute.to_ids:
            result.skip(item, "filtered", "to_ids is false: MISP says not to alert on it")
            continue
        kinds = TYPES.get(attribute.type)
        if attribute.type in REGKEY_TYPES:
            kinds = (IndicatorType.REGKEY,)
            parts = [str(attribute.value)]
        else:
            parts = str(attribute.value).split("|")
        if kinds is None or len(parts) != len(kinds):
            result.skip(item, "unsupported", f"MISP type {attribute.type} is not matched")
            continue
        context = _context(event, attribute, tags)
        if attribute.type.endswith("|port") and parts[-1].isdigit():
            context["port"] = int(parts[-1])
        for kind, part in zip(kinds, parts, strict=True):
            if kind is IndicatorType.IPV4 and ":" in part:
                kind = IndicatorType.IPV6
            if kind is not None:
                result.add(kind, part, item, **context)


def _context(event: MISPEvent, attribute: MISPAttribute, tags: tuple[str, ...]) -> dict[str, Any]:
    own = {t.name.lower() for t in attribute.tags}
    return {
        "first_seen": parse_time(getattr(attribute, "first_seen", None))
        or parse_time(getattr(attribute, "timestamp", None)),
        "last_seen": parse_time(getattr(attribute, "last_seen", None)),
        "tags": tuple(sorted(own.union(tags))),
        "reference": str(event.uuid),
        "description": str(event.info),
    }


def _load_json(location: str | Path) -> Any:
    try:
        return json.loads(fetch_text(location))
    except json.JSONDecodeError as exc:
        raise FeedError(f"{location} is not JSON ({exc}); expected MISP feed JSON") from exc
