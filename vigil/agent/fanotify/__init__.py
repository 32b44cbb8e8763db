"""fanotify for the file sensor: system call bindings, event parsing and path resolution.

Only notification groups (``FAN_CLASS_NOTIF``) can be created through this package; permission
events, which block the process that triggers them until answered, are out of reach by design.
"""

from __future__ import annotations

from vigil.agent.fanotify.api import FanotifyError
from vigil.agent.fanotify.paths import PathResolver
from vigil.agent.fanotify.records import DirEntry, RawEvent, RecordError, parse

__all__ = ["DirEntry", "FanotifyError", "PathResolver", "RawEvent", "RecordError", "parse"]
