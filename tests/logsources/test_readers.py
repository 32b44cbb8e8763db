"""Each reader on real third-party files: detection by content, fields, warnings, errors."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from tests.logsources.data import DATA, needs_data
from vigil.detect import RuleSet
from vigil.logsources.base import Reader, reader_for, registered_readers, utc_timestamp
from vigil.logsources.errors import CorruptFile, NoReader
from vigil.schema.ecs import unflatten

pytestmark = needs_data

SIGMA_RULES = DATA / "sigma" / "rules"
OTRF = DATA / "otrf-security-datasets"
LOG4SHELL = OTRF / "compound" / "Log4Shell"
EVTX_SAMPLES = DATA / "evtx-attack-samples"


def one(pattern: str, root: Path = DATA) -> Path:
    (path,) = root.glob(pattern)
    return path


def read_all(path: Path) -> tuple[Reader, list[dict[str, object]]]:
    reader = reader_for(path)
    return reader, list(reader.read(path))


def test_registry_declares_every_reader() -> None:
    names = [cls.name for cls in registered_readers()]
    assert names == ["evtx", "sigma-json", "ndjson", "auditd", "authlog"]
    for cls in registered_readers():
        assert cls.reads and cls.__doc__ and cls.detect.__doc__ and cls.read.__doc__


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-12-25T14:30:27.3691144Z", "2025-12-25T14:30:27.369114Z"),
        ("2022-05-11T18:10:20.399931000Z", "2022-05-11T18:10:20.399931Z"),
        ("2022-05-11T20:10:20+02:00", "2022-05-11T18:10:20.000000Z"),
        ("2025-12-25 14:30:27.352", "2025-12-25T14:30:27.352000Z"),
        ("yesterday", None),
    ],
)
def test_timestamps_become_utc_keeping_the_instant(text: str, expected: str | None) -> None:
    assert utc_timestamp(text) == expected


def test_evtx_sysmon_process_creation() -> None:
    path = one("sigma/regression_data/**/proc_creation_win_amsi_registry_tampering/*.evtx")
    reader, (event,) = read_all(path)
    assert reader.name == "evtx"
    assert event["log.file.path"] == str(path)
    assert event["@timestamp"] == "2025-12-25T14:30:27.369114Z"
    assert event["event.category"] == ["process"] and event["event.type"] == ["start"]
    assert event["host.os.type"] == "windows" and event["event.module"] == "sysmon"
    assert event["Image"] == event["process.executable"] == r"C:\Windows\System32\reg.exe"
    assert event["CommandLine"] == event["process.command_line"]
    assert (event["EventID"], event["Computer"]) == (1, "swachchhanda")
    assert event["Channel"] == "Microsoft-Windows-Sysmon/Operational"
    assert event["Provider_Name"] == "Microsoft-Windows-Sysmon"
    assert unflatten(event)["process"]["parent"]["pid"] == 12456


def test_evtx_and_regression_json_give_the_same_events() -> None:
    case = one("sigma/regression_data/**/file_event_win_cred_dump_tools_dropped_files")
    _, from_evtx = read_all(next(case.glob("*.evtx")))
    reader, from_json = read_all(next(case.glob("*.json")))
    assert reader.name == "sigma-json" and len(from_json) == len(from_evtx) == 6
    for left, right in zip(from_evtx, from_json, strict=True):
        assert left["TargetFilename"] == right["TargetFilename"] == right["file.path"]
        assert left["event.type"] == right["event.type"] == ["creation"]
        assert left["@timestamp"] == right["@timestamp"]


def test_security_4688_maps_to_process_creation() -> None:
    path = one("otrf-security-datasets/atomic/windows/execution/host/*/*.json")
    _, events = read_all(path)
    (first,) = [e for e in events if e["EventID"] == 4688][:1]
    assert first["event.category"] == ["process"] and first["event.type"] == ["start"]
    assert first["process.executable"] == first["NewProcessName"]
    assert first["process.parent.executable"] == first["ParentProcessName"]
    assert first["event.module"] == "security"
    # Security writes pids in hex; ECS has numbers, as Sysmon's do. The raw text stays.
    assert isinstance(first["NewProcessId"], str) and first["NewProcessId"].startswith("0x")
    assert first["process.pid"] == int(first["NewProcessId"], 16)
    assert first["process.parent.pid"] == int(first["ProcessId"], 16)


def test_security_logon_pids_are_numbers_in_evtx_too() -> None:
    path = EVTX_SAMPLES / "Command and Control" / "DE_RDP_Tunnel_5156.evtx"
    _, events = read_all(path)
    logons = [e for e in events if e["EventID"] == 4624 and "ProcessId" in e]
    assert logons
    for event in logons:
        assert event["process.pid"] == int(str(event["ProcessId"]), 16)


@pytest.mark.parametrize(
    "path",
    [
        EVTX_SAMPLES / "Command and Control" / "DE_RDP_Tunnel_5156.evtx",
        OTRF / "atomic/windows/defense_evasion/host/cmd_mshta_vbscript_execute_psh",
    ],
    ids=["evtx", "ndjson"],
)
def test_filtering_platform_connections_carry_process_and_both_ends(path: Path) -> None:
    if path.is_dir():
        path = next(path.glob("*.json"))
    _, events = read_all(path)
    connections = [e for e in events if e["EventID"] == 5156]
    assert connections
    for event in connections:
        assert event["event.category"] == ["network"]
        assert event["event.type"] == ["connection", "allowed"]
        assert event["process.executable"] == event["Application"]
        assert event["process.pid"] == int(str(event["ProcessID"]))
        assert (event["source.ip"], event["destination.ip"]) == (
            event["SourceAddress"],
            event["DestAddress"],
        )
        # Ports as numbers, as Sysmon's are; the record's own fields as written.
        assert event["destination.port"] == int(str(event["DestPort"]))
        assert event["source.port"] == int(str(event["SourcePort"]))


def test_sysmon_hashes_and_file_names_become_ecs_fields() -> None:
    path = (
        EVTX_SAMPLES
        / "AutomatedTestingTools/Malware/DE_timestomp_and_dll_sideloading_and_RunPersist.evtx"
    )
    _, events = read_all(path)
    started = next(e for e in events if e["EventID"] == 1 and "Flash_update" in str(e["Image"]))
    assert started["process.name"] == "Flash_update.exe"
    assert str(started["ParentImage"]).endswith("\\" + str(started["process.parent.name"]))
    sha256 = "1A061C74619DE6AF8C02CBA0FA00754BDD9E3515C0E08CAD6350C7ADFC8CDD5B"
    assert started["process.hash.sha256"] == sha256
    assert started["process.hash.md5"].startswith("42893ADBC3")
    assert started["process.pe.imphash"] == "40BEC1A4A3BCB7D3089B5E1532386613"
    assert f"SHA256={sha256}" in started["Hashes"]  # the record's own field as written
    loaded = [e for e in events if e["EventID"] == 7 and "Hashes" in e]
    assert loaded and all(e["dll.hash.sha256"] in e["Hashes"] for e in loaded)
    assert all(str(e["ImageLoaded"]).endswith(e["dll.name"]) for e in loaded)


def test_otrf_ndjson_reads_every_line() -> None:
    for path in sorted((OTRF / "atomic" / "windows").rglob("*.json")):
        reader, events = read_all(path)
        lines = sum(1 for line in path.open(encoding="utf-8") if line.strip())
        assert reader.name == "ndjson"
        assert len(events) == reader.records == lines and not reader.warnings, path.name


def test_empty_fields_are_kept_and_absent_fields_absent() -> None:
    path = one("sigma/regression_data/**/proc_creation_win_amsi_registry_tampering/*.json")
    _, (event,) = read_all(path)
    assert "TargetFilename" not in event and "file.path" not in event
    path = EVTX_SAMPLES / "Credential Access" / "sysmon_10_11_lsass_memdump.evtx"
    if path.exists():
        _, events = read_all(path)
        assert all(value is not None for event in events for value in event.values())


def test_sysmon_for_linux_in_azure_syslog() -> None:
    path = one("syslog_sysmon_*.json", LOG4SHELL)
    reader, events = read_all(path)
    assert reader.name == "ndjson"
    # One record was cut by syslog at 2 KB: read in part, and counted.
    assert reader.warnings == {"truncated_record": 1}
    starts = [e for e in events if e.get("event.type") == ["start"]]
    assert starts and all(e["host.os.type"] == "linux" for e in starts)
    unknown = [e for e in events if e.get("Image") == "<unknown process>"]
    assert unknown, "Sysmon for Linux entities without ';' are repaired"


def test_log4shell_fires_java_children_and_base64_once() -> None:
    rules = RuleSet.from_paths(
        [
            SIGMA_RULES / "linux/process_creation/proc_creation_lnx_susp_java_children.yml",
            SIGMA_RULES / "linux/process_creation/proc_creation_lnx_base64_decode.yml",
        ]
    )
    _, events = read_all(one("syslog_sysmon_*.json", LOG4SHELL))
    fired = [rule.title for event in events for rule in rules.match(event)]
    assert sorted(fired) == ["Decode Base64 Encoded Text", "Suspicious Java Children Processes"]


def test_auoms_lines_are_counted_not_read() -> None:
    reader, events = read_all(one("syslog_auoms_*.json", LOG4SHELL))
    assert events == [] and reader.warnings == {"unsupported_record": reader.records}


def test_vm_connection_flows_are_network_events() -> None:
    _, events = read_all(one("vminsights_*.json", LOG4SHELL))
    ldap = [e for e in events if e.get("destination.port") == 1389]
    assert ldap and ldap[0]["destination.ip"] == "192.168.2.6"
    assert ldap[0]["process.name"] == "java" and ldap[0]["event.category"] == ["network"]


BINARY_PADDING = SIGMA_RULES / "linux/auditd/execve/lnx_auditd_binary_padding.yml"


def test_auditd_binary_padding_fires_on_dd_only() -> None:
    rules = RuleSet.from_paths([BINARY_PADDING])
    dd = one("otrf-security-datasets/atomic/linux/*/host/*/sh_binary_padding_dd_*.log")
    arp = one("otrf-security-datasets/atomic/linux/*/host/*/sh_arp_cache_*.log")
    reader, dd_events = read_all(dd)
    assert reader.name == "auditd"
    fired = [e for e in dd_events if rules.match(e)]
    assert len(fired) == 1 and fired[0]["type"] == "EXECVE"
    assert [rules.match(e) for e in read_all(arp)[1]] == [[]] * 12


def test_auditd_records_are_decoded_and_grouped() -> None:
    dd = one("otrf-security-datasets/atomic/linux/*/host/*/sh_binary_padding_dd_*.log")
    _, events = read_all(dd)
    assert [e["type"] for e in events] == ["SYSCALL", "EXECVE", "CWD", "PATH", "PATH", "PROCTITLE"]
    execve = events[1]
    assert (execve["a0"], execve["a1"], execve["event.type"]) == ("dd", "if=/dev/zero", ["start"])
    assert events[5]["proctitle"] == "dd if=/dev/zero bs=1 count=1"  # from hex
    assert all(e["auditd.log.sequence"] == 93777 for e in events)
    assert events[0]["@timestamp"] == "2020-11-10T08:19:44.965000Z"
    assert events[0]["key"] == ""  # key=(null): present, empty


def test_auditd_unknown_record_types_and_bad_lines_are_warnings() -> None:
    path = one("linux-logs/go-libaudit/auparse/testdata/audit-rhel7.log")
    reader, events = read_all(path)
    assert reader.records == 50 and len(events) == 48
    assert reader.warnings == {"audit_record": 1, "not_audit_record": 1}
    assert {"CONFIG_CHANGE", "USER_START", "CRED_ACQ"} <= {e["type"] for e in events}


def test_auth_log_through_the_existing_parser() -> None:
    path = one("linux-logs/loghub/OpenSSH/OpenSSH_2k.log")
    reader, events = read_all(path)
    assert reader.name == "authlog" and reader.records == 2000
    failed = [e for e in events if e.get("event.outcome") == "failure"]
    assert failed and failed[0]["event.module"] == "sshd"
    assert all(e["log.file.path"] == str(path) for e in events)
    # Every line is an event: keyword rules search the lines no parser recognises too.
    assert len(events) == 2000 and len(failed) == 524 + 113
    other = [e for e in events if "reverse mapping checking getaddrinfo" in e["message"]]
    assert len(other) == 85 and "event.action" not in other[0]
    assert other[0]["event.original"].endswith(other[0]["message"])


def test_auth_log_of_old_pam_tags_reads_their_failures_and_sessions() -> None:
    # Linux-PAM before 0.99 tagged its lines "sshd(pam_unix)[pid]:", the facility unsaid; in
    # this file they are the only record of the failed ssh attempts.
    path = one("linux-logs/loghub/Linux/Linux_2k.log")
    reader, events = read_all(path)
    actions = Counter(e.get("event.action") for e in events)
    assert actions["pam_auth_failure"] == 490
    assert actions["session_opened"] == actions["session_closed"] == 123
    failure = next(e for e in events if e.get("event.action") == "pam_auth_failure")
    assert failure["event.module"] == failure["process.name"] == "sshd"
    assert failure["log.syslog.appname"] == "sshd(pam_unix)"
    assert failure["source.address"] == "218.188.2.4" and failure["event.outcome"] == "failure"
    su = next(e for e in events if e.get("event.action") == "session_opened")
    assert su["event.module"] == "su" and su["user.name"] == "cyrus"


def test_corrupt_evtx_names_the_file_and_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "broken.evtx"
    path.write_bytes(b"ElfFile\x00" + b"\xff" * 64)
    reader = reader_for(path)
    with pytest.raises(CorruptFile, match=r"broken\.evtx.*export the log again"):
        list(reader.read(path))


def _panache() -> bytes:
    # 122 records in 4 chunks, the first holding records 1..38.
    return one("evtx-attack-samples/**/panache_sysmon_vs_EDRTestingScript.evtx").read_bytes()


@needs_data
def test_evtx_copy_cut_short_is_noted_with_its_sizes(tmp_path: Path) -> None:
    path = tmp_path / "cut.evtx"
    path.write_bytes(_panache()[:70000])
    reader = reader_for(path)
    events = list(reader.read(path))
    assert len(events) == 38 and not reader.warnings
    assert reader.notes == [
        "the file is cut short: its header counts 4 chunks (266,240 bytes) but it has 70,000 "
        "bytes, so the records past that point are missing; copy the log again"
    ]
    whole = tmp_path / "whole.evtx"
    whole.write_bytes(_panache())
    whole_reader = reader_for(whole)
    assert len(list(whole_reader.read(whole))) == 122 and not whole_reader.notes


@needs_data
@pytest.mark.parametrize("size", [4096, 30000])
def test_evtx_copy_cut_inside_its_first_chunk_fails(tmp_path: Path, size: int) -> None:
    path = tmp_path / "cut.evtx"
    path.write_bytes(_panache()[:size])
    reader = reader_for(path)
    expected = rf"cut\.evtx: no record could be read: the file is cut short: .* has {size:,} bytes"
    with pytest.raises(CorruptFile, match=expected):
        list(reader.read(path))


@needs_data
def test_evtx_damaged_chunk_counts_every_record_it_held(tmp_path: Path) -> None:
    data = bytearray(_panache())
    data[4096 + 600 : 4096 + 2600] = random.Random(1).randbytes(2000)
    path = tmp_path / "damaged.evtx"
    path.write_bytes(bytes(data))
    reader = reader_for(path)
    events = list(reader.read(path))
    assert len(events) == 84
    assert reader.warnings == {"evtx_record": 38} and reader.records == 122


@needs_data
def test_evtx_with_no_readable_record_is_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.evtx"
    path.write_bytes(_panache()[:4096] + random.Random(2).randbytes(65536))
    reader = reader_for(path)
    with pytest.raises(CorruptFile, match=r"junk\.evtx: no record could be read \(.*chunk"):
        list(reader.read(path))


def test_bad_records_are_warnings_and_the_file_goes_on(tmp_path: Path) -> None:
    source = one("sigma/regression_data/**/proc_creation_win_amsi_registry_tampering/*.json")
    good = " ".join(source.read_text(encoding="utf-8").split())
    path = tmp_path / "mixed.json"
    path.write_text(f'{{"Event": {{"nope": 1}}}}\n{good}\n{{"Event": oops', encoding="utf-8")
    reader = reader_for(path)
    events = list(reader.read(path))
    assert len(events) == 1 and reader.records == 3
    assert reader.warnings == {"json_shape": 1, "json_syntax": 1}


def test_empty_file_is_said_to_be_empty(tmp_path: Path) -> None:
    path = tmp_path / "Security.evtx"
    path.write_bytes(b"")
    with pytest.raises(NoReader, match=r"Security\.evtx: the file is empty"):
        reader_for(path)


def test_unknown_file_has_no_reader(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n", encoding="utf-8")
    with pytest.raises(NoReader, match="no reader recognises"):
        reader_for(path)
