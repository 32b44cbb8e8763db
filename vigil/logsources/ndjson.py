"""Newline-delimited JSON exports of Windows and Linux telemetry, one event per line.

Each line is recognised on its own, so a file may mix shapes:

* **Winlogbeat / ECS**: ``winlog.event_id``, ``winlog.channel``, ``winlog.event_data.*`` (nested
  objects or dotted keys).
* **OTRF Security-Datasets (Mordor)**: flat winlogbeat/nxlog-style lines, the EventData fields
  at the top level beside ``EventID``, ``Channel``, ``SourceName``, ``Hostname``.
* **Azure Log Analytics** exports: ``Type`` ``WindowsEvent`` (``EventData`` as a JSON string),
  ``SecurityEvent`` (``EventData`` as XML), ``Syslog`` whose message is a Sysmon for Linux
  ``<Event>`` XML record, and ``VMConnection`` network flows.

Windows and Sysmon records go through :mod:`vigil.logsources.windows`. Lines of other shapes
(e.g. AUOMS audit records in ``Syslog``) are counted as ``unsupported_record`` warnings.

References:
    Winlogbeat exported fields; OTRF Security-Datasets; Azure Monitor tables ``WindowsEvent``,
    ``SecurityEvent``, ``Syslog``, ``VMConnection``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from vigil.logsources.base import Event, Reader, first_line, utc_timestamp
from vigil.logsources.errors import CorruptFile
from vigil.logsources.windows import event_data_xml, from_event_xml, windows_event

logger = logging.getLogger(__name__)

# Collector fields of nxlog and logstash in OTRF lines: about the shipping, not the record.
_OTRF_METADATA = frozenset(
    (
        "@timestamp", "@version", "host", "port", "tags", "TimeCreated", "Hostname", "SourceName",
        "EventID", "Channel", "Task", "Level", "Keywords", "ProviderGuid", "Opcode",
        "OpcodeValue", "RecordNumber", "ExecutionProcessID", "ThreadID", "EventTime",
        "EventReceivedTime", "SourceModuleName", "SourceModuleType", "Severity",
        "SeverityValue", "Version", "Category", "Message",
    )
)  # fmt: skip


class NdjsonReader(Reader):
    """Winlogbeat, OTRF and Azure Log Analytics NDJSON exports of Windows and Sysmon events."""

    name = "ndjson"
    reads = "NDJSON: Winlogbeat/ECS, OTRF Security-Datasets, Azure Log Analytics (Sysmon Linux)"
    priority = 30

    @classmethod
    def detect(cls, path: Path) -> bool:
        """The first line is a JSON object in one of the shapes this reader knows."""
        line = first_line(path)
        if not (line.startswith("{") and line.endswith("}")):
            return False
        try:
            document = json.loads(line)
        except ValueError:
            return False
        return isinstance(document, dict) and _shape(document) is not None

    def read(self, path: Path) -> Iterator[Event]:
        """Yield one flat ECS event per recognised line.

        Raises:
            CorruptFile: The file cannot be opened as text.
        """
        shown = str(path)
        try:
            handle = path.open(encoding="utf-8-sig", errors="backslashreplace")
        except OSError as exc:
            raise CorruptFile(f"{path}: cannot be opened ({exc}); check permissions") from exc
        with handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                self.records += 1
                try:
                    document = json.loads(line)
                except ValueError as exc:
                    self.warn(path, "json_syntax", f"line {number}: {exc}")
                    continue
                shape = _shape(document) if isinstance(document, dict) else None
                if shape is None:
                    self.warn(path, "unsupported_record", f"line {number}: unknown shape")
                    continue
                try:
                    if shape == "sysmon_syslog":
                        event, complete = _sysmon_syslog(document, shown)
                        if not complete:
                            self.warn(path, "truncated_record", f"line {number}: read in part")
                    else:
                        event = _CONVERTERS[shape](document, shown)
                except (KeyError, TypeError, ValueError) as exc:
                    self.warn(path, f"{shape}_record", f"line {number}: {exc}")
                    continue
                yield event


def _get(document: Mapping[str, Any], dotted: str) -> Any:
    """A field by dotted name, whether the document is flat, nested or a mix."""
    if dotted in document:
        return document[dotted]
    node: Any = document
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _shape(document: Mapping[str, Any]) -> str | None:
    if _get(document, "winlog.event_id") is not None:
        return "winlogbeat"
    kind = document.get("Type")
    if kind in ("WindowsEvent", "SecurityEvent", "VMConnection"):
        return str(kind)
    if kind == "Syslog":
        message = str(document.get("SyslogMessage", ""))
        return "sysmon_syslog" if message.lstrip().startswith("<Event") else "unsupported"
    if "EventID" in document and ("Channel" in document or "SourceName" in document):
        return "otrf"
    return None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _winlogbeat(document: Mapping[str, Any], path: str) -> Event:
    data = _get(document, "winlog.event_data")
    if not isinstance(data, Mapping):
        prefix = "winlog.event_data."
        data = {
            key[len(prefix) :]: value for key, value in document.items() if key.startswith(prefix)
        }
    return windows_event(
        data=data,
        event_id=_int(_get(document, "winlog.event_id")),
        channel=_get(document, "winlog.channel"),
        provider=_get(document, "winlog.provider_name"),
        computer=_get(document, "winlog.computer_name") or _get(document, "host.name"),
        timestamp=utc_timestamp(document.get("@timestamp")),
        path=path,
        record_id=_get(document, "winlog.record_id"),
    )


def _otrf(document: Mapping[str, Any], path: str) -> Event:
    data = {key: value for key, value in document.items() if key not in _OTRF_METADATA}
    event = windows_event(
        data=data,
        event_id=_int(document.get("EventID")),
        channel=document.get("Channel"),
        provider=document.get("SourceName"),
        computer=document.get("Hostname"),
        timestamp=utc_timestamp(document.get("@timestamp") or document.get("TimeCreated")),
        path=path,
        record_id=document.get("RecordNumber"),
    )
    if "Message" in document:
        event["message"] = document["Message"]
    return event


def _windows_event(document: Mapping[str, Any], path: str) -> Event:
    data = document.get("EventData")
    fields = json.loads(data) if isinstance(data, str) and data else data
    return windows_event(
        data=fields if isinstance(fields, Mapping) else {},
        event_id=_int(document.get("EventID")),
        channel=document.get("Channel"),
        provider=document.get("Provider"),
        computer=document.get("Computer"),
        timestamp=utc_timestamp(document.get("TimeGenerated")),
        path=path,
    )


def _security_event(document: Mapping[str, Any], path: str) -> Event:
    data = document.get("EventData")
    return windows_event(
        data=event_data_xml(data) if isinstance(data, str) and data else {},
        event_id=_int(document.get("EventID")),
        channel=document.get("Channel"),
        provider=document.get("EventSourceName"),
        computer=document.get("Computer"),
        timestamp=utc_timestamp(document.get("TimeGenerated")),
        path=path,
    )


def _sysmon_syslog(document: Mapping[str, Any], path: str) -> tuple[Event, bool]:
    fallback = utc_timestamp(document.get("TimeGenerated"))
    event, complete = from_event_xml(str(document["SyslogMessage"]), path, fallback)
    if "Computer" not in event and document.get("Computer"):
        event["host.name"] = document["Computer"]
    return event, complete


def _vm_connection(document: Mapping[str, Any], path: str) -> Event:
    # One flow summary of Azure VM Insights; the OS of the machine is not in the record.
    event: Event = {
        "log.file.path": path,
        "event.kind": "event",
        "event.category": ["network"],
        "event.type": ["connection"],
        "event.module": "vminsights",
    }
    timestamp = utc_timestamp(document.get("TimeGenerated"))
    if timestamp is not None:
        event["@timestamp"] = timestamp
    for name in ("SourceIp", "DestinationIp", "DestinationPort", "Protocol", "Direction"):
        if name in document:
            event[name] = document[name]
    copies = {
        "SourceIp": "source.ip",
        "DestinationIp": "destination.ip",
        "DestinationPort": "destination.port",
        "Protocol": "network.transport",
        "ProcessName": "process.name",
        "Computer": "host.name",
    }
    for name, ecs in copies.items():
        if name in document:
            event[ecs] = document[name]
    direction = str(document.get("Direction", "")).lower()
    if direction in ("outbound", "inbound"):
        event["network.direction"] = "egress" if direction == "outbound" else "ingress"
        event["Initiated"] = "true" if direction == "outbound" else "false"
    return event


def _unsupported(document: Mapping[str, Any], path: str) -> Event:
    raise ValueError(f"{document.get('Type')} record of this kind is not read (yet)")


# Sysmon-in-syslog lines are converted by the reader itself: a cut record yields and warns.
_CONVERTERS = {
    "winlogbeat": _winlogbeat,
    "otrf": _otrf,
    "WindowsEvent": _windows_event,
    "SecurityEvent": _security_event,
    "VMConnection": _vm_connection,
    "unsupported": _unsupported,
}
