"""Giving freed memory back to the system, so the agent's resident size follows what it holds.

A response action (a triage bundle, a YARA scan, a live process list) builds large short-lived
structures. Python frees them, but glibc keeps the freed heap pages mapped, so the agent's RSS
stays near its peak and the watchdog would judge the agent on memory it no longer uses.
``malloc_trim`` returns those pages; it costs a few milliseconds, so it runs after such an
action and before the watchdog sheds a sensor for memory, not on a timer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def _find_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim with
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _find_malloc_trim()


def release_free_memory() -> None:
    """Collect garbage, then hand the C heap's free pages back to the system where possible."""
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
