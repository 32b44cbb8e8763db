"""Follow the systemd journal through ``journalctl -f -o json``, resuming after a saved cursor.

Each journal entry carries a ``__CURSOR`` naming its position. The caller hands an entry on and
then calls :meth:`JournalFollower.commit` with its cursor; the follower saves the latest cursor
at most once a second and on stop, and the next start passes it to ``--after-cursor``. A crash
can thus repeat up to a second of entries (their cursors make the repeats recognisable), and
never skips one. On the very first start it begins at the end of the journal (``-n 0``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

SAVE_INTERVAL = 1.0


class JournalFollower:
    """Runs ``journalctl`` for a set of syslog identifiers and yields its entries.

    Args:
        identifiers: ``SYSLOG_IDENTIFIER`` values to follow (``sshd``, ``sudo``...).
        state_path: File holding the cursor of the last entry handed on.
        journalctl: The ``journalctl`` executable.
    """

    def __init__(self, identifiers: list[str], state_path: str, journalctl: str) -> None:
        self.identifiers = identifiers
        self.state_path = state_path
        self.journalctl = journalctl
        self._process: subprocess.Popen[bytes] | None = None
        self._cursor: str | None = None
        self._saved: str | None = None
        self._saved_at = 0.0

    def unusable(self) -> str | None:
        """Why the journal cannot be followed here, or ``None`` when it can.

        The journal counts as usable when ``journalctl`` runs and returns at least one entry.
        """
        try:
            result = subprocess.run(
                [self.journalctl, "-q", "--no-pager", "-n", "1", "-o", "json"],
                capture_output=True,
                timeout=15,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{self.journalctl} cannot run: {exc}"
        if result.returncode != 0 or not result.stdout.strip():
            detail = result.stderr.decode(errors="replace").strip() or "no entries"
            return f"{self.journalctl} shows no journal ({detail})"
        return None

    def start(self) -> None:
        """Start ``journalctl -f`` after the saved cursor, or at the end on a first start."""
        self._saved = self._load()
        position = ["--after-cursor", self._saved] if self._saved else ["-n", "0"]
        matches = [f"SYSLOG_IDENTIFIER={name}" for name in self.identifiers]
        command = [self.journalctl, "-f", "-q", "--no-pager", "-o", "json", *position, *matches]
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        log.debug("following the journal: %s", " ".join(command))

    def entries(self) -> Iterator[dict[str, Any]]:
        """Yield journal entries until ``journalctl`` ends (on :meth:`stop` or on failure)."""
        assert self._process is not None and self._process.stdout is not None
        for raw in self._process.stdout:
            try:
                entry = json.loads(raw)
            except ValueError:
                log.warning("journalctl wrote a line that is not JSON: %.200r", raw)
                continue
            if isinstance(entry, dict):
                yield entry

    def exit_reason(self) -> str | None:
        """Why ``journalctl`` ended, or ``None`` while it runs or after a requested stop."""
        process = self._process
        if process is None or process.poll() is None or process.returncode in (0, -15):
            return None
        error = process.stderr.read().decode(errors="replace").strip() if process.stderr else ""
        return f"journalctl exited with status {process.returncode}: {error or 'no message'}"

    def commit(self, cursor: str, force: bool = False) -> None:
        """Note that the entry at ``cursor`` was handed on; saved at most once a second."""
        self._cursor = cursor
        now = time.monotonic()
        if force or now - self._saved_at >= SAVE_INTERVAL:
            self._save()
            self._saved_at = now

    def stop(self) -> None:
        """Stop our ``journalctl``; the reader of :meth:`entries` then sees the end."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        """Release the pipes and save the last cursor; call after the reader has finished."""
        self.stop()
        if self._process is not None:
            for stream in (self._process.stdout, self._process.stderr):
                if stream is not None:
                    stream.close()
            self._process = None
        self._save()

    def _save(self) -> None:
        if self._cursor is None or self._cursor == self._saved:
            return
        temporary = f"{self.state_path}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(self._cursor)
        os.replace(temporary, self.state_path)
        self._saved = self._cursor

    def _load(self) -> str | None:
        try:
            with open(self.state_path, encoding="utf-8") as handle:
                return handle.read().strip() or None
        except FileNotFoundError:
            return None
