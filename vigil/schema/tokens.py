"""Enrollment tokens: the secret an agent presents, with the CA fingerprint it must pin.

Form: ``vgl1.<secret>.<sha256 of the CA certificate, hex>``. Carrying the fingerprint in the
token means one string is all an installer needs to join a host safely.
"""

from __future__ import annotations

import re

from vigil.schema.errors import SchemaError

PREFIX = "vgl1"
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


def make_enroll_token(secret: str, ca_fingerprint: str) -> str:
    return f"{PREFIX}.{secret}.{ca_fingerprint}"


def parse_enroll_token(token: str) -> tuple[str, str | None]:
    """Split a token into its secret and CA fingerprint (None for a bare secret)."""
    parts = token.strip().split(".")
    if len(parts) == 3 and parts[0] == PREFIX:
        if not _FINGERPRINT.match(parts[2]):
            raise SchemaError("the enrollment token's CA fingerprint is not 64 hex digits")
        return parts[1], parts[2]
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    raise SchemaError("malformed enrollment token; create one with 'vigil enroll-token create'")


def normalize_fingerprint(value: str) -> str:
    """Accept ``AA:BB:...`` or plain hex; return lower-case hex or raise SchemaError."""
    cleaned = value.replace(":", "").strip().lower()
    if not _FINGERPRINT.match(cleaned):
        raise SchemaError(f"CA fingerprint must be a SHA-256 in hex, got {value!r}")
    return cleaned
