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

import logging
import os
import re
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

# The file header: its size (128, at offset 32), the header block's size (4096, at 40) and the
# chunk count (at 42) end at byte 44; 64 KiB chunks follow the header block.
HEADER_FIELDS_END = 44
HEADER_SIZE = 128
HEADER_BLOCK_SIZE = 4096
CHUNK_SIZE = 65536
_RECORD_RANGE = re.compile(r"record IDs (\d+)\.\.(\d+)")

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

        A chunk that does not parse is counted as the records it held (a warning) and the file
        goes on; a copy shorter than its header says is noted.

        Raises:
            CorruptFile: The file header cannot be read, no record at all can be read, or
                records stop parsing altogether.
        """
        shown = str(path)
        profiles = profile_cache()
        try:
            records = iter(PyEvtxParser(shown).records_json())
        except (OSError, RuntimeError) as exc:
            raise CorruptFile(
                f"{path}: not a readable EVTX file ({exc}); export the log again with "
                "'wevtutil epl' or check that the copy is complete"
            ) from exc
        self._check_length(path)
        failures = 0
        events_read = 0
        # Bound once: this loop runs per record, and its own steps cost a tenth of the reader.
        next_record = records.__next__
        native = flatten
        try:
            while True:
                try:
                    record = next_record()
                except StopIteration:
                    break
                except RuntimeError as exc:
                    lost = _records_in_error(str(exc))
                    self.records += lost
                    self.warn(path, "evtx_record", str(exc), count=lost)
                    failures += 1
                    if failures >= MAX_CONSECUTIVE_ERRORS:
                        raise CorruptFile(
                            f"{path}: {failures} records in a row do not parse; the file is "
                            "damaged (recover it with an EVTX carver, or export the log again)"
                        ) from exc
                    continue
                if record is None:
                    break
                failures = 0
                events_read += 1
                if native is not None:
                    event = native(record["data"], shown, profiles, profile_for, RESERVED_NAMES)
                    if event is not None:
                        yield event
                        continue
                try:
                    yield from_evtx_json(orjson.loads(record["data"]), shown)
                except (KeyError, TypeError, ValueError) as exc:
                    record_id = record.get("event_record_id")
                    self.warn(path, "evtx_shape", f"record {record_id}: {exc!r}")
        finally:
            self.records += events_read
        if events_read == 0 and not self.warnings and self.notes:
            # Cut short before the end of its first chunk: nothing of it is left to read.
            raise CorruptFile(f"{path}: no record could be read: {self.notes[-1]}")
        if events_read == 0 and self.warnings:
            raise CorruptFile(
                f"{path}: no record could be read ({self.first_warning}); the file is damaged "
                "or not an event log (recover it with an EVTX carver, or export the log again)"
            )

    def _check_length(self, path: Path) -> None:
        # Chunks follow the header block and are 64 KiB each; a copy cut short still parses,
        # silently ending early, so compare the size with what the header counts. Read with
        # plain system calls: a buffered file costs as much as a folder's small files' records.
        descriptor = os.open(path, os.O_RDONLY)
        try:
            header = os.pread(descriptor, HEADER_FIELDS_END, 0)
            size = os.fstat(descriptor).st_size
        finally:
            os.close(descriptor)
        if len(header) < HEADER_FIELDS_END:
            return
        size_field = int.from_bytes(header[32:36], "little")
        block = int.from_bytes(header[40:42], "little")
        chunks = int.from_bytes(header[42:44], "little")
        if (size_field, block) != (HEADER_SIZE, HEADER_BLOCK_SIZE):
            return  # not a header to go by; the chunks' own errors tell what is wrong
        expected = block + chunks * CHUNK_SIZE
        if size < expected:
            self.note(
                path,
                f"the file is cut short: its header counts {chunks} "
                f"{'chunk' if chunks == 1 else 'chunks'} ({expected:,} bytes) "
                f"but it has {size:,} bytes, so the records past that point are missing; "
                "copy the log again",
            )


def _records_in_error(message: str) -> int:
    # "Failed to parse chunk containing record IDs 1..38: ..." names the records it lost.
    found = _RECORD_RANGE.search(message)
    if found is None:
        return 1
    first, last = int(found[1]), int(found[2])
    return last - first + 1 if last >= first else 1


def native_reader_built() -> bool:
    """Whether the native EVTX reader was built at install (a C compiler was there)."""
    return flatten is not None
