"""Indicators of compromise and allow-list entries, with their values in one canonical form.

Every feed reader turns what it reads into :class:`Indicator` objects through :func:`normalize`,
so the matcher, the store and retro-hunts compare like with like: hashes and domains lower case,
IP addresses in Python's canonical text, networks with their host bits cleared, URLs with a lower
case scheme and host and no fragment.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from urllib.parse import urlsplit, urlunsplit

from vigil.intel.errors import InvalidIndicator


class IndicatorType(StrEnum):
    """What an indicator's value is, and so which event fields it is compared with."""

    SHA256 = "sha256"
    SHA1 = "sha1"
    MD5 = "md5"
    IPV4 = "ipv4"
    IPV6 = "ipv6"
    CIDR = "cidr"
    DOMAIN = "domain"
    URL = "url"
    FILENAME = "filename"
    # A Windows registry key with optional value data ("key|data"); matched only on Windows
    # registry events, which Linux agents never produce.
    REGKEY = "regkey"


HASH_LENGTHS = {IndicatorType.MD5: 32, IndicatorType.SHA1: 40, IndicatorType.SHA256: 64}
_HEX = re.compile(r"[0-9a-f]+")
# A DNS name of at least two labels; underscores are allowed because real hosts use them.
# Extensions of Windows programs and scripts that are no top-level domain: a bare value ending in
# one is a file name. (.com, .sh, .py, .zip are domains too, so a list's "x.com" stays a domain.)
_FILE_EXTENSIONS = frozenset(
    (
        "exe", "dll", "sys", "bat", "cmd", "ps1", "psm1", "vbs", "vbe", "jse", "hta", "msi",
        "scr", "lnk", "wsf", "cpl", "ocx", "jar",
    )
)  # fmt: skip
_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)+[a-z0-9-]{2,63}")
_HIVES = (
    "hkey_local_machine\\",
    "hkey_current_user\\",
    "hkey_users\\",
    "hklm\\",
    "hkcu\\",
    "hku\\",
)
_DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21}


@dataclass(frozen=True, slots=True)
class Indicator:
    """One indicator of compromise as a feed states it.

    Attributes:
        type: What the value is.
        value: The value in canonical form (see :func:`normalize`).
        source: The feed it came from, e.g. ``feodotracker`` or a STIX bundle's file name.
        confidence: 0-100, the feed's confidence when it states one, else 50.
        first_seen: When the feed first saw it, if it says.
        last_seen: When the feed last saw it, if it says.
        valid_until: After this moment the indicator no longer matches.
        tags: Malware families, labels and feed tags, lower case.
        reference: Where it is described: a STIX indicator id or a MISP event uuid.
        port: The port a network indicator was seen on (context only: matching is by address).
        description: Free text from the feed, for the analyst.
    """

    type: IndicatorType
    value: str
    source: str
    confidence: int = 50
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    valid_until: datetime | None = None
    tags: tuple[str, ...] = ()
    reference: str = ""
    port: int | None = None
    description: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        """What makes an indicator unique in the store: one row per (source, type, value)."""
        return (self.source, self.type.value, self.value)

    def expired(self, now: datetime) -> bool:
        """Whether the indicator is past its ``valid_until`` at ``now``."""
        return self.valid_until is not None and self.valid_until <= now


@dataclass(frozen=True, slots=True)
class AllowEntry:
    """A value never to alert on: an exact value, an address inside a network, or a domain.

    A domain entry also covers its subdomains; a CIDR entry covers every address inside it.
    """

    type: IndicatorType
    value: str
    reason: str = ""
    added: datetime = field(default_factory=lambda: datetime.now(UTC))


def normalize(kind: IndicatorType | str, value: str) -> tuple[IndicatorType, str]:
    """Check a value against its type and return it in canonical form.

    IPv4 and IPv6 values written as networks (``10.0.0.0/8``) become ``cidr``; single-address
    networks (``/32``, ``/128``) become plain addresses.

    Args:
        kind: The type the feed claims.
        value: The value as the feed wrote it.

    Returns:
        The type (possibly refined, see above) and the canonical value.

    Raises:
        InvalidIndicator: The value is not a valid indicator of that type.
    """
    kind = IndicatorType(kind)
    text = value.strip()
    if not text:
        raise InvalidIndicator(f"empty {kind} value")
    if kind in HASH_LENGTHS:
        text = text.lower()
        if len(text) != HASH_LENGTHS[kind] or not _HEX.fullmatch(text):
            raise InvalidIndicator(f"{value!r} is not a {kind} hash ({HASH_LENGTHS[kind]} hex)")
        return kind, text
    if kind in (IndicatorType.IPV4, IndicatorType.IPV6, IndicatorType.CIDR):
        return _normalize_ip(kind, text)
    if kind is IndicatorType.DOMAIN:
        return kind, normalize_domain(text)
    if kind is IndicatorType.URL:
        return kind, normalize_url(text)
    if kind is IndicatorType.FILENAME:
        if "/" in text or "\\" in text:
            text = re.split(r"[/\\]", text)[-1]
        if not text:
            raise InvalidIndicator(f"{value!r} is a directory, not a file name")
        return kind, text
    return kind, normalize_regkey(text)


def _normalize_ip(kind: IndicatorType, text: str) -> tuple[IndicatorType, str]:
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise InvalidIndicator(f"{text!r} is not an IP address or network: {exc}") from exc
    if network.num_addresses == 1:
        address = network.network_address
        found = IndicatorType.IPV4 if address.version == 4 else IndicatorType.IPV6
        if kind is not IndicatorType.CIDR and kind is not found:
            raise InvalidIndicator(f"{text!r} is an {found} address, not {kind}")
        return found, str(address)
    return IndicatorType.CIDR, str(network)


def normalize_domain(text: str) -> str:
    """A domain lower case, without a trailing dot, IDNs in their ASCII (punycode) form.

    Raises:
        InvalidIndicator: It is not a DNS name of at least two labels.
    """
    name = text.strip().rstrip(".").lower()
    try:
        name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError as exc:
        raise InvalidIndicator(f"{text!r} is not a valid internationalised domain") from exc
    if not _DOMAIN.fullmatch(name):
        raise InvalidIndicator(f"{text!r} is not a domain name")
    return name


def normalize_url(text: str) -> str:
    """A URL with lower-case scheme and host, no default port, no fragment, ``/`` for no path.

    Raises:
        InvalidIndicator: It has no scheme or no host.
    """
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as exc:
        raise InvalidIndicator(f"{text!r} is not a URL: {exc}") from exc
    if not parts.scheme or not parts.hostname:
        raise InvalidIndicator(f"{text!r} is not an absolute URL (scheme://host/...)")
    scheme = parts.scheme.lower()
    host = parts.hostname.rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or _DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def normalize_regkey(text: str) -> str:
    """A registry key (optionally ``key|data``) lower case, hive prefix and slashes trimmed."""
    key, sep, data = text.partition("|")
    key = key.strip().strip("\\").lower()
    for hive in _HIVES:
        if key.startswith(hive):
            key = key[len(hive) :]
            break
    if not key:
        raise InvalidIndicator(f"{text!r} names no registry key")
    return f"{key}|{data.strip().lower()}" if sep else key


def detect_type(value: str) -> IndicatorType | None:
    """Guess the type of a bare value from a plain list; None when it looks like none of them."""
    text = value.strip()
    lowered = text.lower()
    if _HEX.fullmatch(lowered):
        for kind, length in HASH_LENGTHS.items():
            if len(lowered) == length:
                return kind
        return None
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        pass
    else:
        if network.num_addresses > 1:
            return IndicatorType.CIDR
        return IndicatorType.IPV4 if network.version == 4 else IndicatorType.IPV6
    if "://" in text:
        return IndicatorType.URL
    stem, dot, extension = lowered.rpartition(".")
    if dot and stem and extension in _FILE_EXTENSIONS and not any(c in text for c in "/\\"):
        return IndicatorType.FILENAME
    if _DOMAIN.fullmatch(lowered.rstrip(".")):
        return IndicatorType.DOMAIN
    return None
