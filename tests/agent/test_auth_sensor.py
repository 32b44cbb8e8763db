"""The auth_log sensor following a real file: appends, rotation, truncation, restart resume."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vigil.agent.errors import AgentError, NotApplicable
from vigil.agent.sensors.auth_log import AuthLogSensor
from vigil.agent.sensors.base import SensorContext

MakeContext = Callable[..., tuple[SensorContext, list[dict[str, Any]]]]
WaitFor = Callable[..., Any]


def _failed(user: str, port: int) -> str:
    return (
        f"Mar  3 10:00:00 web1 sshd[{port}]: Failed password for {user} "
        f"from 198.51.100.7 port {port} ssh2\n"
    )


def _append(path: Path, *lines: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.writelines(lines)


def _users(events: list[dict[str, Any]]) -> list[str]:
    return [e["user"]["name"] for e in list(events)]


def _sensor(
    make_context: MakeContext, log_file: Path, **options: Any
) -> tuple[AuthLogSensor, list[dict[str, Any]]]:
    context, events = make_context(
        auth_log_paths=[str(log_file)], auth_source="file", auth_poll_interval=0.05, **options
    )
    sensor = AuthLogSensor(context)
    sensor.check_compatible()
    return sensor, events


def test_follows_appends_from_the_end(
    make_context: MakeContext, wait_for: WaitFor, tmp_path: Path
) -> None:
    log_file = tmp_path / "auth.log"
    log_file.write_text(_failed("old", 1), encoding="utf-8")
    sensor, events = _sensor(make_context, log_file)
    sensor.start()
    try:
        assert sensor.health().state == "running"
        _append(
            log_file,
            _failed("alice", 2),
            "Mar  3 10:00:01 web1 sudo:   bob : TTY=pts/0 ; PWD=/root ; USER=root ; "
            "COMMAND=/bin/id\n",
            "Mar  3 10:00:02 web1 CRON[9]: pam_unix(cron:session): session opened for user root\n",
            "garbage without a header\n",
            "Mar  3 10:00:03 web1 sshd[4]: Accepted publickey for carol from 2001:db8::1 "
            "port 22 ssh2\n",
        )
        assert wait_for(lambda: len(events) == 3)
    finally:
        sensor.stop()
    assert _users(events) == ["alice", "bob", "carol"], "the line before start is not re-read"
    failed, sudo, accepted = events
    assert failed["event"]["outcome"] == "failure"
    assert failed["event"]["original"] == _failed("alice", 2).rstrip("\n")
    assert failed["host"]["id"] == "host-test" and failed["agent"]["id"] == "agent-test"
    assert failed["log"]["syslog"]["hostname"] == "web1"
    assert failed["process"] == {"name": "sshd", "pid": 2}
    assert (
        sudo["event"]["category"] == ["process"]
        and sudo["vigil"]["auth"]["sudo"]["command"] == "/bin/id"
    )
    assert accepted["source"]["ip"] == "2001:db8::1"
    assert len({e["event"]["id"] for e in events}) == 3
    counters = sensor.health().counters
    assert counters["events"] == 3
    assert counters["parse_errors"] == 1
    assert counters["ignored"] == 1
    assert counters["lines"] == 5


def test_rotation_by_rename_loses_nothing(
    make_context: MakeContext, wait_for: WaitFor, tmp_path: Path
) -> None:
    log_file = tmp_path / "auth.log"
    log_file.touch()
    sensor, events = _sensor(make_context, log_file)
    sensor.start()
    try:
        _append(log_file, _failed("before", 1))
        assert wait_for(lambda: len(events) == 1)
        # logrotate: rename, the writer still appends to the old file once, then a new file.
        os.rename(log_file, tmp_path / "auth.log.1")
        _append(tmp_path / "auth.log.1", _failed("late", 2))
        log_file.write_text(_failed("after", 3), encoding="utf-8")
        assert wait_for(lambda: len(events) == 3)
        _append(log_file, _failed("more", 4))
        assert wait_for(lambda: len(events) == 4)
    finally:
        sensor.stop()
    assert _users(events) == ["before", "late", "after", "more"]
    assert sensor.health().counters["rotations"] == 1


def test_truncation_starts_over(
    make_context: MakeContext, wait_for: WaitFor, tmp_path: Path
) -> None:
    log_file = tmp_path / "auth.log"
    log_file.touch()
    sensor, events = _sensor(make_context, log_file)
    sensor.start()
    try:
        _append(log_file, _failed("first", 1), _failed("second", 2))
        assert wait_for(lambda: len(events) == 2)
        with log_file.open("r+") as handle:  # copytruncate
            handle.truncate(0)
        assert wait_for(lambda: sensor.health().counters["truncations"] == 1)
        _append(log_file, _failed("third", 3))
        assert wait_for(lambda: len(events) == 3)
    finally:
        sensor.stop()
    assert _users(events) == ["first", "second", "third"]


def test_partial_lines_wait_for_their_end(
    make_context: MakeContext, wait_for: WaitFor, tmp_path: Path
) -> None:
    log_file = tmp_path / "auth.log"
    log_file.touch()
    sensor, events = _sensor(make_context, log_file)
    sensor.start()
    try:
        line = _failed("split", 1)
        _append(log_file, line[:30])
        assert wait_for(lambda: sensor.health().counters["lines"] > 0, timeout=0.5) is False
        _append(log_file, line[30:])
        assert wait_for(lambda: len(events) == 1)
    finally:
        sensor.stop()
    assert events[0]["event"]["original"] == line.rstrip("\n")


def test_restart_resumes_without_loss_or_doubles(
    make_context: MakeContext, wait_for: WaitFor, tmp_path: Path
) -> None:
    log_file = tmp_path / "auth.log"
    log_file.touch()
    sensor, events = _sensor(make_context, log_file)
    sensor.start()
    _append(log_file, _failed("one", 1))
    assert wait_for(lambda: len(events) == 1)
    sensor.stop()

    _append(log_file, _failed("while-stopped", 2))
    sensor, events_again = _sensor(make_context, log_file)
    sensor.start()
    try:
        assert wait_for(lambda: len(events_again) == 1)
        _append(log_file, _failed("two", 3))
        assert wait_for(lambda: len(events_again) == 2)
    finally:
        sensor.stop()
    assert _users(events_again) == ["while-stopped", "two"]

    # Rotated while stopped: the rest of the old file is found by inode, then the new file.
    _append(log_file, _failed("before-rotation", 4))
    os.rename(log_file, tmp_path / "auth.log.1")
    log_file.write_text(_failed("new-file", 5), encoding="utf-8")
    sensor, events_third = _sensor(make_context, log_file)
    sensor.start()
    try:
        assert wait_for(lambda: len(events_third) == 2)
    finally:
        sensor.stop()
    assert _users(events_third) == ["before-rotation", "new-file"]
    position = json.loads((tmp_path / "auth_log.position.json").read_text(encoding="utf-8"))
    assert position["inode"] == log_file.stat().st_ino
    assert position["offset"] == log_file.stat().st_size


def test_a_corrupt_position_file_starts_at_the_end(
    make_context: MakeContext, wait_for: WaitFor, tmp_path: Path
) -> None:
    log_file = tmp_path / "auth.log"
    log_file.write_text(_failed("old", 1), encoding="utf-8")
    (tmp_path / "auth_log.position.json").write_text("{not json", encoding="utf-8")
    sensor, events = _sensor(make_context, log_file)
    sensor.start()
    try:
        _append(log_file, _failed("new", 2))
        assert wait_for(lambda: len(events) == 1)
    finally:
        sensor.stop()
    assert _users(events) == ["new"]


def test_not_applicable_without_a_log_or_journal(make_context: MakeContext, tmp_path: Path) -> None:
    context, _events = make_context(
        auth_log_paths=[str(tmp_path / "missing.log")], journalctl=str(tmp_path / "no-journalctl")
    )
    with pytest.raises(NotApplicable, match="no auth log at .*missing.log and no journal"):
        AuthLogSensor(context).check_compatible()
    context, _events = make_context(auth_source="syslog")
    with pytest.raises(AgentError, match="auth_source='syslog' is invalid"):
        AuthLogSensor(context).check_compatible()


def test_rejects_a_bad_interval(make_context: MakeContext, tmp_path: Path) -> None:
    log_file = tmp_path / "auth.log"
    log_file.touch()
    context, _events = make_context(auth_log_paths=[str(log_file)], auth_poll_interval=0)
    sensor = AuthLogSensor(context)
    with pytest.raises(AgentError, match="auth_poll_interval=0 is invalid"):
        sensor.start()
    assert sensor.health().state == "failed"


FAKE_JOURNALCTL = """#!{python}
import json, sys, time
args = sys.argv[1:]
with open({log!r}, "a") as handle:
    handle.write(" ".join(args) + "\\n")
entries = [
    {{"__CURSOR": "c1", "__REALTIME_TIMESTAMP": "1700000000000000", "SYSLOG_IDENTIFIER": "sshd",
      "_PID": "10", "_HOSTNAME": "jhost",
      "MESSAGE": "Accepted password for dave from 192.0.2.5 port 5000 ssh2"}},
    {{"__CURSOR": "c2", "__REALTIME_TIMESTAMP": "1700000001000000", "SYSLOG_IDENTIFIER": "sudo",
      "MESSAGE": [100, 97, 118, 101, 32, 58, 32, 84, 84, 89, 61, 112, 116, 115, 47, 49, 32, 59,
                  32, 80, 87, 68, 61, 47, 32, 59, 32, 85, 83, 69, 82, 61, 114, 111, 111, 116, 32,
                  59, 32, 67, 79, 77, 77, 65, 78, 68, 61, 47, 98, 105, 110, 47, 105, 100]}},
]
if "-f" not in args:
    print(json.dumps(entries[0]))
    sys.exit(0)
start = 0 if "--after-cursor" not in args else 2
for entry in entries[start:]:
    print(json.dumps(entry), flush=True)
time.sleep(60)
"""


def test_follows_the_journal_through_journalctl(
    make_context: MakeContext, wait_for: WaitFor, tmp_path: Path
) -> None:
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "journalctl"
    fake.write_text(FAKE_JOURNALCTL.format(python=sys.executable, log=str(calls)), encoding="utf-8")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    context, events = make_context(
        auth_log_paths=[str(tmp_path / "missing.log")], journalctl=str(fake)
    )
    sensor = AuthLogSensor(context)
    sensor.check_compatible()
    sensor.start()
    try:
        assert wait_for(lambda: len(events) == 2)
    finally:
        sensor.stop()
    login, sudo = events
    assert login["event"]["action"] == "ssh_login" and login["user"]["name"] == "dave"
    assert login["@timestamp"] == "2023-11-14T22:13:20.000000Z"
    assert login["log"]["syslog"]["hostname"] == "jhost"
    assert (
        login["event"]["original"]
        == "sshd[10]: Accepted password for dave from 192.0.2.5 port 5000 ssh2"
    )
    assert sudo["vigil"]["auth"]["sudo"]["command"] == "/bin/id"
    assert (tmp_path / "auth_log.journal.cursor").read_text(encoding="utf-8") == "c2"
    follow_call = calls.read_text(encoding="utf-8").splitlines()[-1]
    assert "-n 0" in follow_call and "SYSLOG_IDENTIFIER=sshd" in follow_call

    # Restarted: journalctl resumes after the saved cursor, and nothing is sent twice.
    events.clear()
    sensor = AuthLogSensor(context)
    sensor.start()
    try:
        assert wait_for(lambda: "--after-cursor c2" in calls.read_text(encoding="utf-8"))
    finally:
        sensor.stop()
    assert events == []
