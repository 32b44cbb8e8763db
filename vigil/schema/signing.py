"""Signing and checking task bodies with Ed25519 over canonical JSON."""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from vigil.schema.errors import SchemaError


def canonical_json(body: dict[str, Any]) -> str:
    """The one byte-exact form of a body that is signed and checked."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def sign(key: ed25519.Ed25519PrivateKey, body: dict[str, Any]) -> tuple[str, str]:
    """Return the canonical body and its base64 signature."""
    text = canonical_json(body)
    return text, base64.b64encode(key.sign(text.encode())).decode()


def verify(public_key_pem: str, text: str, signature: str) -> dict[str, Any]:
    """Check a signature and return the body; raise SchemaError when it does not verify."""
    key = serialization.load_pem_public_key(public_key_pem.encode())
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SchemaError("the task key is not an Ed25519 public key; re-enroll the agent")
    try:
        key.verify(base64.b64decode(signature), text.encode())
    except (InvalidSignature, ValueError) as exc:
        raise SchemaError("task signature does not verify against the server's task key") from exc
    body = json.loads(text)
    if not isinstance(body, dict):
        raise SchemaError("a signed task body must be a JSON object")
    return body
