"""audit_records without the kernel: watch lists, options, rules, repeats, the record view."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from vigil.agent.audit import rules
from vigil.agent.audit.reassembly import AuditEvent
from vigil.agent.audit.record_view import record_events
from vigil.agent.audit.records import parse_record
from vigil.agent.audit.watches import DEFAULT_WATCHES, Watch, parse_watches, resolve
from vigil.agent.errors import AgentError
from vigil.agent.sensors.audit_records import AuditRecordsSensor, RepeatLimiter, nest
from vigil.agent.sensors.base import SensorContext
from vigil.schema.ecs import flatten


def test_watches_resolve_to_files_folders_and_files_yet_to_come(tmp_path: Path) -> None:
    (tmp_path / "conf").write_text("x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "conf")
    for user in ("alice", "bob"):
        (tmp_path / "home" / user).mkdir(parents=True)
    (tmp_path / "home" / "alice" / ".bashrc").write_text("x")
    watches = [
        Watch(str(tmp_path / "conf")),
        Watch(str(tmp_path / "link"), "r"),  # the same inode: merged
        Watch(str(tmp_path / "dir") + "/"),
        Watch(str(tmp_path / "missing")),  # its folder exists: watched for its creation
        Watch(str(tmp_path / "nodir") + "/"),  # a folder that is not there
        Watch(str(tmp_path / "gone" / "file")),  # neither it nor its folder
        Watch(str(tmp_path / "home" / "*" / ".bashrc")),
        Watch(str(tmp_path / "*.none")),
        Watch("/proc/no-such-file"),
    ]
    targets, skipped, over = resolve(watches, limit=100)
    found = {target.path: (target.perm, target.directory) for target in targets}
    assert found == {
        str(tmp_path / "conf"): (rules.AUDIT_PERM_WRITE | rules.AUDIT_PERM_ATTR | 4, False),
        str(tmp_path / "dir"): (10, True),
        str(tmp_path / "missing"): (10, False),
        str(tmp_path / "home" / "alice" / ".bashrc"): (10, False),
        str(tmp_path / "home" / "bob" / ".bashrc"): (10, False),
    }
    assert skipped == [
        str(tmp_path / "nodir") + "/",
        str(tmp_path / "gone" / "file"),
        str(tmp_path / "*.none"),
        "/proc/no-such-file",
    ]
    assert over == 0
    assert resolve(watches, limit=2)[2] == 3


def test_default_watches_name_only_absolute_paths_with_rwa() -> None:
    for watch in DEFAULT_WATCHES:
        assert watch.path.startswith("/") and rules.perm_mask(watch.perm)
    reads = {watch.path for watch in DEFAULT_WATCHES if "r" in watch.perm}
    # Nothing every exec or login reads is watched for reads.
    assert not reads & {"/etc/ld.so.preload", "/etc/ld.so.cache", "/etc/pam.d/", "/etc/passwd"}


@pytest.mark.parametrize(
    ("value", "match"),
    [
        pytest.param("/etc/x", "takes a list", id="not-a-list"),
        pytest.param([{"path": "/etc/x", "mode": "r"}], r"got \{'path'", id="unknown-key"),
        pytest.param([3], "got 3", id="not-a-path"),
    ],
)
def test_bad_watch_options_say_what_is_accepted(value: Any, match: str) -> None:
    with pytest.raises(AgentError, match=match):
        parse_watches("audit_records", "watches", value)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        pytest.param({"syscalls": ["execve"]}, "execve not known", id="exec"),
        pytest.param({"extra_watches": [{"path": "/bin/x", "perm": "x"}]}, "r, w and a", id="x"),
        pytest.param({"extra_watches": ["etc/passwd"]}, "not absolute", id="relative"),
        pytest.param({"user_records": ["USER_LOGIN"]}, "USER_LOGIN not known", id="record-type"),
        pytest.param({"max_watches": 0}, "max_watches=0 is invalid", id="max-watches"),
    ],
)  # fmt: skip
def test_bad_options_fail_before_touching_audit(
    options: dict[str, Any], match: str, tmp_path: Path
) -> None:
    context = SensorContext("a", "h", "host", lambda doc: None, str(tmp_path), options=options)
    sensor = AuditRecordsSensor(context)
    with pytest.raises(AgentError, match=match):
        sensor.start()
    assert sensor.health().state == "failed"


def test_watch_rules_round_trip_through_the_kernel_layout() -> None:
    rule = rules.watch_rule("/etc/audit", rules.perm_mask("wa"), "vigil_watch", directory=True)
    back = rules.AuditRule.unpack(rule.pack())
    assert back == rule and back.key == "vigil_watch"
    assert rules.is_vigil_key("vigil_watch") and rules.is_vigil_key("vigil\x01other")
    assert not rules.is_vigil_key("vigilant") and not rules.is_vigil_key(None)


def test_syslog_is_recorded_only_when_it_clears_or_silences() -> None:
    loaded = rules.single_call_rules(("syslog", "mknod"), "vigil_syscall", machine="x86_64")
    syslog = [r for r in loaded if rules.X86_64.of("syslog") == r.syscalls]
    assert syslog and (rules.AUDIT_ARG0, rules.AUDIT_GREATER_THAN_OR_EQUAL, 4) in syslog[0].fields
    assert (rules.AUDIT_ARG0, rules.AUDIT_LESS_THAN_OR_EQUAL, 6) in syslog[0].fields
    arm64 = (rules.AUDIT_ARCH, rules.AUDIT_EQUAL, rules.AARCH64.audit_arch)
    loaded = rules.single_call_rules(("mknod", "mknodat"), "k", machine="aarch64")
    assert [rule.syscalls for rule in loaded if arm64 in rule.fields] == [{33}]  # no mknod
    with pytest.raises(ValueError, match="cannot be asked for"):
        rules.single_call_rules(("connect",), "k")


def test_repeats_are_cut_per_signature_and_window() -> None:
    limiter = RepeatLimiter(limit=2, window=60.0, max_keys=3)
    kept = [limiter.allow(("cat", "257", "/etc/issue"), now=t) for t in (0, 1, 2, 3)]
    assert kept == [True, True, False, False]
    assert limiter.allow(("sh", "257", "/etc/issue"), now=4)
    assert limiter.allow(("cat", "257", "/etc/issue"), now=61)
    assert RepeatLimiter(limit=0).allow(("x",))


def test_nest_keeps_raw_fields_that_look_like_namespaces() -> None:
    flat = {"@timestamp": "t", "process.pid": 1, "type": "PATH", "process": "odd", "name": "/x"}
    doc = nest(flat)
    assert doc["process"] == {"pid": 1} and doc["auditd"]["fields"]["process"] == "odd"
    assert flatten(nest({k: v for k, v in flat.items() if k != "process"})) == {
        k: v for k, v in flat.items() if k != "process"
    }


def test_user_space_message_fields_are_read_from_msg() -> None:
    record = parse_record(
        1131,
        "audit(1700000000.123:42): pid=1 uid=0 auid=4294967295 ses=4294967295 "
        'msg=\'unit=ufw comm="systemd" exe="/usr/lib/systemd/systemd" hostname=? res=success\'',
    )
    event = AuditEvent(record.event_id, [record])
    (flat,) = record_events(event)
    assert (flat["type"], flat["unit"], flat["res"], flat["hostname"]) == (
        "SERVICE_STOP",
        "ufw",
        "success",
        "",
    )
    assert flat["process.pid"] == 1 and flat["process.executable"] == "/usr/lib/systemd/systemd"
    assert flat["@timestamp"] == "2023-11-14T22:13:20.123000Z"


def test_syscall_names_come_from_the_table_when_the_log_has_none() -> None:
    text = (
        "audit(1700000000.000:7): arch=c000003e syscall=259 success=yes exit=0 a0=ffffff9c "
        'a1=55 a2=11b6 a3=0 items=2 ppid=1 pid=99 uid=0 euid=0 comm="mkfifo" '
        'exe="/usr/bin/mkfifo" key="vigil_syscall"'
    )
    event = AuditEvent((1700000000, 0, 7), [parse_record(1300, text)])
    (flat,) = record_events(event, syscall_names=rules.all_syscall_names())
    assert (flat["SYSCALL"], flat["key"], flat["process.pid"]) == ("mknodat", "vigil_syscall", 99)
    (plain,) = record_events(event)
    assert "SYSCALL" not in plain
    assert os.path.basename(plain["exe"]) == "mkfifo"


def test_the_proctitle_exclusion_is_known_after_a_round_trip() -> None:
    # The exclude list takes no key: the hub finds the rule again by its contents.
    rule = rules.proctitle_exclusion()
    back = rules.AuditRule.unpack(rule.pack())
    assert back.key is None and rules.is_vigil_rule(back)
    assert not rules.is_vigil_rule(rules.watch_rule("/etc/hosts", rules.perm_mask("wa"), "other"))
