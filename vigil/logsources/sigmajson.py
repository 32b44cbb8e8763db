"""SigmaHQ regression test events (``.json``): concatenated pretty-printed ``{"Event": ...}``.

SigmaHQ keeps, next to each rule's regression ``.evtx``, the same records as JSON in the
``evtx`` package's shape, several objects written one after the other (not a JSON array, not
one per line). They are read with a streaming :meth:`json.JSONDecoder.raw_decode` loop and
normalised exactly like EVTX records.

References:
    SigmaHQ ``regression_data/`` and ``tests/regression_tests_runner.py``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

from vigil.logsources.base import Event, Reader, sniff
from vigil.logsources.errors import CorruptFile
from vigil.logsources.windows import from_evtx_json

logger = logging.getLogger(__name__)

_OPENING = re.compile(rb'^\s*\{\s*"Event"\s*:\s*\{')
_SPACE = re.compile(r"\s*")


class SigmaJsonReader(Reader):
    """Concatenated ``{"Event": {"System": ..., "EventData": ...}}`` JSON objects."""

    name = "sigma-json"
    reads = "Windows events as evtx-style JSON objects (SigmaHQ regression .json files)"
    priority = 20

    @classmethod
    def detect(cls, path: Path) -> bool:
        """The file opens with ``{"Event": {`` (whitespace allowed)."""
        return _OPENING.match(sniff(path)) is not None

    def read(self, path: Path) -> Iterator[Event]:
        """Yield each JSON object of the file as a flat ECS event.

        Raises:
            CorruptFile: The file is not UTF-8 text.
        """
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise CorruptFile(
                f"{path}: not UTF-8 JSON ({exc}); re-export the events as UTF-8 JSON"
            ) from exc
        decoder = json.JSONDecoder()
        shown = str(path)
        position = _SPACE.match(text).end()  # type: ignore[union-attr]
        while position < len(text):
            try:
                document, position = decoder.raw_decode(text, position)
            except json.JSONDecodeError as exc:
                self.records += 1
                self.warn(path, "json_syntax", str(exc))
                return  # the rest of the stream has no reliable object boundary
            self.records += 1
            position = _SPACE.match(text, position).end()  # type: ignore[union-attr]
            try:
                yield from_evtx_json(document, shown)
            except (KeyError, TypeError) as exc:
                self.warn(path, "json_shape", f"object {self.records}: {exc!r}")
