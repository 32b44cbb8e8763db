"""Windows event records (Sysmon, Security, PowerShell, System...) as flat ECS events for Sigma.

Every Windows-shaped reader (EVTX, Sigma's regression JSON, Winlogbeat and OTRF NDJSON, Azure
Log Analytics exports, Sysmon for Linux) ends here, so one record looks the same whichever way
it was collected:

* the record's ``EventData`` (or ``UserData``) fields under their own names (``Image``,
  ``CommandLine``, ``TargetFilename``, ``NewProcessName``...), as Sigma's Windows rules name them;
* the ``System`` fields Sigma rules use: ``Channel``, ``EventID``, ``Provider_Name``,
  ``Computer``;
* the ECS fields Vigil's field map prefers, where they are a plain copy (``process.executable``,
  ``process.command_line``, ``file.path``, ``destination.ip``, ``dns.question.name``...);
* routing: ``host.os.type``, ``event.module`` (Sigma's service name for the channel, e.g.
  ``security``, ``sysmon``, ``powershell``), ``event.category``/``event.type`` in ECS terms, and
  ``vigil.sigma.category`` with the exact Sigma categories of the record (``registry_set``,
  ``ps_script``...), for the log sources ECS has no words for.

References:
    Sigma's Windows log-source definitions (``service`` to channel, ``category`` to
    channel and event id); Sysmon event ids (learn.microsoft.com, Sysinternals Sysmon);
    ECS ``event.category``/``event.type`` allowed values.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple
from xml.etree import ElementTree

from vigil.logsources.base import Event, utc_timestamp

logger = logging.getLogger(__name__)

# Channel (lower case) -> Sigma service.
SERVICES: dict[str, str] = {
    "security": "security",
    "system": "system",
    "application": "application",
    "microsoft-windows-sysmon/operational": "sysmon",
    "linux-sysmon/operational": "sysmon",
    "microsoft-windows-powershell/operational": "powershell",
    "powershellcore/operational": "powershell",
    "windows powershell": "powershell-classic",
    "microsoft-windows-taskscheduler/operational": "taskscheduler",
    "microsoft-windows-wmi-activity/operational": "wmi",
    "microsoft-windows-windows defender/operational": "windefend",
    "microsoft-windows-bits-client/operational": "bits-client",
    "microsoft-windows-codeintegrity/operational": "codeintegrity-operational",
    "microsoft-windows-appxdeploymentserver/operational": "appxdeployment-server",
    "microsoft-windows-windows firewall with advanced security/firewall": "firewall-as",
    "msexchange management": "msexchange-management",
    "microsoft-windows-dns client events/operational": "dns-client",
    "dns server": "dns-server",
    "microsoft-windows-ntlm/operational": "ntlm",
    "microsoft-windows-security-mitigations/kernel mode": "security-mitigations",
    "microsoft-windows-security-mitigations/user mode": "security-mitigations",
    "microsoft-windows-terminalservices-localsessionmanager/operational": (
        "terminalservices-localsessionmanager"
    ),
    "microsoft-windows-smbclient/security": "smbclient-security",
    "microsoft-windows-printservice/admin": "printservice-admin",
    "microsoft-windows-printservice/operational": "printservice-operational",
    "openssh/operational": "openssh",
    "microsoft-windows-shell-core/operational": "shell-core",
    "microsoft-windows-lsa/operational": "lsa-server",
    "microsoft-windows-capi2/operational": "capi2",
    "microsoft-windows-driverframeworks-usermode/operational": "driver-framework",
    "microsoft-windows-diagnosis-scripted/operational": "diagnosis-scripted",
    "microsoft-windows-appmodel-runtime/admin": "appmodel-runtime",
}

# Sysmon event id -> (Sigma categories, ECS event.category, ECS event.type).
_SYSMON: dict[int, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    1: (("process_creation",), ("process",), ("start",)),
    2: (("file_change",), ("file",), ("change",)),
    3: (("network_connection",), ("network",), ("connection", "start")),
    4: (("sysmon_status",), ("configuration",), ("info",)),
    5: (("process_termination",), ("process",), ("end",)),
    6: (("driver_load",), ("driver",), ("start",)),
    7: (("image_load",), ("library",), ("start",)),
    8: (("create_remote_thread",), ("process",), ("change",)),
    9: (("raw_access_thread",), ("file",), ("access",)),
    10: (("process_access",), ("process",), ("access",)),
    11: (("file_event",), ("file",), ("creation",)),
    13: (("registry_set", "registry_event"), ("registry",), ("change",)),
    14: (("registry_rename", "registry_event"), ("registry",), ("change",)),
    15: (("create_stream_hash",), ("file",), ("info",)),
    16: (("sysmon_status",), ("configuration",), ("change",)),
    17: (("pipe_created",), ("file",), ("info",)),
    18: (("pipe_created",), ("file",), ("info",)),
    19: (("wmi_event",), ("configuration",), ("creation",)),
    20: (("wmi_event",), ("configuration",), ("creation",)),
    21: (("wmi_event",), ("configuration",), ("creation",)),
    22: (("dns_query",), ("network",), ("protocol",)),
    23: (("file_delete",), ("file",), ("deletion",)),
    24: (("clipboard_capture",), ("process",), ("info",)),
    25: (("process_tampering",), ("process",), ("change",)),
    26: (("file_delete_detected",), ("file",), ("info",)),
    27: (("file_block_executable",), ("file",), ("denied",)),
    28: (("file_block_shredding",), ("file",), ("denied",)),
    29: (("file_executable_detected",), ("file",), ("info",)),
    255: (("sysmon_error",), ("configuration",), ("error",)),
}
# Only the ids whose Sigma category Vigil routes on ECS terms (process start and end, file
# creation, change and deletion, network, DNS) use those ECS types; the others use types the
# routing ignores (info, access, change of a process), so they are never misrouted.

# (service, event id) -> Sigma categories, for non-Sysmon channels.
_OTHER: dict[tuple[str, int], tuple[str, ...]] = {
    ("security", 4688): ("process_creation",),
    ("powershell", 4103): ("ps_module",),
    ("powershell", 4104): ("ps_script",),
    ("powershell-classic", 400): ("ps_classic_start",),
    ("powershell-classic", 600): ("ps_classic_provider_start",),
    ("powershell-classic", 800): ("ps_classic_script",),
}

# EventData name -> ECS name, copied whenever the record has the field.
_ECS_COPIES: dict[str, str] = {
    "Image": "process.executable",
    "CommandLine": "process.command_line",
    "CurrentDirectory": "process.working_directory",
    "ProcessId": "process.pid",
    "ProcessGuid": "process.entity_id",
    "OriginalFileName": "process.pe.original_file_name",
    "Product": "process.pe.product",
    "Company": "process.pe.company",
    "Description": "process.pe.description",
    "FileVersion": "process.pe.file_version",
    "ParentImage": "process.parent.executable",
    "ParentCommandLine": "process.parent.command_line",
    "ParentProcessId": "process.parent.pid",
    "ParentProcessGuid": "process.parent.entity_id",
    "ParentUser": "process.parent.user.name",
    "User": "user.name",
    "TargetFilename": "file.path",
    "SourceIp": "source.ip",
    "SourcePort": "source.port",
    "SourceHostname": "source.domain",
    "DestinationIp": "destination.ip",
    "DestinationPort": "destination.port",
    "DestinationHostname": "destination.domain",
    "Protocol": "network.transport",
    "QueryName": "dns.question.name",
    "QueryResults": "dns.answers.data",
    "QueryStatus": "dns.response_code",
    "ImageLoaded": "dll.path",
    "TargetObject": "registry.path",
}

# Security 4688 names its fields differently; Sigma's mapping for it (NewProcessName is the
# Image, the "ProcessId" of 4688 is the creator, i.e. the parent).
_SECURITY_4688: dict[str, str] = {
    "NewProcessName": "process.executable",
    "CommandLine": "process.command_line",
    "NewProcessId": "process.pid",
    "ParentProcessName": "process.parent.executable",
    "ProcessId": "process.parent.pid",
    "SubjectUserName": "user.name",
}

_LOGONS = {4624: "success", 4625: "failure"}

# Windows Filtering Platform connections (permitted, blocked): the process and both ends.
_CONNECTIONS = {5156: "allowed", 5157: "denied"}
_SECURITY_CONNECTION: dict[str, str] = {
    "ProcessID": "process.pid",
    "Application": "process.executable",
    "SourceAddress": "source.ip",
    "SourcePort": "source.port",
    "DestAddress": "destination.ip",
    "DestPort": "destination.port",
}

# The Security log writes process ids in hex ("0x1fc") and ports as decimal text; ECS, and
# Sysmon, have numbers, so the copies become numbers and a pid seen in one log finds the same
# process in the other. The record's own fields keep the text as written.
_SECURITY_NUMBERS = frozenset(
    ("process.pid", "process.parent.pid", "source.port", "destination.port")
)

# ECS names derived from the copied paths: the file name an intelligence feed or an analyst
# searches for ("mimikatz.exe") is the path's last part, in Windows and in Linux paths.
_NAMES: tuple[tuple[str, str], ...] = (
    ("process.executable", "process.name"),
    ("process.parent.executable", "process.parent.name"),
    ("file.path", "file.name"),
    ("dll.path", "dll.name"),
)

# Sysmon writes the hashes of what an event is about in one field ("SHA1=...,MD5=...,
# SHA256=...,IMPHASH=..."): Sysmon event id -> (that field, whose hashes they are in ECS).
_SYSMON_HASHES: dict[int, tuple[str, str]] = {
    1: ("Hashes", "process"),
    6: ("Hashes", "dll"),  # the driver, whose path is copied to dll.path as ImageLoaded
    7: ("Hashes", "dll"),
    15: ("Hash", "file"),
    23: ("Hashes", "file"),
    26: ("Hashes", "file"),
    29: ("Hashes", "file"),
}


def _hash_keys(owner: str) -> dict[str, str]:
    return {
        "MD5": f"{owner}.hash.md5",
        "SHA1": f"{owner}.hash.sha1",
        "SHA256": f"{owner}.hash.sha256",
        "IMPHASH": f"{owner}.pe.imphash",
    }


# A raw field whose name is an ECS namespace (or dotted) would break the nested form of the
# event; such names are kept under winlog.event_data instead.
RESERVED_NAMES = frozenset(
    (
        "process", "file", "source", "destination", "network", "dns", "dll", "registry", "user",
        "host", "event", "log", "winlog", "vigil", "agent", "ecs", "related", "message",
    )
)  # fmt: skip


def service_of(channel: str | None) -> str | None:
    """Sigma's service name for a Windows channel (``Security`` -> ``security``), or None."""
    if not channel:
        return None
    lowered = channel.lower()
    return SERVICES.get(lowered, lowered)


class Profile(NamedTuple):
    """What every record of one channel and event id gets, worked out once.

    A tuple so that the native EVTX reader can read it: the ECS copies to make from the record's
    fields, the fixed fields (scalars, then lists copied per event), a step that looks at the
    record's own fields where the event id alone does not say enough, the ECS copies that are
    numbers where the record writes them as text, the ECS names to derive from copied paths,
    and the record field holding Sysmon's hashes with the ECS key of each algorithm in it.
    """

    copies: dict[str, str]
    scalars: tuple[tuple[str, Any], ...]
    lists: tuple[tuple[str, tuple[str, ...]], ...]
    finish: Callable[[Event], None] | None
    numbers: frozenset[str]
    names: tuple[tuple[str, str], ...]
    hash_field: str | None
    hash_keys: dict[str, str] | None


# (channel, event id) -> Profile, per os type. Bounded: a hostile file may invent channels.
_PROFILES: dict[str, dict[tuple[str | None, int | None], Profile]] = {"windows": {}, "linux": {}}
_MAX_PROFILES = 4096


def profile_cache(os_type: str = "windows") -> dict[tuple[str | None, int | None], Profile]:
    """The profiles made so far for one os type, by (channel, event id)."""
    return _PROFILES.setdefault(os_type, {})


def profile_for(channel: str | None, event_id: int | None, os_type: str = "windows") -> Profile:
    """The profile of a channel and event id, from the cache or made now."""
    cache = profile_cache(os_type)
    key = (channel, event_id)
    profile = cache.get(key)
    if profile is None:
        profile = _make_profile(channel, event_id, os_type)
        if len(cache) < _MAX_PROFILES:
            cache[key] = profile
    return profile


def _make_profile(channel: str | None, event_id: int | None, os_type: str) -> Profile:
    service = service_of(channel)
    copies = _SECURITY_4688 if service == "security" and event_id == 4688 else _ECS_COPIES
    scalars: list[tuple[str, Any]] = [("host.os.type", os_type), ("event.kind", "event")]
    if event_id is not None:
        scalars += [("EventID", event_id), ("event.code", str(event_id))]
        scalars.append(("winlog.event_id", event_id))
    if channel is not None:
        scalars += [("Channel", channel), ("winlog.channel", channel)]
    if service is not None:
        scalars.append(("event.module", service))
    lists: list[tuple[str, tuple[str, ...]]] = []
    finish: Callable[[Event], None] | None = None
    sigma: tuple[str, ...] = ()
    hash_field: str | None = None
    hash_keys: dict[str, str] | None = None
    if service == "sysmon" and event_id is not None:
        if event_id in _SYSMON_HASHES:
            hash_field, owner = _SYSMON_HASHES[event_id]
            hash_keys = _hash_keys(owner)
        known = _SYSMON.get(event_id)
        if known is not None:
            sigma, categories, types = known
            lists += [("event.category", categories), ("event.type", types)]
        elif event_id == 12:
            finish = _registry_key_event
        if event_id == 3:
            finish = _network_direction  # Sysmon writes Initiated in its network events only
    elif service is not None and event_id is not None:
        sigma = _OTHER.get((service, event_id), ())
        if sigma == ("process_creation",):
            lists += [("event.category", ("process",)), ("event.type", ("start",))]
        elif service == "security" and event_id in _LOGONS:
            lists += [("event.category", ("authentication",)), ("event.type", ("start",))]
            scalars.append(("event.outcome", _LOGONS[event_id]))
            copies = {**copies, "TargetUserName": "user.name", "IpAddress": "source.ip"}
        elif service == "security" and event_id in _CONNECTIONS:
            lists += [
                ("event.category", ("network",)),
                ("event.type", ("connection", _CONNECTIONS[event_id])),
            ]
            copies = _SECURITY_CONNECTION
    if sigma:
        lists.append(("vigil.sigma.category", sigma))
    numbers = _SECURITY_NUMBERS if service == "security" else frozenset()
    return Profile(
        copies, tuple(scalars), tuple(lists), finish, numbers, _NAMES, hash_field, hash_keys
    )


def windows_event(
    *,
    data: Mapping[str, Any],
    event_id: int | None,
    channel: str | None,
    provider: str | None,
    computer: str | None,
    timestamp: str | None,
    path: str,
    record_id: Any = None,
    os_type: str = "windows",
) -> Event:
    """One Windows (or Sysmon for Linux) record as a flat ECS event for Sigma.

    The native EVTX reader (``_evtxflat.c``) builds the same event, key for key and in the same
    order; a test holds the two together.

    Args:
        data: The record's EventData/UserData fields by name; None values become ``""``.
        event_id: The event id (``System/EventID``).
        channel: ``System/Channel``.
        provider: ``System/Provider/@Name``.
        computer: ``System/Computer``.
        timestamp: ``@timestamp`` already in UTC ISO 8601, or None.
        path: The file the record came from (``log.file.path``).
        record_id: ``System/EventRecordID``, kept as ``winlog.record_id``.
        os_type: ``windows``, or ``linux`` for Sysmon for Linux.

    Returns:
        The flat event; see the module docstring for its fields.
    """
    profile = profile_for(channel, event_id, os_type)
    copies = profile.copies
    event: Event = {}
    ecs: Event = {}
    for name, value in data.items():
        if value is None:
            value = ""
        if name in RESERVED_NAMES or "." in name:
            event[f"winlog.event_data.{name}"] = value
        else:
            event[name] = value
        copy = copies.get(name)
        if copy is not None:
            ecs[copy] = value
    if profile.numbers:
        for key in profile.numbers & ecs.keys():
            ecs[key] = number_of(ecs[key])
    event.update(ecs)
    for source, target in profile.names:
        base = base_name(ecs.get(source))
        if base:
            event[target] = base
    if profile.hash_keys is not None:
        _add_hashes(event, event.get(profile.hash_field or ""), profile.hash_keys)

    event["log.file.path"] = path
    if timestamp is not None:
        event["@timestamp"] = timestamp
    if provider is not None:
        event["Provider_Name"] = provider
        event["event.provider"] = provider
        event["winlog.provider_name"] = provider
    if computer is not None:
        event["Computer"] = computer
        event["host.name"] = computer
    if record_id is not None:
        event["winlog.record_id"] = record_id
    event.update(profile.scalars)
    for key, items in profile.lists:
        event[key] = list(items)
    if profile.finish is not None:
        profile.finish(event)
    return event


def base_name(path: Any) -> str | None:
    """The last part of a Windows or POSIX path text (``cmd.exe``); None for a non-text."""
    if not isinstance(path, str):
        return None
    return path[max(path.rfind("\\"), path.rfind("/")) + 1 :]


def _add_hashes(event: Event, text: Any, keys: Mapping[str, str]) -> None:
    # "SHA1=...,MD5=...": each algorithm Vigil knows goes to its ECS key, its value as written.
    if not isinstance(text, str):
        return
    for part in text.split(","):
        algorithm, _, value = part.partition("=")
        key = keys.get(algorithm)
        if key is not None and value:
            event[key] = value


def number_of(value: Any) -> Any:
    """A ``0x``-prefixed hex text, or a text of ASCII digits, as its number; else as it is."""
    if not isinstance(value, str):
        return value
    if value[:2] in ("0x", "0X"):
        try:
            return int(value, 16)
        except ValueError:
            return value  # not a number after all: kept as written
    return int(value) if value.isascii() and value.isdigit() else value


def _registry_key_event(event: Event) -> None:
    # Sysmon 12 is both "key or value created" and "key or value deleted": EventType tells.
    kind = str(event.get("EventType", "")).lower()
    deleted = kind.startswith("delete")
    event["event.category"] = ["registry"]
    event["event.type"] = ["deletion" if deleted else "creation"]
    added_or_deleted = "registry_delete" if deleted else "registry_add"
    event["vigil.sigma.category"] = [added_or_deleted, "registry_event"]


def _network_direction(event: Event) -> None:
    if "Initiated" in event:
        initiated = str(event["Initiated"]).lower() == "true"
        event["network.direction"] = "egress" if initiated else "ingress"


def from_evtx_json(document: Mapping[str, Any], path: str) -> Event:
    """A record in the JSON shape of the ``evtx`` package (``{"Event": {"System": ...}}``).

    Sigma's regression ``.json`` files are this shape too.

    Raises:
        KeyError: The document has no ``Event``/``System``.
        TypeError: ``Event`` or ``System`` is not an object.
    """
    record = document["Event"]
    system = record["System"]
    provider = system.get("Provider")
    provider_name = _attribute(provider, "Name")
    created = _attribute(system.get("TimeCreated"), "SystemTime")
    return windows_event(
        data=_record_data(record),
        event_id=_event_id(system.get("EventID")),
        channel=_text(system.get("Channel")),
        provider=provider_name,
        computer=_text(system.get("Computer")),
        timestamp=utc_timestamp(created),
        path=path,
        record_id=system.get("EventRecordID"),
    )


def _record_data(record: Mapping[str, Any]) -> dict[str, Any]:
    """EventData fields by name; unnamed ``<Data>`` as ``Data``; UserData's inner element."""
    fields: dict[str, Any] = {}
    for section in ("EventData", "UserData"):
        part = record.get(section)
        if not isinstance(part, dict):
            continue
        if section == "UserData" and len(part) == 1:
            # <UserData><LogFileCleared ...>fields</LogFileCleared></UserData>
            inner = next(iter(part.values()))
            part = inner if isinstance(inner, dict) else part
        for name, value in part.items():
            if name == "#attributes":
                continue
            if isinstance(value, dict):
                value = value.get("#text", "")
            fields[name] = value
    return fields


def _attribute(element: Any, name: str) -> str | None:
    if isinstance(element, dict):
        attributes = element.get("#attributes")
        if isinstance(attributes, dict):
            value = attributes.get(name)
            return None if value is None else str(value)
    return None


def _text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("#text")
    return None if value is None else str(value)


def _event_id(value: Any) -> int | None:
    # <EventID Qualifiers="16384">7036</EventID> comes as {"#attributes": ..., "#text": 7036}.
    if isinstance(value, dict):
        value = value.get("#text")
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def from_event_xml(text: str, path: str, timestamp: str | None = None) -> tuple[Event, bool]:
    """A record rendered as ``<Event>`` XML (Sysmon for Linux writes these to syslog).

    Well-formed XML is parsed as XML. Sysmon for Linux writes some entities without their
    semicolon (``&lt unknown process&gt ``) and syslog cuts long records (about 2 KB), so a
    record that is not well-formed is read leniently: the ``System`` values and every complete
    ``<Data Name=...>`` element are taken, the entities repaired.

    A ``Linux-Sysmon`` provider makes the event a Linux one (``host.os.type`` ``linux``).

    Args:
        text: The ``<Event>...</Event>`` XML.
        path: The file it came from.
        timestamp: The time to use when the XML has no ``TimeCreated``.

    Returns:
        The event, and whether the record was complete (False: it was cut short).

    Raises:
        ValueError: The text has no ``<System>`` with an ``EventID``.
    """
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError:
        system, data, complete = _lenient_event_xml(text)
    else:
        system, data, complete = _element_event_xml(root), {}, True
        data_element = _child(root, "EventData")
        if data_element is not None:
            data = event_data_fields(data_element)
    if system.get("EventID") is None:
        raise ValueError("event XML has no <System><EventID>")
    provider = system.get("Provider")
    event = windows_event(
        data=data,
        event_id=_event_id(system.get("EventID")),
        channel=system.get("Channel"),
        provider=provider,
        computer=system.get("Computer"),
        timestamp=utc_timestamp(system.get("SystemTime")) or timestamp,
        path=path,
        record_id=system.get("EventRecordID"),
        os_type="linux" if provider == "Linux-Sysmon" else "windows",
    )
    return event, complete


def _element_event_xml(root: ElementTree.Element) -> dict[str, str | None]:
    system = _child(root, "System")
    if system is None:
        return {}
    provider = _child(system, "Provider")
    created = _child(system, "TimeCreated")
    values = {name: _child_text(system, name) for name in _SYSTEM_TEXT}
    values["Provider"] = provider.get("Name") if provider is not None else None
    values["SystemTime"] = created.get("SystemTime") if created is not None else None
    return values


_SYSTEM_TEXT = ("EventID", "Channel", "Computer", "EventRecordID")
_XML_TEXT = {name: re.compile(rf"<{name}>([^<]*)</{name}>") for name in _SYSTEM_TEXT}
_XML_PROVIDER = re.compile(r"<Provider\b[^>]*\bName=\"([^\"]*)\"")
_XML_TIME = re.compile(r"<TimeCreated\b[^>]*\bSystemTime=\"([^\"]*)\"")
_XML_DATA = re.compile(r"<Data Name=\"([^\"]+)\">([^<]*)</Data>|<Data Name=\"([^\"]+)\"\s*/>")
_XML_ENTITY = re.compile(r"&(lt|gt|quot|amp|apos)[; ]")
_ENTITIES = {"lt": "<", "gt": ">", "quot": '"', "amp": "&", "apos": "'"}


def _unescape(text: str) -> str:
    return _XML_ENTITY.sub(lambda match: _ENTITIES[match.group(1)], text)


def _lenient_event_xml(text: str) -> tuple[dict[str, str | None], dict[str, Any], bool]:
    system: dict[str, str | None] = {}
    for name, pattern in _XML_TEXT.items():
        match = pattern.search(text)
        system[name] = _unescape(match.group(1)) if match else None
    provider = _XML_PROVIDER.search(text)
    system["Provider"] = provider.group(1) if provider else None
    created = _XML_TIME.search(text)
    system["SystemTime"] = created.group(1) if created else None
    data: dict[str, Any] = {}
    for match in _XML_DATA.finditer(text):
        if match.group(1) is not None:
            data[match.group(1)] = _unescape(match.group(2))
        else:
            data[match.group(3)] = ""
    return system, data, text.rstrip().endswith("</Event>")


def event_data_xml(text: str) -> dict[str, Any]:
    """The fields of an ``<EventData>`` XML fragment (Azure's SecurityEvent ``EventData``).

    Raises:
        ValueError: The text is not well-formed XML.
    """
    try:
        return event_data_fields(ElementTree.fromstring(text))
    except ElementTree.ParseError as exc:
        raise ValueError(f"not well-formed EventData XML: {exc}") from exc


def event_data_fields(element: ElementTree.Element) -> dict[str, Any]:
    """``<Data Name="X">v</Data>`` children by name; unnamed ones as a ``Data`` list."""
    fields: dict[str, Any] = {}
    unnamed: list[str] = []
    for data in element:
        name = data.get("Name")
        value = data.text or ""
        if name:
            fields[name] = value
        else:
            unnamed.append(value)
    if unnamed:
        fields["Data"] = unnamed if len(unnamed) > 1 else unnamed[0]
    return fields


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _child(element: ElementTree.Element, name: str) -> ElementTree.Element | None:
    for child in element:
        if _local(child.tag) == name:
            return child
    return None


def _child_text(element: ElementTree.Element, name: str) -> str | None:
    child = _child(element, name)
    return None if child is None else (child.text or "")
