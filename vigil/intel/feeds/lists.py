"""CSV feeds (abuse.ch style) and plain lists of values, one or more to a line.

CSV: lines starting with ``#`` are comments; the header is the first uncommented row or, as
URLhaus and ThreatFox write it, the last comment line that reads like one (``# id,dateadded,...``).
Columns are recognised by name (:data:`VALUE_COLUMNS` and the context columns below). A CSV
without a recognisable header is read as a plain list.

Plain list: ``#`` and ``;`` start comments; every whitespace- or comma-separated token is a
value whose type is detected (hash by length, IP, network, URL, domain); tokens that look like
none are skipped as invalid.

Reference: https://feodotracker.abuse.ch/blocklist/ (CSV layout),
https://www.misp-project.org/openapi/#tag/Feeds (free-text feeds).
"""

from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path
from typing import Any

from vigil.intel.feeds.base import FeedReader, FeedResult, fetch_text, parse_time
from vigil.intel.model import IndicatorType, detect_type

log = logging.getLogger(__name__)

# Header names (lower case) of the column holding the indicator, and its type (None: detect).
VALUE_COLUMNS: dict[str, IndicatorType | None] = {
    "dst_ip": IndicatorType.IPV4,
    "ip": None,
    "ip_address": None,
    "ioc": None,
    "ioc_value": None,
    "indicator": None,
    "value": None,
    "url": IndicatorType.URL,
    "domain": IndicatorType.DOMAIN,
    "host": None,
    "sha256_hash": IndicatorType.SHA256,
    "sha256": IndicatorType.SHA256,
    "sha1_hash": IndicatorType.SHA1,
    "sha1": IndicatorType.SHA1,
    "md5_hash": IndicatorType.MD5,
    "md5": IndicatorType.MD5,
}
PORT_COLUMNS = ("dst_port", "port")
MALWARE_COLUMNS = ("malware", "malware_printable", "signature", "threat")
FIRST_SEEN_COLUMNS = ("first_seen_utc", "first_seen", "dateadded", "date_added")
LAST_SEEN_COLUMNS = ("last_online", "last_seen", "last_seen_utc")
TAG_COLUMNS = ("tags", "threat_type")
CONFIDENCE_COLUMNS = ("confidence_level", "confidence")
_SEPARATORS = re.compile(r"[\s,]+")


class CsvReader(FeedReader):
    """Indicators from a CSV blocklist with a header row (abuse.ch Feodo Tracker, URLhaus...)."""

    name = "csv"
    formats = "CSV with header, '#' comments, quoted fields"

    def read(self, location: str | Path) -> FeedResult:
        """Read one CSV feed; each data row gives one indicator or one skip record."""
        text = fetch_text(location)
        result = FeedResult(self.source_name(location))
        header, rows = _split_header(text.splitlines())
        if header is None:
            log.info("%s has no recognisable CSV header; reading it as a plain list", location)
            read_tokens(text, result)
            return result
        column = next(c for c in header if c in VALUE_COLUMNS)
        for line, row in rows:
            record = dict(zip(header, (v.strip() for v in row), strict=False))
            value = record.get(column, "")
            kind = VALUE_COLUMNS[column] or detect_type(value)
            if kind is None:
                result.skip(line, "invalid", f"{value!r} is no known indicator type")
                continue
            result.add(kind, value, line, **_context(record))
        return result


class PlainListReader(FeedReader):
    """Indicators from a plain list: any number of values per line, each type detected."""

    name = "list"
    formats = "text, one or more values per line, '#' comments"

    def read(self, location: str | Path) -> FeedResult:
        """Read every value of a plain list."""
        result = FeedResult(self.source_name(location))
        read_tokens(fetch_text(location), result)
        return result


def read_tokens(text: str, result: FeedResult) -> None:
    """Add every value of a plain list to a result, detecting each one's type."""
    for line in text.splitlines():
        line = re.split(r"\s[#;]|^[#;]", line, maxsplit=1)[0]
        for token in _SEPARATORS.split(line.strip().strip('"')):
            token = token.strip('"')
            if not token:
                continue
            kind = detect_type(token)
            if kind is None:
                result.skip(token, "invalid", f"{token!r} is no known indicator type")
            else:
                result.add(kind, token, token)


def _split_header(lines: list[str]) -> tuple[list[str] | None, list[tuple[str, list[str]]]]:
    last_comment: list[str] | None = None
    header: list[str] | None = None
    rows: list[tuple[str, list[str]]] = []
    for line in lines:
        if not line.strip():
            continue
        if line.lstrip().startswith("#"):
            fields = _fields(line.lstrip().lstrip("#"))
            if any(f in VALUE_COLUMNS for f in fields):
                last_comment = fields
            continue
        row = next(csv.reader(io.StringIO(line)))
        if header is None:
            fields = [f.strip().lower() for f in row]
            if any(f in VALUE_COLUMNS for f in fields):
                header = fields
                continue
            header = last_comment
            if header is None:
                return None, []
        rows.append((line, row))
    return header, rows


def _fields(line: str) -> list[str]:
    return [f.strip().lower() for f in next(csv.reader(io.StringIO(line.strip())), [])]


def _first(record: dict[str, str], names: tuple[str, ...]) -> str:
    return next((record[n] for n in names if record.get(n)), "")


def _context(record: dict[str, str]) -> dict[str, Any]:
    context: dict[str, Any] = {}
    port = _first(record, PORT_COLUMNS)
    if port.isdigit():
        context["port"] = int(port)
    tags = {t.strip().lower() for t in re.split(r"[,;|]", _first(record, TAG_COLUMNS)) if t}
    malware = _first(record, MALWARE_COLUMNS)
    if malware and malware.lower() not in ("none", "n/a", "unknown"):
        tags.add(malware.lower())
        context["description"] = malware
    context["tags"] = tuple(sorted(t for t in tags if t))
    context["first_seen"] = parse_time(_first(record, FIRST_SEEN_COLUMNS))
    context["last_seen"] = parse_time(_first(record, LAST_SEEN_COLUMNS))
    confidence = _first(record, CONFIDENCE_COLUMNS)
    if confidence.isdigit():
        context["confidence"] = min(int(confidence), 100)
    return context
