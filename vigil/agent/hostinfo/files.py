"""Reading host files below a configurable root, so collectors can be pointed at a copy."""

from __future__ import annotations

import hashlib
import os

Item = dict[str, object]

# Inventory files (crontabs, unit files, key files) are small; larger ones are not hashed.
HASH_LIMIT = 16 * 1024 * 1024


def under(root: str, path: str) -> str:
    """``path`` (absolute on the host) inside the tree at ``root``."""
    return os.path.join(root, path.lstrip("/"))


def read_text(path: str) -> str | None:
    """The file's text (undecodable bytes escaped), or ``None`` when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", errors="backslashreplace")
    except OSError:
        return None


def sha256_file(path: str) -> str | None:
    """Hex SHA-256 of a regular file, or ``None`` when unreadable or over :data:`HASH_LIMIT`."""
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size > HASH_LIMIT:
                return None
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def list_files(folder: str) -> list[str]:
    """Sorted paths of the regular files directly in ``folder`` (none if it is missing)."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [
        os.path.join(folder, name)
        for name in names
        if os.path.isfile(os.path.join(folder, name)) and not name.startswith(".")
    ]
