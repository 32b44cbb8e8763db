"""Windows event log files (``.evtx``), read with the ``evtx`` package.

The ``evtx`` package (a Rust parser) renders each record as JSON in the ``{"Event": {"System":
..., "EventData": ...}}`` shape. The native ``_evtxflat`` module turns that text straight into
the flat event every Windows reader yields; records it does not handle (UserData, unusual
values), and every record where it was not built, go through orjson and
:func:`vigil.logsources.windows.from_evtx_json`, which make the same event.

References:
    [MS-EVEN6] BinXml; the ``evtx`` crate and its Python binding ``PyEvtxParser``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from evtx import PyEvtxParser

from vigil.logsources.base import Event, Reader, sniff
from vigil.logsources.errors import CorruptFile
from vigil.logsources.windows import RESERVED_NAMES, from_evtx_json, profile_cache, profile_for

Flatten = Callable[
    [str, str, dict[tuple[str | None, int | None], Any], Callable[..., Any], frozenset[str]],
    dict[str, Any] | None,
]
flatten: Flatten | None
try:
    from vigil.logsources._evtxflat import flatten
except ImportError:  # built at install when a C compiler is there; optional
    flatten = None

logger = logging.getLogger(__name__)

EVTX_MAGIC = b"ElfFile\x00"

# Give up on a file after this many records in a row fail to parse: it is damaged past use.
MAX_CONSECUTIVE_ERRORS = 1000


class EvtxReader(Reader):
    """Windows ``.evtx`` files: Sysmon, Security, System, PowerShell and any other channel."""

    name = "evtx"
    reads = "Windows event log files (.evtx): Sysmon, Security, PowerShell, System, others"
    priority = 10

    @classmethod
    def detect(cls, path: Path) -> bool:
        """An EVTX file starts with ``ElfFile\\0``."""
        return sniff(path, len(EVTX_MAGIC)) == EVTX_MAGIC

    def read(self, path: Path) -> Iterator[Event]:
        """Yield every record of the file as a flat ECS event.

        Raises:
            CorruptFile: The file header cannot be read, or records stop parsing altogether.
        """
        shown = str(path)
        if flatten is None:
            _warn_pure_python()
        profiles = profile_cache()
        try:
            records = iter(PyEvtxParser(shown).records_json())
        except (OSError, RuntimeError) as exc:
            raise CorruptFile(
                f"{path}: not a readable EVTX file ({exc}); export the log again with "
                "'wevtutil epl' or check that the copy is complete"
            ) from exc
        failures = 0
        while True:
            try:
                record = next(records)
            except StopIteration:
                return
            except RuntimeError as exc:
                self.records += 1
                self.warn(path, "evtx_record", str(exc))
                failures += 1
                if failures >= MAX_CONSECUTIVE_ERRORS:
                    raise CorruptFile(
                        f"{path}: {failures} records in a row do not parse; the file is damaged "
                        "(recover it with an EVTX carver, or export the log again)"
                    ) from exc
                continue
            if record is None:
                return
            failures = 0
            self.records += 1
            text = record["data"]
            if flatten is not None:
                event = flatten(text, shown, profiles, profile_for, RESERVED_NAMES)
                if event is not None:
                    yield event
                    continue
            try:
                yield from_evtx_json(orjson.loads(text), shown)
            except (KeyError, TypeError, ValueError) as exc:
                self.warn(path, "evtx_shape", f"record {record.get('event_record_id')}: {exc!r}")


@functools.cache
def _warn_pure_python() -> None:
    logger.warning(
        "the native EVTX reader is not built, so EVTX files are read in pure Python at about "
        "half the speed; install a C compiler and the Python headers (gcc, python3-dev) and "
        "reinstall Vigil to build it"
    )
