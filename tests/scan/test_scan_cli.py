"""``vigil scan`` end to end on real files: outputs, filters, summary and exit codes."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.logsources.data import DATA, needs_data
from vigil.cli.main import main

pytestmark = needs_data

LINUX_RULES = DATA / "sigma" / "rules" / "linux"
BINARY_PADDING = LINUX_RULES / "auditd" / "execve" / "lnx_auditd_binary_padding.yml"
ATOMIC_LINUX = DATA / "otrf-security-datasets" / "atomic" / "linux"
LOG4SHELL = DATA / "otrf-security-datasets" / "compound" / "Log4Shell"


def scan(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    status = main(["scan", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_jsonl_detection_carries_rule_attack_time_event_and_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, err = scan(capsys, "--rules", BINARY_PADDING, "--format", "jsonl", ATOMIC_LINUX)
    assert status == 0
    (line,) = out.splitlines()
    found = json.loads(line)
    assert found["rule"] == {
        "id": "c52a914f-3d8b-4b2a-bb75-b3991e75f8ba",
        "title": "Binary Padding - Linux",
        "level": "high",
    }
    assert found["attack"]["techniques"] == ["T1027.001"]
    assert found["@timestamp"] == "2020-11-10T08:19:44.965000Z"
    assert found["event"]["process"]["command_line"] == "dd if=/dev/zero bs=1 count=1"
    assert found["event"]["type"] == "EXECVE"
    assert found["log"]["file"]["path"].endswith(".log") and "sh_binary_padding_dd" in line
    # The summary goes to stderr when stdout carries JSON lines.
    assert "Binary Padding - Linux" in err and "1 detection from 2 files" in err


def test_csv_and_min_level(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = scan(
        capsys, "--rules", LINUX_RULES, "--format", "csv", "--min-level", "high", LOG4SHELL
    )
    assert status == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {row["level"] for row in rows} <= {"high", "critical"}
    assert "Suspicious Java Children Processes" in {row["rule.title"] for row in rows}
    assert "Decode Base64 Encoded Text" not in out  # low


def test_table_ends_with_summary_by_rule_and_level(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    output = tmp_path / "found.txt"
    status, out, _ = scan(
        capsys, "--rules", LINUX_RULES, "--format", "table", "--output", output, LOG4SHELL
    )
    text = output.read_text(encoding="utf-8")
    assert status == 0 and out == ""
    assert text.splitlines()[0].split() == ["TIME", "LEVEL", "RULE", "ATT&CK", "FILE", "WHAT"]
    summary = [line.split() for line in text.split("\n\n")[-1].splitlines()]
    assert summary[0] == ["LEVEL", "COUNT", "RULE", "ID"]
    assert ["high", "1", "Suspicious", "Java", "Children", "Processes"] == summary[2][:6]
    assert summary[-1][:4] == ["5", "detections", "from", "5"]


def test_table_rows_are_a_timeline_across_files(capsys: pytest.CaptureFixture[str]) -> None:
    # Log4Shell (2022) is read before the atomic tests (2020); the rows come in time order.
    status, out, _ = scan(
        capsys, "--rules", LINUX_RULES, "--format", "table", LOG4SHELL, ATOMIC_LINUX
    )
    assert status == 0
    times = [line.split()[0] for line in out.split("\n\n")[0].splitlines()[1:]]
    assert times[0].startswith("2020-") and times[-1].startswith("2022-")
    assert len(times) == 8 and times == sorted(times)


def test_builtin_rules_only_without_rules_option(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = scan(capsys, "--format", "jsonl", ATOMIC_LINUX)
    assert status == 0
    titles = {json.loads(line)["rule"]["title"] for line in out.splitlines()}
    assert "Binary Padding - Linux" not in titles  # a SigmaHQ rule, not a built-in one
    assert "from 2 files, 18 events" in err


def test_missing_path_is_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, err = scan(capsys, tmp_path / "nope.evtx")
    assert status == 2 and "no such file or folder" in err
    status, _, err = scan(
        capsys, "--rules", tmp_path / "rules", "--intel", tmp_path / "feed.txt", ATOMIC_LINUX
    )
    assert status == 2
    assert f"{tmp_path / 'rules'} (--rules), {tmp_path / 'feed.txt'} (--intel)" in err


def test_min_level_is_read_in_any_case(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = scan(
        capsys, "--rules", LINUX_RULES, "--format", "csv", "--min-level", "HIGH", LOG4SHELL
    )
    assert status == 0
    levels = {row["level"] for row in csv.DictReader(io.StringIO(out))}
    assert levels and levels <= {"high", "critical"}


def test_intel_feeds_match_offline(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # The Log4Shell victim's java process connects to 192.168.2.6 (LDAP, 1389).
    feed = tmp_path / "c2.txt"
    feed.write_text("# a plain list\n192.168.2.6\n")
    status, out, err = scan(capsys, "--intel", feed, "--format", "jsonl", LOG4SHELL)
    assert status == 0, err
    hits = [json.loads(line) for line in out.splitlines()]
    hits = [h for h in hits if h["rule"]["id"].startswith("intel:")]
    assert hits and all(h["rule"]["id"] == "intel:ipv4:192.168.2.6" for h in hits)
    assert "intel " in err and "added 1 (ipv4 1)" in err
    # Each says which field held which value, and which feed named it.
    first = hits[0]["intel"][0]
    assert (first["observed"], first["value"], first["source"]) == ("192.168.2.6",) * 2 + (
        "c2.txt",
    )
    assert first["field"] in ("destination.ip", "source.ip")

    # In a table, the value the feed named is what the row is about.
    status, out, _ = scan(capsys, "--intel", feed, "--format", "csv", LOG4SHELL)
    rows = [r for r in csv.DictReader(io.StringIO(out)) if r["rule.id"].startswith("intel:")]
    assert rows and {r["what"] for r in rows} == {"192.168.2.6"}


def test_an_unreadable_intel_feed_is_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    feed = tmp_path / "broken.json"
    feed.write_text("{not json")
    status, _, err = scan(capsys, "--intel", feed, LOG4SHELL)
    assert status == 2 and "broken.json" in err


def test_corrupt_and_unknown_files_are_reported_and_others_go_on(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.evtx"
    broken.write_bytes(b"ElfFile\x00" + b"\xff" * 64)
    unknown = tmp_path / "notes.txt"
    unknown.write_text("hello\n", encoding="utf-8")
    status, out, err = scan(
        capsys, "--rules", BINARY_PADDING, "--format", "jsonl", broken, unknown, ATOMIC_LINUX
    )
    assert status == 2
    assert len(out.splitlines()) == 1  # the auditd files were still scanned
    assert "broken.evtx: not a readable EVTX file" in err
    assert "notes.txt: no reader recognises this file" in err


def test_rule_load_errors_are_reported_once_and_not_fatal(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("title: broken\nlogsource: {product: linux}\ndetection: {}\n", encoding="utf-8")
    status, out, err = scan(
        capsys, "--rules", bad, "--rules", BINARY_PADDING, "--format", "jsonl", ATOMIC_LINUX
    )
    assert status == 0 and len(out.splitlines()) == 1
    assert err.count("vigil scan: rule not loaded") == 1 and "bad.yml" in err
    assert err.rstrip().endswith("; 1 rule not loaded)")


BRUTE_FORCE = """
title: Failed SSH login
id: 5b1c7a3e-2d4f-4e6a-9b8c-7d6e5f4a3b2c
name: ssh_failed_login
status: test
logsource: {product: linux, service: sshd}
detection:
  selection: {event.action: ssh_login, event.outcome: failure}
  condition: selection
level: low
---
title: SSH brute force from one address
id: 9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b
status: test
correlation:
  type: event_count
  rules: [ssh_failed_login]
  group-by: [source.ip]
  timespan: 5m
  condition: {gte: 10}
tags: [attack.credential-access, attack.t1110]
level: high
"""


def test_correlation_rules_run_over_offline_logs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rules = tmp_path / "brute.yml"
    rules.write_text(BRUTE_FORCE)
    ssh_log = DATA / "linux-logs" / "loghub" / "OpenSSH" / "OpenSSH_2k.log"
    status, out, err = scan(capsys, "--rules", rules, "--format", "jsonl", ssh_log)
    assert status == 0, err
    found = [json.loads(line) for line in out.splitlines()]
    titles = {f["rule"]["title"] for f in found}
    assert titles == {"SSH brute force from one address"}  # the base rule only feeds it
    sources = {f["event"]["source"]["ip"] for f in found}
    assert {"183.62.140.253", "187.141.143.180"} <= sources


def test_placeholders_let_rules_that_expand_them_load_and_fire(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rule = tmp_path / "padding_tools.yml"
    rule.write_text(
        "title: Padding tool\n"
        "id: 0f4c2b1e-7a77-4a43-9f3e-0c1b2a3d4e5f\n"
        "logsource: {product: linux, service: auditd}\n"
        "detection:\n"
        "  tool: {type: EXECVE, a0|expand: '%padding_tools%'}\n"
        "  condition: tool\n"
        "level: medium\n"
    )
    status, out, err = scan(capsys, "--rules", rule, "--format", "jsonl", ATOMIC_LINUX)
    assert status == 0 and out == ""
    assert "placeholder %padding_tools% has no values" in err and "--placeholders FILE" in err

    values = tmp_path / "placeholders.yml"
    values.write_text("padding_tools: [dd, truncate]\n")
    status, out, err = scan(
        capsys, "--rules", rule, "--placeholders", values, "--format", "jsonl", ATOMIC_LINUX
    )
    assert status == 0 and "not loaded" not in err
    assert [json.loads(line)["rule"]["title"] for line in out.splitlines()] == ["Padding tool"]

    status, _, err = scan(capsys, "--placeholders", tmp_path / "none.yml", ATOMIC_LINUX)
    assert status == 2 and "cannot read placeholders file" in err


def test_pure_python_evtx_is_said_once_and_gives_the_same_detections(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from vigil.cli import scan as scan_cli
    from vigil.logsources import evtxlog

    folder = DATA / "evtx-attack-samples" / "Persistence"
    rules = DATA / "sigma" / "rules" / "windows" / "registry"
    status, native_out, native_err = scan(capsys, "--rules", rules, "--format", "jsonl", folder)
    assert status == 0 and "native EVTX reader is not built" not in native_err
    monkeypatch.setattr(evtxlog, "flatten", None)
    monkeypatch.setattr(scan_cli, "native_reader_built", lambda: False)
    status, python_out, python_err = scan(capsys, "--rules", rules, "--format", "jsonl", folder)
    assert status == 0
    assert python_err.count("the native EVTX reader is not built") == 1
    assert python_out == native_out and native_out.count("\n") > 10


def test_summary_names_the_files_no_reader_took(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = scan(capsys, "--format", "jsonl", DATA / "evtx-attack-samples")
    assert status == 0  # files in a folder that are not logs are not an error
    assert "194 files, 5,862 events" in err
    names = "evtx-attack-samples/LICENSE.GPL, evtx-attack-samples/README.md"
    assert f"2 not recognised: {names})" in err
    # Named from the folder given, so that two LICENSE files are told apart.
    status, _, err = scan(capsys, "--format", "jsonl", DATA / "linux-logs")
    assert "not recognised: linux-logs/elastic-integrations-system-auth/LICENSE.txt, " in err


def test_a_path_given_twice_or_inside_a_folder_given_is_scanned_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, once, _ = scan(capsys, "--format", "jsonl", ATOMIC_LINUX)
    status, twice, err = scan(capsys, "--format", "jsonl", ATOMIC_LINUX, ATOMIC_LINUX)
    assert status == 0 and twice == once
    assert "from 2 files, 18 events" in err
    inner = next(p for p in ATOMIC_LINUX.rglob("*.log"))
    status, _, err = scan(capsys, "--format", "jsonl", ATOMIC_LINUX, inner)
    assert "from 2 files, 18 events" in err


def test_output_to_a_reader_that_goes_away_ends_quietly() -> None:
    # `vigil scan ... | head -1`: the pipe closes after one line.
    command = [sys.executable, "-m", "vigil.cli.main", "scan", "--format", "jsonl"]
    command += [
        "--rules",
        str(DATA / "sigma" / "rules" / "windows"),
        str(DATA / "evtx-attack-samples"),
    ]
    scan_run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert scan_run.stdout is not None and scan_run.stderr is not None
    assert json.loads(scan_run.stdout.readline())["rule"]["id"]
    scan_run.stdout.close()
    err = scan_run.stderr.read().decode()
    assert scan_run.wait(timeout=120) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_keyword_rules_see_syslog_lines_no_parser_recognises(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rule = tmp_path / "spoofed.yml"
    rule.write_text(
        "title: Reverse DNS does not match\n"
        "id: 3d5e7f9a-1b2c-4d3e-8f4a-5b6c7d8e9f0a\n"
        "logsource: {product: linux, service: sshd}\n"
        "detection:\n"
        "  keywords: ['POSSIBLE BREAK-IN ATTEMPT']\n"
        "  condition: keywords\n"
        "level: low\n"
    )
    ssh_log = DATA / "linux-logs" / "loghub" / "OpenSSH" / "OpenSSH_2k.log"
    status, out, err = scan(capsys, "--rules", rule, "--format", "csv", ssh_log)
    assert status == 0, err
    rows = [r for r in csv.DictReader(io.StringIO(out)) if r["rule.id"].startswith("3d5e7f9a")]
    assert len(rows) == 85
    assert rows[0]["what"].startswith("reverse mapping checking getaddrinfo for ")


def test_intel_matches_the_addresses_of_windows_firewall_connections(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    feed = tmp_path / "c2.txt"
    feed.write_text("10.0.2.18\n")
    tunnel = DATA / "evtx-attack-samples" / "Command and Control" / "DE_RDP_Tunnel_5156.evtx"
    status, out, err = scan(capsys, "--intel", feed, "--format", "jsonl", tunnel)
    assert status == 0, err
    hits = [json.loads(line) for line in out.splitlines()]
    # Security 5156 records name the address DestAddress; its ECS copy is what intel matches.
    assert len(hits) == 5 and {h["event"]["EventID"] for h in hits} == {5156}
    assert {h["intel"][0]["field"] for h in hits} == {"destination.ip"}
    assert {h["event"]["process"]["pid"] for h in hits} == {4, 3324}


def test_intel_hashes_and_file_names_match_sysmon_events(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    sha256 = "1a061c74619de6af8c02cba0fa00754bdd9e3515c0e08cad6350c7adfc8cdd5b"
    hashes = tmp_path / "hashes.txt"
    hashes.write_text(sha256 + "\n")
    names = tmp_path / "names.json"
    indicator = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": "indicator--5e1d6a3c-7f0b-4d2e-9a8c-1b2c3d4e5f60",
        "created": "2026-01-01T00:00:00.000Z",
        "modified": "2026-01-01T00:00:00.000Z",
        "pattern": "[file:name = 'Flash_update.exe']",
        "pattern_type": "stix",
        "valid_from": "2026-01-01T00:00:00Z",
    }
    bundle = {"type": "bundle", "id": "bundle--0b6f1e2d-3c4a-4b5c-8d6e-7f8091a2b3c4"}
    names.write_text(json.dumps({**bundle, "objects": [indicator]}))
    sample = (
        DATA / "evtx-attack-samples" / "AutomatedTestingTools" / "Malware"
        / "DE_timestomp_and_dll_sideloading_and_RunPersist.evtx"
    )  # fmt: skip
    status, out, err = scan(
        capsys, "--intel", hashes, "--intel", names, "--format", "jsonl", sample
    )
    assert status == 0, err
    fields = {
        (hit["field"], hit["value"].lower())
        for found in map(json.loads, out.splitlines())
        for hit in found["intel"]
    }
    # Sysmon writes the hashes in one field and the image as a path; both reach the feeds.
    assert ("process.hash.sha256", sha256) in fields
    assert ("process.name", "flash_update.exe") in fields


def test_feeds_of_the_wrong_shape_say_what_was_expected(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    empty = tmp_path / "feed-folder"
    empty.mkdir()
    status, _, err = scan(capsys, "--intel", empty, ATOMIC_LINUX)
    assert status == 2
    assert "is a folder, read as a MISP feed, and has no manifest.json" in err
    log = DATA / "evtx-attack-samples" / "Command and Control" / "DE_RDP_Tunnel_5156.evtx"
    status, _, err = scan(capsys, "--intel", log, ATOMIC_LINUX)
    assert status == 2 and "is a Windows event log, not a feed: give it as a PATH to scan" in err
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 64)
    status, _, err = scan(capsys, "--intel", binary, ATOMIC_LINUX)
    assert status == 2 and "reads as a list feed (the first: " in err
    assert max(map(len, err.splitlines())) < 600  # the start of a binary "entry", not all of it
