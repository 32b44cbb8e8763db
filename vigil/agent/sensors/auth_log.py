"""Logins and privilege use from the system's auth log or the systemd journal.

Follows the first existing file of ``/var/log/auth.log`` (Debian, Ubuntu) and
``/var/log/secure`` (RHEL family); without one, follows the journal through ``journalctl`` for
the sshd, sudo, su, PAM and account-tool identifiers. Lines are parsed by
:mod:`vigil.logsources.authlog` into ECS: ssh logins and invalid users, sudo commands and
refusals, su, PAM sessions and authentication failures, user and group changes. Each event
keeps its raw line in ``event.original``.

The first start begins at the end of the log; later starts resume where the last run stopped
(the position lives in ``STATE_DIR``), across rotation and truncation, so nothing written
meanwhile is lost. Re-read lines keep their ``event.id`` (derived from the file inode and
offset, or the journal cursor), so the server drops repeats.

Options (``SensorContext.options``):
    auth_source: ``auto`` (default: file if one exists, else journal), ``file`` or ``journal``.
    auth_log_paths: candidate files (default ``/var/log/auth.log``, ``/var/log/secure``).
    auth_poll_interval: seconds between reads of the file (0.05-60, default 0.5).
    journalctl: the ``journalctl`` executable (default ``journalctl``).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from datetime import UTC, datetime
from typing import Any

from vigil.agent.errors import AgentError, NotApplicable
from vigil.agent.hostinfo.follow import FileFollower, Line
from vigil.agent.hostinfo.journal import JournalFollower
from vigil.agent.processes import event_base
from vigil.agent.sensors.base import Sensor, SensorContext
from vigil.logsources.authlog import (
    AUTH_PROGRAMS,
    SyslogRecord,
    auth_document,
    auth_fields,
    parse_syslog,
)

log = logging.getLogger(__name__)

DEFAULT_PATHS = ("/var/log/auth.log", "/var/log/secure")
DEFAULT_INTERVAL = 0.5
INTERVAL_RANGE = (0.05, 60.0)
POSITION_FILE = "auth_log.position.json"
CURSOR_FILE = "auth_log.journal.cursor"
_COUNTERS = ("events", "lines", "parse_errors", "ignored", "rotations", "truncations", "errors")


class AuthLogSensor(Sensor):
    """Emits ssh, sudo, su, PAM session and account-change events from the auth log or journal."""

    name = "auth_log"
    shed_order = 60
    supported_os = ("linux",)
    requires_root = True
    version = "1"

    def __init__(self, context: SensorContext) -> None:
        super().__init__(context)
        options = context.options
        self._paths = [str(p) for p in options.get("auth_log_paths", DEFAULT_PATHS)]
        self._journalctl = str(options.get("journalctl", "journalctl"))
        self._source: str | None = None
        self._file: FileFollower | None = None
        self._journal: JournalFollower | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._interval = DEFAULT_INTERVAL

    def check_compatible(self) -> None:
        """Pick the source: an existing auth log file, else a journal with entries.

        Raises:
            NotApplicable: Neither an auth log file nor a usable journal exists.
            AgentError: The ``auth_source`` option is not ``auto``, ``file`` or ``journal``.
        """
        wanted = self.context.options.get("auth_source", "auto")
        if wanted not in ("auto", "file", "journal"):
            raise AgentError(
                f"auth_log option auth_source={wanted!r} is invalid: use auto, file or journal"
            )
        if wanted in ("auto", "file") and any(os.path.isfile(p) for p in self._paths):
            self._source = "file"
            return
        if wanted == "file":
            raise NotApplicable(
                f"no auth log at {', '.join(self._paths)}: install a syslog daemon (rsyslog) "
                "or set auth_log_paths"
            )
        reason = (
            f"{self._journalctl} is not installed"
            if shutil.which(self._journalctl) is None
            else self._journal_follower().unusable()
        )
        if reason is None:
            self._source = "journal"
            return
        raise NotApplicable(
            f"no auth log at {', '.join(self._paths)} and no journal to follow ({reason}): "
            "install rsyslog or run systemd-journald"
        )

    def start(self) -> None:
        """Open the source at the saved position (or its end) and follow it on a thread.

        Raises:
            NotApplicable: No source is available (see :meth:`check_compatible`).
            AgentError: The ``auth_poll_interval`` option is invalid.
        """
        interval = self.context.options.get("auth_poll_interval", DEFAULT_INTERVAL)
        low, high = INTERVAL_RANGE
        if isinstance(interval, bool) or not isinstance(interval, int | float):
            interval = -1.0
        if not low <= interval <= high:
            message = (
                f"auth_log option auth_poll_interval="
                f"{self.context.options['auth_poll_interval']!r} is invalid: "
                f"use seconds from {low} to {high} (default {DEFAULT_INTERVAL})"
            )
            self.set_state("failed", message)
            raise AgentError(message)
        self._interval = float(interval)
        if self._source is None:
            self.check_compatible()
        for counter in _COUNTERS:
            self.count(counter, 0)

        self._stop.clear()
        if self._source == "file":
            self._file = FileFollower(
                self._paths, os.path.join(self.context.state_dir, POSITION_FILE)
            )
            if self._file.open():
                message = f"following {self._file.path}"
            else:
                message = f"waiting for {' or '.join(self._paths)} to appear"
            target = self._follow_file
        else:
            self._journal = self._journal_follower()
            self._journal.start()
            target = self._follow_journal
            message = f"following the journal for {', '.join(AUTH_PROGRAMS)}"
        self._thread = threading.Thread(target=target, name="vigil-auth-log", daemon=True)
        self._thread.start()
        self.set_state("running", message)

    def stop(self) -> None:
        """Stop following and save the position; nothing on the host was changed."""
        self._stop.set()
        if self._journal is not None:
            self._journal.stop()
        if self._thread is not None:
            self._thread.join(timeout=self._interval + 10)
            self._thread = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        self.set_state("stopped")

    def _journal_follower(self) -> JournalFollower:
        return JournalFollower(
            list(AUTH_PROGRAMS),
            os.path.join(self.context.state_dir, CURSOR_FILE),
            self._journalctl,
        )

    def _follow_file(self) -> None:
        assert self._file is not None
        follower = self._file
        while True:
            try:
                rotations, truncations = follower.rotations, follower.truncations
                lines = follower.read()
                for line in lines:
                    self._handle_line(line)
                follower.commit()
                self.count("rotations", follower.rotations - rotations)
                self.count("truncations", follower.truncations - truncations)
            except Exception as exc:
                self.count("errors")
                log.warning("auth_log cannot read %s: %s", follower.path, exc)
                log.debug("auth_log read traceback", exc_info=True)
                lines = []
            # Read again at once while a backlog is being drained; wait only when idle.
            if not lines and self._stop.wait(self._interval):
                break
            if self._stop.is_set():
                break

    def _handle_line(self, line: Line) -> None:
        self.count("lines")
        original = line.text.decode("utf-8", errors="backslashreplace").rstrip("\r")
        if not original.strip():
            return
        record = parse_syslog(original)
        if record is None:
            self.count("parse_errors")
            log.debug("auth_log: no syslog header in %.200r", original)
            return
        self._emit(record, original, f"authlog:{line.device}:{line.inode}:{line.offset}")

    def _follow_journal(self) -> None:
        assert self._journal is not None
        journal = self._journal
        for entry in journal.entries():
            try:
                cursor = str(entry.get("__CURSOR", ""))
                self._handle_entry(entry, cursor)
                if cursor:
                    journal.commit(cursor)
            except Exception as exc:
                self.count("errors")
                log.warning("auth_log cannot handle a journal entry: %s", exc)
                log.debug("auth_log journal traceback", exc_info=True)
        if not self._stop.is_set():
            reason = journal.exit_reason() or "journalctl ended"
            self.set_state("failed", f"{reason}; restart the agent to follow the journal again")
            log.warning("auth_log stopped following the journal: %s", reason)

    def _handle_entry(self, entry: dict[str, Any], cursor: str) -> None:
        self.count("lines")
        message = entry.get("MESSAGE")
        if isinstance(message, list):  # the journal sends non-UTF-8 messages as byte lists
            message = bytes(message).decode("utf-8", errors="backslashreplace")
        program = entry.get("SYSLOG_IDENTIFIER")
        try:
            moment = datetime.fromtimestamp(int(entry["__REALTIME_TIMESTAMP"]) / 1e6, UTC)
        except (KeyError, TypeError, ValueError):
            moment = None
        if not isinstance(message, str) or not isinstance(program, str) or moment is None:
            self.count("parse_errors")
            return
        pid_text = str(entry.get("SYSLOG_PID") or entry.get("_PID") or "")
        pid = int(pid_text) if pid_text.isdigit() else None
        hostname = str(entry.get("_HOSTNAME") or self.context.host_name)
        record = SyslogRecord(moment.astimezone(), hostname, program, pid, message)
        tag = f"{program}[{pid}]" if pid is not None else program
        self._emit(record, f"{tag}: {message}", f"journal:{cursor}")

    def _emit(self, record: SyslogRecord, original: str, unique: str) -> None:
        fields = auth_fields(record.program, record.message)
        if fields is None:
            self.count("ignored")
            return
        document = auth_document(record, fields, original)
        base = event_base(
            self.context,
            record.timestamp.timestamp(),
            document["event"]["type"][0],
            document["event"]["action"],
            unique,
        )
        document["event"]["id"] = base["event"]["id"]
        document["host"] = base["host"]
        document["agent"] = base["agent"]
        self.context.emit(document)
        self.count("events")
