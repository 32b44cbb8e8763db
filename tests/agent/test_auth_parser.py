"""The auth log parser against real logs: loghub's OpenSSH sample and Elastic's test logs."""

from __future__ import annotations

import csv
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from vigil.logsources.authlog import auth_fields, parse_syslog, read_auth_log, syslog_time

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "linux-logs"
OPENSSH = DATA / "loghub" / "OpenSSH" / "OpenSSH_2k.log"
ELASTIC = DATA / "elastic-integrations-system-auth"
NOW = datetime(2017, 3, 1, tzinfo=UTC)

# loghub's template ids and what the parser must make of their lines; other ids yield nothing.
EXPECTED_BY_TEMPLATE = {
    "E1": ("ssh_login", "success"),
    "E8": ("ssh_login", "failure"),
    "E9": ("ssh_login", "failure"),
    "E10": ("ssh_login", "failure"),
    "E14": ("ssh_login", "failure"),
    "E13": ("ssh_invalid_user", "failure"),
    "E22": ("session_closed", None),
    "E23": ("session_opened", None),
}


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"shared test data {path} is missing: mount ../shared/data beside the repo")


def test_openssh_sample_matches_the_ground_truth() -> None:
    _need(OPENSSH)
    truth_path = OPENSSH.with_name("OpenSSH_2k.log_structured.csv")
    with truth_path.open(encoding="utf-8") as handle:
        truth = list(csv.DictReader(handle))
    lines = OPENSSH.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(truth) == 2000

    found: Counter[tuple[str, str | None]] = Counter()
    for line, row in zip(lines, truth, strict=True):
        record = parse_syslog(line, NOW, UTC)
        assert record is not None, line
        assert (record.program, record.pid, record.message.strip()) == (
            "sshd",
            int(row["Pid"]),
            row["Content"],
        )
        fields = auth_fields(record.program, record.message)
        got = (
            None if fields is None else (fields["event"]["action"], fields["event"].get("outcome"))
        )
        assert got == EXPECTED_BY_TEMPLATE.get(row["EventId"]), line
        if got is not None:
            found[got] += 1
        if fields is not None and "source" in fields:
            assert f"{fields['user']['name']} from {fields['source']['ip']}" in row["Content"]

    assert found[("ssh_login", "failure")] == 524  # 518 "Failed password", 2 repeated, 4 "none"
    assert found[("ssh_invalid_user", "failure")] == 113
    assert found[("ssh_login", "success")] == 1


def test_openssh_sample_as_a_file() -> None:
    _need(OPENSSH)
    stats: Counter[str] = Counter()
    documents = list(read_auth_log(OPENSSH, now=NOW, zone=UTC, stats=stats))
    assert stats == Counter(lines=2000, events=640, ignored=1360)
    accepted = [d for d in documents if d["event"].get("outcome") == "success"]
    assert len(accepted) == 1
    login = accepted[0]
    assert login["event"]["category"] == ["authentication", "session"]
    assert login["event"]["type"] == ["start"]
    assert login["user"] == {"name": "fztu"}
    assert login["source"] == {"ip": "119.137.62.142", "port": 49116}
    assert login["@timestamp"] == "2016-12-10T09:32:20.000000Z"
    assert login["event"]["original"].endswith(
        "Accepted password for fztu from 119.137.62.142 port 49116 ssh2"
    )
    repeated = [d for d in documents if "repeated" in d.get("vigil", {}).get("auth", {})]
    assert [d["vigil"]["auth"]["repeated"] for d in repeated] == [5, 5]
    blank = [d for d in documents if d["user"]["name"] == " 0101"]
    assert blank, "a user name with a leading space is kept as logged"


def _fields(line: str) -> dict[str, Any]:
    record = parse_syslog(line, NOW, UTC)
    assert record is not None
    fields = auth_fields(record.program, record.message)
    assert fields is not None, line
    return fields


ELASTIC_CASES = [
    pytest.param(
        "test-auth.log",
        "Accepted publickey for vagrant",
        {
            "event.action": "ssh_login",
            "event.outcome": "success",
            "user.name": "vagrant",
            "source.ip": "10.0.2.2",
            "source.port": 63673,
            "vigil.auth.ssh.method": "publickey",
        },
        id="ssh-publickey",
    ),
    pytest.param(
        "test-auth.log",
        "Invalid user test",
        {
            "event.action": "ssh_invalid_user",
            "event.outcome": "failure",
            "user.name": "test",
            "source.ip": "10.0.2.2",
        },
        id="ssh-invalid-user",
    ),
    pytest.param(
        "test-auth.log",
        "Failed password for root from 89.160.20.156",
        {
            "event.action": "ssh_login",
            "event.outcome": "failure",
            "user.name": "root",
            "source.ip": "89.160.20.156",
            "source.port": 29160,
        },
        id="ssh-failed-password",
    ),
    pytest.param(
        "test-auth.log",
        "COMMAND=/bin/cat /var/log/secure",
        {
            "event.category": ["process"],
            "event.type": ["start"],
            "event.action": "sudo",
            "event.outcome": "success",
            "user.name": "vagrant",
            "user.effective.name": "root",
            "process.working_directory": "/home/vagrant",
            "vigil.auth.sudo.command": "/bin/cat /var/log/secure",
            "vigil.auth.sudo.tty": "pts/1",
        },
        id="sudo-command",
    ),
    pytest.param(
        "test-auth.log",
        "user NOT in sudoers",
        {
            "event.action": "sudo_denied",
            "event.outcome": "failure",
            "user.name": "tsg",
            "vigil.auth.sudo.error": "user NOT in sudoers",
            "vigil.auth.sudo.command": "/bin/ls",
        },
        id="sudo-not-in-sudoers",
    ),
    pytest.param(
        "test-auth-ubuntu1204.log",
        "incorrect password attempts",
        {
            "event.action": "sudo_auth_failed",
            "event.outcome": "failure",
            "user.name": "tsg",
            "vigil.auth.sudo.error": "3 incorrect password attempts",
        },
        id="sudo-incorrect-password",
    ),
    pytest.param(
        "test-auth.log",
        "new user: name=apache",
        {
            "event.category": ["iam"],
            "event.type": ["user", "creation"],
            "event.action": "user_added",
            "user.name": "apache",
            "user.id": "48",
            "group.id": "48",
            "vigil.auth.shell": "/sbin/nologin",
        },
        id="useradd",
    ),
    pytest.param(
        "test-auth.log",
        "new group: name=apache",
        {
            "event.category": ["iam"],
            "event.type": ["group", "creation"],
            "event.action": "group_added",
            "group.name": "apache",
            "group.id": "48",
        },
        id="groupadd",
    ),
    pytest.param(
        "test-auth.log",
        "pam_unix(sudo:auth): authentication failure",
        {
            "event.action": "pam_auth_failure",
            "event.outcome": "failure",
            "user.name": "root",
            "vigil.auth.pam.ruser": "alice",
            "vigil.auth.pam.service": "sudo",
        },
        id="pam-sudo-failure",
    ),
    pytest.param(
        "test-auth-ubuntu1204.log",
        "Successful su for tsg by root",
        {
            "event.action": "su",
            "event.outcome": "success",
            "user.name": "root",
            "user.effective.name": "tsg",
        },
        id="su-success",
    ),
    pytest.param(
        "test-auth-ubuntu1204.log",
        "pam_unix(su:session): session opened for user tsg",
        {
            "event.category": ["session"],
            "event.type": ["start"],
            "event.action": "session_opened",
            "user.name": "vagrant",
            "user.effective.name": "tsg",
            "vigil.auth.pam.service": "su",
        },
        id="su-session",
    ),
    pytest.param(
        "test-auth-ubuntu1204.log",
        "password changed for tsg",
        {
            "event.category": ["iam"],
            "event.type": ["user", "change"],
            "event.action": "password_changed",
            "user.name": "tsg",
        },
        id="password-changed",
    ),
]


def _get(fields: dict[str, Any], dotted: str) -> Any:
    node: Any = fields
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize(("name", "needle", "expected"), ELASTIC_CASES)
def test_elastic_sample_lines(name: str, needle: str, expected: dict[str, Any]) -> None:
    path = ELASTIC / name
    _need(path)
    line = next(x for x in path.read_text(encoding="utf-8").splitlines() if needle in x)
    fields = _fields(line)
    for dotted, value in expected.items():
        assert _get(fields, dotted) == value, dotted


def test_elastic_samples_parse_without_errors() -> None:
    _need(ELASTIC)
    totals: Counter[str] = Counter()
    for path in sorted(ELASTIC.glob("*.log")):
        list(read_auth_log(path, now=NOW, zone=UTC, stats=totals))
    # Every line has a header, even "last message repeated 2 times" logged with no host name.
    assert totals["parse_errors"] == 0
    assert totals["events"] == 100
    assert totals["lines"] == totals["events"] + totals["ignored"]


@pytest.mark.parametrize(
    ("month", "day", "now", "year"),
    [
        pytest.param(
            12, 31, datetime(2025, 1, 1, 0, 5, tzinfo=UTC), 2024, id="december-in-january"
        ),
        pytest.param(1, 1, datetime(2025, 1, 1, 0, 5, tzinfo=UTC), 2025, id="same-day"),
        pytest.param(1, 2, datetime(2025, 1, 2, 12, 0, tzinfo=UTC), 2025, id="clock-slack"),
        pytest.param(6, 1, datetime(2025, 3, 1, tzinfo=UTC), 2024, id="future-month"),
        pytest.param(2, 29, datetime(2025, 3, 1, tzinfo=UTC), 2024, id="leap-day"),
    ],
)
def test_syslog_year_inference(month: int, day: int, now: datetime, year: int) -> None:
    moment = syslog_time(month, day, "23:59:00", now, UTC)
    assert moment is not None and moment.year == year


def test_yearless_lines_use_the_given_zone() -> None:
    zone = timezone(timedelta(hours=2))
    record = parse_syslog("Feb 21 21:54:44 host sshd[1]: x", NOW, zone)
    assert record is not None
    assert record.timestamp == datetime(2017, 2, 21, 19, 54, 44, tzinfo=UTC)


def test_rfc3339_header_and_new_formats() -> None:
    record = parse_syslog(
        "2024-05-01T10:00:00.123456+02:00 web1 sshd-session[77]: "
        "Invalid user admin from 203.0.113.9 port 4242"
    )
    assert record is not None
    assert record.timestamp == datetime(2024, 5, 1, 8, 0, 0, 123456, tzinfo=UTC)
    fields = auth_fields(record.program, record.message)
    assert fields is not None
    assert fields["source"] == {"ip": "203.0.113.9", "port": 4242}
    su = auth_fields("su", "FAILED SU (to root) bob on pts/3")
    assert su is not None and su["event"]["outcome"] == "failure"
    assert su["user"] == {"name": "bob", "effective": {"name": "root"}}
    assert auth_fields("userdel", "delete user 'eve'") == {
        "event": {
            "category": ["iam"],
            "type": ["user", "deletion"],
            "action": "user_deleted",
            "outcome": "success",
        },
        "user": {"name": "eve"},
    }
    member = auth_fields("usermod", "add 'eve' to group 'sudo'")
    assert member is not None and member["group"] == {"name": "sudo"}
    assert member["event"]["action"] == "group_member_added"
    assert (
        auth_fields("CRON", "pam_unix(cron:session): session opened for user root by (uid=0)")
        is None
    )
    assert auth_fields("kernel", "Accepted password for x from 1.2.3.4 port 1 ssh2") is None
