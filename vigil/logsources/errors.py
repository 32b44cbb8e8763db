"""Errors of the log-source readers.

VigilError
 └── LogSourceError       a log file could not be read
      ├── CorruptFile      the file is not valid in the format its reader expects
      └── NoReader         no reader recognises the file
"""

from __future__ import annotations

from vigil.errors import VigilError


class LogSourceError(VigilError):
    """A log file could not be read; the message names the file and what to do."""


class CorruptFile(LogSourceError):
    """The file is damaged or is not in the format its reader recognised; other files go on."""


class NoReader(LogSourceError):
    """No registered reader recognises the file (not an error to log for every file)."""
