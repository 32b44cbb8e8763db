"""fanotify: system call bindings, event parsing and path resolution.

The file sensor uses notification groups (``FAN_CLASS_NOTIF``) from ``api``, which cannot create
anything else. Permission groups, whose events block the process that triggers them until
answered, come only from ``permission``, which only the exec guard of ``block_exec`` imports.
"""

from __future__ import annotations

from vigil.agent.fanotify.api import FanotifyError
from vigil.agent.fanotify.paths import PathResolver
from vigil.agent.fanotify.records import DirEntry, RawEvent, RecordError, parse

__all__ = ["DirEntry", "FanotifyError", "PathResolver", "RawEvent", "RecordError", "parse"]
