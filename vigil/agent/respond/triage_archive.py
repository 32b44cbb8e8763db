"""The triage archive: a tar.gz whose last member, ``manifest.json``, lists everything in it.

The archive is never larger than its cap. After each member the compressor is flushed
(``Z_SYNC_FLUSH``), so the bytes written so far are known exactly; a member is added only when
what is written, plus the worst case of deflate on the member (zlib's ``deflateBound``), plus
the worst case of the manifest and the end of the archive, fit. What does not fit is not written
and is listed as skipped with the reason ``over_total_cap``. Members leave a tenth of the cap
(up to 256 KiB) to the lists of links and skips, so a full bundle still says what it left out.

Members are written as plain files, mode 0600, owner 0, with the original times; the original
mode and owner are in the manifest, so extracting a bundle never creates set-user-id files or
links. The manifest lists each member (name, source, category, size, sha256), each symbolic link
met (not followed) and each item skipped with its reason; past ``MAX_LISTED`` links or skips,
or when their lines would not fit, they are only counted.

Reference: POSIX.1-2001 pax archive format; RFC 1951 and 1952 (deflate, gzip); zlib.h
(``deflateBound``, ``Z_SYNC_FLUSH``).
"""

from __future__ import annotations

import collections
import gzip
import io
import json
import os
import tarfile
import time
import zlib
from pathlib import Path
from typing import IO, Any

MANIFEST = "manifest.json"
FORMAT = "vigil-triage/1"
MAX_LISTED = 5000
COMPRESS_LEVEL = 6
_BLOCK = tarfile.BLOCKSIZE
# The end of the archive is two zero blocks and zeros up to a 10240-byte record: deflate makes
# well under 200 bytes of it.
_END = 512
# The gzip trailer (CRC-32 and size) and the last deflate block.
_TRAILER = 64
# Room for the manifest's own fields (host, params, counts, notes) before any entry.
_MANIFEST_BASE = 4 * 1024
# Members leave this share of the cap (at most _LIST_ROOM_MAX) to the lists of links and skips.
_LIST_ROOM_SHARE = 10
_LIST_ROOM_MAX = 256 * 1024


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


def _deflate_bound(size: int) -> int:
    """The most deflate makes of ``size`` bytes ending in a sync flush (zlib's deflateBound).

    The constant covers the block headers and the empty stored block of the flush.
    """
    return size + (size >> 12) + (size >> 14) + (size >> 25) + 64


def _line_size(record: dict[str, Any]) -> int:
    """What ``record`` adds to the manifest as written by :meth:`Bundle.finish`."""
    text = json.dumps(record, indent=1, default=str)
    # Nested two levels deep, every line of it gains two spaces; then a comma and a newline.
    return len(text) + 2 * (text.count("\n") + 1) + 2


class Bundle:
    """A triage archive being written, with its manifest and its size budget."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        """Start the archive at ``path``; it and its manifest will fit in ``max_bytes``."""
        self.path = path
        self.max_bytes = max_bytes
        self.entries: list[dict[str, Any]] = []
        self.links: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.skip_counts: collections.Counter[str] = collections.Counter()
        self.link_count = 0
        self.unlisted = 0
        self._names: set[str] = set()
        self._manifest = _MANIFEST_BASE
        self._list_room = min(max_bytes // _LIST_ROOM_SHARE, _LIST_ROOM_MAX)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._raw = os.fdopen(fd, "wb")
        self._gzip = gzip.GzipFile(
            filename="", mode="wb", fileobj=self._raw, compresslevel=COMPRESS_LEVEL
        )
        self._tar = tarfile.open(fileobj=self._gzip, mode="w", format=tarfile.PAX_FORMAT)

    def has(self, name: str) -> bool:
        """Whether a member ``name`` is already in the archive."""
        return name in self._names

    def _fits(self, member: int, line: int, keep: int = 0) -> bool:
        """Whether a member of ``member`` tar bytes and a manifest line of ``line`` fit."""
        pending = _deflate_bound(member) if member else 0
        manifest = _deflate_bound(3 * _BLOCK + _padded(self._manifest + line))
        return self._raw.tell() + pending + manifest + _END + _TRAILER + keep <= self.max_bytes

    def add(
        self,
        name: str,
        data: IO[bytes],
        size: int,
        record: dict[str, Any],
        mtime: float | None = None,
    ) -> bool:
        """Write ``size`` bytes of ``data`` as member ``name``, listed with ``record``.

        ``record`` gets the member's name and size; it should carry ``source``, ``category``
        and ``sha256``. Returns False, having written nothing, when the member would not fit
        (the caller records the skip).
        """
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = 0o600
        info.mtime = int(mtime if mtime is not None else time.time())
        header = len(info.tobuf(self._tar.format, self._tar.encoding, self._tar.errors))
        record = {"name": name, "size": size, **record}
        line = _line_size(record)
        if name in self._names or not self._fits(header + _padded(size), line, self._list_room):
            return False
        self._tar.addfile(info, data)
        self._gzip.flush(zlib.Z_SYNC_FLUSH)
        self._names.add(name)
        self._manifest += line
        self.entries.append(record)
        return True

    def add_bytes(self, name: str, data: bytes, record: dict[str, Any]) -> bool:
        """Write generated content as member ``name``; see :meth:`add`."""
        return self.add(name, io.BytesIO(data), len(data), record)

    def fits(self, size: int) -> bool:
        """Whether a member of ``size`` bytes could still be added (before reading it)."""
        return self._fits(3 * _BLOCK + _padded(size), 1024, self._list_room)

    def skip(self, source: str, category: str, reason: str, detail: str) -> None:
        """Record that ``source`` was not collected, and why."""
        self.skip_counts[reason] += 1
        record = {"source": source, "category": category, "reason": reason, "detail": detail}
        self._list(self.skipped, record)

    def link(self, source: str, target: str, category: str) -> None:
        """Record a symbolic link met in a collected place (it is never followed)."""
        self.link_count += 1
        self._list(self.links, {"source": source, "target": target, "category": category})

    def _list(self, into: list[dict[str, Any]], record: dict[str, Any]) -> None:
        line = _line_size(record)
        if len(into) >= MAX_LISTED or not self._fits(0, line):
            self.unlisted += 1
            return
        self._manifest += line
        into.append(record)

    def finish(self, header: dict[str, Any]) -> dict[str, Any]:
        """Write ``manifest.json`` (``header`` plus the lists and counts) and close the archive.

        Returns the manifest as written.
        """
        manifest = {
            "format": FORMAT,
            **header,
            "counts": {
                "entries": len(self.entries),
                "bytes": sum(e["size"] for e in self.entries),
                "links": self.link_count,
                "skipped": sum(self.skip_counts.values()),
                "skipped_by_reason": dict(sorted(self.skip_counts.items())),
                "unlisted": self.unlisted,
            },
            "entries": self.entries,
            "links": self.links,
            "skipped": self.skipped,
        }
        data = json.dumps(manifest, indent=1, default=str).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(data)
        info.mode = 0o600
        info.mtime = int(time.time())
        self._tar.addfile(info, io.BytesIO(data))
        self._close()
        return manifest

    def abandon(self) -> None:
        """Close the archive without a manifest (the caller deletes it)."""
        self._close()

    def _close(self) -> None:
        # The tar and gzip objects do not own the file under them: close each in turn.
        try:
            self._tar.close()
            self._gzip.close()
        finally:
            self._raw.close()
