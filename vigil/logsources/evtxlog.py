"""Windows event log files (``.evtx``), read with the ``evtx`` package.

The ``evtx`` package (a Rust parser) renders each record as JSON in the ``{"Event": {"System":
..., "EventData": ...}}`` shape; :func:`vigil.logsources.windows.from_evtx_json` turns that into
the flat event every Windows reader yields.

References:
    [MS-EVEN6] BinXml; the ``evtx`` crate and its Python binding ``PyEvtxParser``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import orjson
from evtx import PyEvtxParser

from vigil.logsources.base import Event, Reader, sniff
from vigil.logsources.errors import CorruptFile
from vigil.logsources.windows import from_evtx_json

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
            try:
                yield from_evtx_json(orjson.loads(record["data"]), shown)
            except (KeyError, TypeError, ValueError) as exc:
                self.warn(path, "evtx_shape", f"record {record.get('event_record_id')}: {exc!r}")
