"""Keys in each local user's ``~/.ssh/authorized_keys`` (sshd(8), AUTHORIZED_KEYS FILE FORMAT).

A line is ``[options] keytype base64-key [comment]``. The fingerprint is the one
``ssh-keygen -l`` prints: ``SHA256:`` and the unpadded base64 of the SHA-256 of the decoded key
blob. Lines whose blob does not decode, or does not start with its own key type, are skipped
and counted as malformed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import struct

from vigil.agent.hostinfo.accounts import users
from vigil.agent.hostinfo.files import Item, read_text, under

log = logging.getLogger(__name__)

KEY_FILES = (".ssh/authorized_keys", ".ssh/authorized_keys2")
_KEY = re.compile(
    r"(?:^|\s)(?P<type>(?:ssh|ecdsa|sk)-[A-Za-z0-9@.+-]+) +(?P<blob>[A-Za-z0-9+/]+={0,3})"
    r"(?: +(?P<comment>.*))?$"
)


def fingerprint(blob: bytes) -> str:
    """The ``SHA256:...`` fingerprint of a decoded public key blob."""
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_key_line(line: str) -> Item | None:
    """Type, fingerprint, options and comment of one authorized_keys line; ``None`` if none."""
    match = _KEY.search(line)
    if match is None:
        return None
    try:
        blob = base64.b64decode(match["blob"], validate=True)
        (length,) = struct.unpack(">I", blob[:4])
    except (binascii.Error, struct.error):
        return None
    if blob[4 : 4 + length].decode(errors="replace") != match["type"]:
        return None
    return {
        "type": match["type"],
        "fingerprint": fingerprint(blob),
        "options": line[: match.start()].strip() or None,
        "comment": (match["comment"] or "").strip() or None,
    }


def collect(root: str) -> tuple[dict[str, Item], int]:
    """Authorized keys of every user with a home, keyed ``path:fingerprint``.

    Returns:
        The keys, and how many non-comment lines were malformed.
    """
    found: dict[str, Item] = {}
    malformed = 0
    homes: dict[str, list[str]] = {}
    for user in users(root).values():
        home = str(user["home"] or "")
        if home.startswith("/"):
            homes.setdefault(home, []).append(str(user["name"]))
    for home, names in sorted(homes.items()):
        for relative in KEY_FILES:
            host_path = f"{home.rstrip('/')}/{relative}"
            text = read_text(under(root, host_path))
            if text is None:
                continue
            for line in text.splitlines():
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                key = parse_key_line(line.strip())
                if key is None:
                    malformed += 1
                    log.debug("malformed key line in %s", host_path)
                    continue
                key.update({"path": host_path, "user": names[0]})
                found[f"{host_path}:{key['fingerprint']}"] = key
    return found, malformed
