"""Follow a growing log file across rotation and truncation, resuming from a saved position.

The follower reads complete lines only and remembers ``(device, inode, offset)`` of the next
unread byte in a small JSON file. The caller hands on each batch of lines, then calls
:meth:`FileFollower.commit`, so a crash between the two re-reads the batch rather than losing it
(delivery is at least once; each line's ``(device, inode, offset)`` names it uniquely, so
duplicates can be dropped downstream).

Rotation by rename (``auth.log`` -> ``auth.log.1`` and a new ``auth.log``) is noticed when the
path names another inode: the rest of the old file is read through the still-open descriptor,
then the new file from its start. Truncation in place (copytruncate) is noticed when the file is
shorter than the offset, and reading starts over at 0. On the very first start there is no saved
position and reading starts at the end of the file; after a restart it resumes at the saved
offset, and if the file was rotated meanwhile, the rotated file is found by its inode among the
siblings (``auth.log.1``...) and read to its end first.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import BinaryIO

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024
# Most bytes read from the followed file per call; the rest is read by the next calls.
READ_LIMIT = 8 * 1024 * 1024


@dataclass(frozen=True)
class Line:
    """One complete line and where it started."""

    text: bytes
    device: int
    inode: int
    offset: int


class FileFollower:
    """Reads new complete lines from the first existing file of ``paths``.

    Args:
        paths: Candidate files, in order of preference (``/var/log/auth.log``...).
        state_path: JSON file holding the position between runs.
    """

    def __init__(self, paths: list[str], state_path: str) -> None:
        self.paths = paths
        self.state_path = state_path
        self.path: str | None = None
        self.rotations = 0
        self.truncations = 0
        self._handle: BinaryIO | None = None
        self._device = 0
        self._inode = 0
        self._offset = 0
        self._committed: tuple[int, int, int] | None = None
        self._pending: list[BinaryIO] = []

    def existing_path(self) -> str | None:
        """The first of ``paths`` that exists now, or ``None``."""
        return next((path for path in self.paths if os.path.isfile(path)), None)

    def open(self) -> bool:
        """Open the file and position at the saved offset, or at its end on a first start.

        Returns:
            Whether a file was opened (``False`` while none of the paths exists).
        """
        path = self.existing_path()
        if path is None:
            return False
        saved = self._load()
        handle = open(path, "rb")
        info = os.fstat(handle.fileno())
        self.path = path
        if saved is None:
            self._attach(handle, info.st_size)
        elif (saved["device"], saved["inode"]) == (info.st_dev, info.st_ino):
            offset = saved["offset"] if saved["offset"] <= info.st_size else 0
            self._attach(handle, offset)
        else:
            rotated = self._find_rotated(path, saved["device"], saved["inode"])
            if rotated is not None:
                rotated.seek(saved["offset"])
                self._pending.append(rotated)
                self.rotations += 1
                log.info("%s was rotated while the agent was stopped; reading the rest", path)
            self._attach(handle, 0)
        return True

    def close(self) -> None:
        """Close every open descriptor; the committed position stays saved."""
        for handle in [*self._pending, *([self._handle] if self._handle else [])]:
            handle.close()
        self._pending.clear()
        self._handle = None

    def read(self) -> list[Line]:
        """Every complete line written since the last read, across a rotation or truncation."""
        if self._handle is None and not self.open():
            return []
        lines: list[Line] = []
        while self._pending:
            old = self._pending[0]
            info = os.fstat(old.fileno())
            lines.extend(self._read_lines(old, info.st_dev, info.st_ino, final=True))
            old.close()
            self._pending.pop(0)
        assert self._handle is not None
        self._check_truncated()
        lines.extend(self._read_from_current())
        if self._rotated():
            # Drain what was written to the old file before the rename, then switch.
            lines.extend(self._read_lines(self._handle, self._device, self._inode, final=True))
            self._handle.close()
            self._handle = None
            self.rotations += 1
            log.info("%s was rotated; following the new file", self.path)
            if self._open_fresh():
                lines.extend(self._read_from_current())
        return lines

    def _open_fresh(self) -> bool:
        """Open the file now at the path from its start (the one that replaced a rotated one)."""
        path = self.existing_path()
        if path is None:
            return False
        self.path = path
        self._attach(open(path, "rb"), 0)
        return True

    def commit(self) -> None:
        """Save the position after the lines returned so far: they were handed on."""
        if self._handle is None:
            return
        position = (self._device, self._inode, self._offset)
        if position == self._committed:
            return
        state = {"device": position[0], "inode": position[1], "offset": position[2]}
        temporary = f"{self.state_path}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(state, handle)
        os.replace(temporary, self.state_path)
        self._committed = position

    def _attach(self, handle: BinaryIO, offset: int) -> None:
        info = os.fstat(handle.fileno())
        handle.seek(offset)
        self._handle = handle
        self._device, self._inode, self._offset = info.st_dev, info.st_ino, offset

    def _load(self) -> dict[str, int] | None:
        try:
            with open(self.state_path, encoding="utf-8") as handle:
                state = json.load(handle)
            return {key: int(state[key]) for key in ("device", "inode", "offset")}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "position file %s is unreadable (%s); starting at the end of the log",
                self.state_path,
                exc,
            )
            return None

    def _find_rotated(self, path: str, device: int, inode: int) -> BinaryIO | None:
        folder, name = os.path.split(path)
        try:
            siblings = sorted(entry for entry in os.listdir(folder) if entry.startswith(name))
        except OSError:
            return None
        for entry in siblings:
            candidate = os.path.join(folder, entry)
            try:
                info = os.stat(candidate)
            except OSError:
                continue
            if (info.st_dev, info.st_ino) == (device, inode):
                return open(candidate, "rb")
        return None

    def _check_truncated(self) -> None:
        assert self._handle is not None
        size = os.fstat(self._handle.fileno()).st_size
        if size < self._offset:
            self.truncations += 1
            log.info("%s was truncated; reading it from the start", self.path)
            self._handle.seek(0)
            self._offset = 0

    def _rotated(self) -> bool:
        if self.path is None:
            return False
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            # Renamed away and not yet recreated: treat as rotated once the new file appears.
            return self.existing_path() is not None
        return (info.st_dev, info.st_ino) != (self._device, self._inode)

    def _read_from_current(self) -> list[Line]:
        assert self._handle is not None
        lines = self._read_lines(self._handle, self._device, self._inode, final=False)
        self._offset = self._handle.tell()
        return lines

    def _read_lines(self, handle: BinaryIO, device: int, inode: int, final: bool) -> list[Line]:
        start = handle.tell()
        data = handle.read() if final else handle.read(READ_LIMIT)
        lines: list[Line] = []
        position = 0
        while True:
            end = data.find(b"\n", position)
            if end < 0:
                break
            lines.append(Line(data[position:end][:MAX_LINE], device, inode, start + position))
            position = end + 1
        rest = data[position:]
        if rest and final:
            # The writer is gone from this file: its unterminated last line is complete.
            lines.append(Line(rest[:MAX_LINE], device, inode, start + position))
        else:
            handle.seek(start + position)
        return lines
