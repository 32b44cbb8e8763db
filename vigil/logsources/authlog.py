"""Linux authentication logs (``/var/log/auth.log``, ``/var/log/secure``) as ECS documents.

A line is parsed in two steps: :func:`parse_syslog` splits the syslog header (time, host,
program, pid) from the message, and :func:`auth_fields` recognises the messages of sshd, sudo,
su, PAM and the shadow-utils account tools. :func:`auth_document` joins both into one ECS
document that keeps the raw line in ``event.original``; :func:`read_auth_log` does it for a whole
file. The agent's ``auth_log`` sensor uses the same functions on the lines it follows.

Categories follow what Elastic's ``system.auth`` pipeline emits, so rules written for it match:
ssh logins are ``authentication`` (plus ``session`` when accepted) with ``event.action``
``ssh_login`` and an outcome; a sudo command is ``process``/``start``; account changes are
``iam`` with ``user``/``group`` and ``creation``/``deletion``/``change``.

Timestamps: a classic syslog header (``Feb 21 21:54:44``) has neither a year nor a zone. It is
read in the host's local zone (or the ``zone`` given) and given the year that puts it at or
before ``now`` (plus one day of clock slack), so a December line read in January belongs to the
previous year. RFC 3339 headers (rsyslog's high-precision format) are taken as written.

References:
    sshd auth.c ``auth_log``; sudo ``logging.c``; shadow-utils ``useradd.c``/``userdel.c``/
    ``usermod.c``/``groupadd.c``/``groupdel.c``; util-linux ``su-common.c``;
    Linux-PAM ``pam_unix``.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import partial
from pathlib import Path
from typing import Any

from vigil.logsources.base import Reader, first_line
from vigil.schema.ecs import flatten, iso

log = logging.getLogger(__name__)

Fields = dict[str, Any]

_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
        start=1,
    )
}
_FUTURE_SLACK = timedelta(days=1)

_BSD_HEADER = re.compile(
    r"^(?P<month>[A-Z][a-z]{2}) {1,2}(?P<day>\d{1,2}) (?P<clock>\d{2}:\d{2}:\d{2}) "
    r"(?P<host>\S*) (?P<rest>.*)$"
)
_ISO_HEADER = re.compile(
    r"^(?P<stamp>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})) "
    r"(?P<host>\S+) (?P<rest>.*)$"
)
_TAG = re.compile(r"^(?P<program>[^\s\[\]:]+)(?:\[(?P<pid>\d+)\])?: ?(?P<message>.*)$")


@dataclass(frozen=True)
class SyslogRecord:
    """One syslog line split into its header and message."""

    timestamp: datetime
    hostname: str
    program: str | None
    pid: int | None
    message: str


def syslog_time(
    month: int, day: int, clock: str, now: datetime | None = None, zone: tzinfo | None = None
) -> datetime | None:
    """The moment of a yearless syslog timestamp, in ``zone`` (default: the local zone).

    The year is the latest one that puts the moment no later than ``now`` plus a day; leap
    days look back up to four years. ``None`` when no year gives a valid date.
    """
    reference = now if now is not None else datetime.now(zone or UTC).astimezone(zone)
    hour, minute, second = (int(part) for part in clock.split(":"))
    for year in range(reference.year, reference.year - 5, -1):
        try:
            naive = datetime(year, month, day, hour, minute, second)
        except ValueError:
            continue
        moment = naive.replace(tzinfo=zone) if zone is not None else naive.astimezone()
        if moment <= reference + _FUTURE_SLACK:
            return moment
    return None


def parse_syslog(
    line: str, now: datetime | None = None, zone: tzinfo | None = None
) -> SyslogRecord | None:
    """Split a syslog line (BSD or RFC 3339 header) into a :class:`SyslogRecord`.

    Args:
        line: One line, with or without its newline.
        now: The reference moment for yearless timestamps (default: the current time).
        zone: The zone of yearless timestamps (default: the host's local zone).

    Returns:
        The record, or ``None`` when the line has no recognisable syslog header.
    """
    line = line.rstrip("\r\n")
    moment: datetime | None = None
    match = _BSD_HEADER.match(line)
    if match is not None:
        month = _MONTHS.get(match["month"])
        if month is not None:
            moment = syslog_time(month, int(match["day"]), match["clock"], now, zone)
    else:
        match = _ISO_HEADER.match(line)
        if match is not None:
            try:
                moment = datetime.fromisoformat(match["stamp"])
            except ValueError:
                moment = None
    if match is None or moment is None:
        return None

    tag = _TAG.match(match["rest"])
    if tag is None:
        # "last message repeated 3 times" and other untagged lines.
        return SyslogRecord(moment, match["host"], None, None, match["rest"])
    pid = int(tag["pid"]) if tag["pid"] else None
    return SyslogRecord(moment, match["host"], tag["program"], pid, tag["message"])


# --- message recognisers: each returns the ECS fields of one kind of message, or None ---

_REPEATED = re.compile(r"^message repeated (?P<count>\d+) times: \[ ?(?P<message>.*?) ?\]$")
_SSH_AUTH = re.compile(
    r"^(?P<result>Accepted|Failed) (?P<method>\S+) for (?P<invalid>invalid user )?(?P<user>.*?) "
    r"from (?P<ip>\S+) port (?P<port>\d+)(?: ssh2)?(?:: (?P<signature>.*))?$"
)
_SSH_INVALID = re.compile(r"^Invalid user (?P<user>.*?) from (?P<ip>\S+)(?: port (?P<port>\d+))?$")
_SUDO = re.compile(r"^\s*(?P<user>\S+) : (?P<rest>.*)$")
_SU_OK_OLD = re.compile(r"^Successful su for (?P<target>\S+) by (?P<user>\S+)$")
_SU_OK = re.compile(r"^\(to (?P<target>\S+)\) (?P<user>\S+) on (?P<tty>\S+)$")
_SU_FAILED = re.compile(r"^FAILED SU \(to (?P<target>\S+)\) (?P<user>\S+) on (?P<tty>\S+)$")
_PAM = re.compile(r"^pam_unix\((?P<service>[^:)]+):(?P<facility>[^)]+)\): (?P<text>.*)$")
# Linux-PAM before 0.99 (2005) put the module in the tag and left the facility unsaid:
# "sshd(pam_unix)[19939]: authentication failure; ...".
_OLD_PAM_TAG = re.compile(r"^(?P<service>[^\s()]+)\(pam_unix\)$")
_PAM_SESSION = re.compile(
    r"^session (?P<state>opened|closed) for user (?P<user>[^\s(]+)(?:\(uid=\d+\))?"
    r"(?: by (?P<by>[^\s(]*)(?:\(uid=(?P<uid>\d+)\))?)?$"
)
_PAM_FAILURE = re.compile(r"^authentication failure; (?P<pairs>.*)$")
_PAM_PASSWORD = re.compile(r"^password changed for (?P<user>\S+)$")
_NEW_USER = re.compile(
    r"^new user: name=(?P<user>[^,]+), UID=(?P<uid>\d+), GID=(?P<gid>\d+), "
    r"home=(?P<home>[^,]*), shell=(?P<shell>[^,]*)(?:, from=(?P<origin>.*))?$"
)
_NEW_GROUP = re.compile(r"^new group: name=(?P<group>[^,]+), GID=(?P<gid>\d+)$")
_DEL_USER = re.compile(r"^delete user '(?P<user>[^']+)'$")
_DEL_GROUP = re.compile(
    r"^(?:group '(?P<group>[^']+)' removed|removed group '(?P<owned>[^']+)' owned by '[^']+')$"
)
_ADD_MEMBER = re.compile(r"^add '(?P<user>[^']+)' to group '(?P<group>[^']+)'$")
_DEL_MEMBER = re.compile(r"^delete '(?P<user>[^']+)' from group '(?P<group>[^']+)'$")
_GPASSWD = re.compile(
    r"^user (?P<user>\S+) (?P<verb>added|removed) by (?P<by>\S+) (?:to|from) group (?P<group>.+)$"
)
_CHANGE_USER = re.compile(
    r"^(?:change user (?:name )?'(?P<user>[^']+)' .*|(?:un)?lock user '(?P<locked>[^']+)' .*)$"
)
_CHANGE_GROUP = re.compile(r"^change group '(?P<group>[^']+)' .*$")

_SSHD = ("sshd", "sshd-session")
_ACCOUNT_TOOLS = ("useradd", "userdel", "usermod", "groupadd", "groupdel", "groupmod", "gpasswd")
# Sessions of these PAM services are routine noise (a cron job opens one per run).
_QUIET_SESSIONS = ("cron", "CRON", "systemd-user")


def _event(category: list[str], kind: list[str], action: str, outcome: str | None) -> Fields:
    event: Fields = {"category": category, "type": kind, "action": action}
    if outcome is not None:
        event["outcome"] = outcome
    return {"event": event}


def _sshd(message: str) -> Fields | None:
    match = _SSH_AUTH.match(message)
    if match is not None:
        accepted = match["result"] == "Accepted"
        fields = _event(
            ["authentication", "session"] if accepted else ["authentication"],
            ["start"] if accepted else ["info"],
            "ssh_login",
            "success" if accepted else "failure",
        )
        fields["user"] = {"name": match["user"]}
        fields["source"] = {"ip": match["ip"], "port": int(match["port"])}
        ssh: Fields = {"method": match["method"]}
        if match["invalid"]:
            ssh["invalid_user"] = True
        if match["signature"]:
            ssh["signature"] = match["signature"]
        fields["vigil"] = {"auth": {"ssh": ssh}}
        return fields
    match = _SSH_INVALID.match(message)
    if match is not None:
        fields = _event(["authentication"], ["info"], "ssh_invalid_user", "failure")
        fields["user"] = {"name": match["user"]}
        fields["source"] = {"ip": match["ip"]}
        if match["port"]:
            fields["source"]["port"] = int(match["port"])
        return fields
    return None


def _sudo(message: str) -> Fields | None:
    match = _SUDO.match(message)
    if match is None or "COMMAND=" not in match["rest"]:
        return None
    head, _, command = match["rest"].partition("COMMAND=")
    sudo: Fields = {"command": command}
    error: str | None = None
    for part in head.split(" ;"):
        part = part.strip()
        key, sep, value = part.partition("=")
        if sep and key.isupper():
            sudo[key.lower()] = value
        elif part:
            error = part
    if error is None:
        fields = _event(["process"], ["start"], "sudo", "success")
    else:
        sudo["error"] = error
        action = "sudo_denied" if "NOT in sudoers" in error else "sudo_auth_failed"
        fields = _event(["process"], ["start"], action, "failure")
    fields["user"] = {"name": match["user"]}
    if "user" in sudo:
        fields["user"]["effective"] = {"name": sudo["user"]}
    if "pwd" in sudo:
        fields["process"] = {"working_directory": sudo["pwd"]}
    fields["vigil"] = {"auth": {"sudo": sudo}}
    return fields


def _su(message: str) -> Fields | None:
    for pattern, outcome in ((_SU_OK, "success"), (_SU_OK_OLD, "success"), (_SU_FAILED, "failure")):
        match = pattern.match(message)
        if match is not None:
            fields = _event(["authentication"], ["start"], "su", outcome)
            fields["user"] = {"name": match["user"], "effective": {"name": match["target"]}}
            return fields
    return None


def _pam(message: str) -> Fields | None:
    match = _PAM.match(message)
    if match is None:
        return None
    return _pam_text(match["service"], match["facility"], match["text"], sshd_says_it=True)


def _old_pam(service: str, text: str) -> Fields | None:
    if text.startswith("session "):
        facility = "session"
    elif text.startswith("password changed"):
        facility = "chauthtok"
    else:
        facility = "auth"
    # sshd of that time logged its own "Failed password" lines elsewhere (authpriv), so the PAM
    # line is the only record of a failed attempt in the file that holds it.
    return _pam_text(service, facility, text, sshd_says_it=False)


def _pam_text(service: str, facility: str, text: str, sshd_says_it: bool) -> Fields | None:
    if facility == "session" and service not in _QUIET_SESSIONS:
        session = _PAM_SESSION.match(text)
        if session is None:
            return None
        opened = session["state"] == "opened"
        fields = _event(
            ["session"],
            ["start"] if opened else ["end"],
            "session_opened" if opened else "session_closed",
            None,
        )
        if session["by"]:
            fields["user"] = {"name": session["by"], "effective": {"name": session["user"]}}
            if session["uid"]:
                fields["user"]["id"] = session["uid"]
        else:
            fields["user"] = {"name": session["user"]}
        fields["vigil"] = {"auth": {"pam": {"service": service}}}
        return fields
    failure = _PAM_FAILURE.match(text)
    # sshd logs its own "Failed password" line for the same attempt: keep only that one.
    if facility == "auth" and failure is not None and not (sshd_says_it and service in _SSHD):
        pairs = dict(pair.partition("=")[::2] for pair in failure["pairs"].split() if "=" in pair)
        fields = _event(["authentication"], ["info"], "pam_auth_failure", "failure")
        if pairs.get("user"):
            fields["user"] = {"name": pairs["user"]}
        elif pairs.get("logname"):
            fields["user"] = {"name": pairs["logname"]}
        if pairs.get("rhost"):
            fields["source"] = {"address": pairs["rhost"]}
        fields["vigil"] = {"auth": {"pam": {"service": service, **pairs}}}
        return fields
    password = _PAM_PASSWORD.match(text)
    if facility == "chauthtok" and password is not None:
        fields = _event(["iam"], ["user", "change"], "password_changed", "success")
        fields["user"] = {"name": password["user"]}
        return fields
    return None


def _accounts(message: str) -> Fields | None:
    match = _NEW_USER.match(message)
    if match is not None:
        fields = _event(["iam"], ["user", "creation"], "user_added", "success")
        fields["user"] = {"name": match["user"], "id": match["uid"]}
        fields["group"] = {"id": match["gid"]}
        fields["vigil"] = {"auth": {"home": match["home"], "shell": match["shell"]}}
        return fields
    match = _NEW_GROUP.match(message)
    if match is not None:
        fields = _event(["iam"], ["group", "creation"], "group_added", "success")
        fields["group"] = {"name": match["group"], "id": match["gid"]}
        return fields
    match = _DEL_USER.match(message)
    if match is not None:
        fields = _event(["iam"], ["user", "deletion"], "user_deleted", "success")
        fields["user"] = {"name": match["user"]}
        return fields
    match = _DEL_GROUP.match(message)
    if match is not None:
        fields = _event(["iam"], ["group", "deletion"], "group_deleted", "success")
        fields["group"] = {"name": match["group"] or match["owned"]}
        return fields
    for pattern, action in (
        (_ADD_MEMBER, "group_member_added"),
        (_DEL_MEMBER, "group_member_removed"),
    ):
        match = pattern.match(message)
        if match is not None:
            fields = _event(["iam"], ["group", "change"], action, "success")
            fields["user"] = {"name": match["user"]}
            fields["group"] = {"name": match["group"]}
            return fields
    match = _GPASSWD.match(message)
    if match is not None:
        action = "group_member_added" if match["verb"] == "added" else "group_member_removed"
        fields = _event(["iam"], ["group", "change"], action, "success")
        fields["user"] = {"name": match["user"]}
        fields["group"] = {"name": match["group"]}
        fields["vigil"] = {"auth": {"by": match["by"]}}
        return fields
    match = _CHANGE_USER.match(message)
    if match is not None:
        fields = _event(["iam"], ["user", "change"], "user_modified", "success")
        fields["user"] = {"name": match["user"] or match["locked"]}
        return fields
    match = _CHANGE_GROUP.match(message)
    if match is not None:
        fields = _event(["iam"], ["group", "change"], "group_modified", "success")
        fields["group"] = {"name": match["group"]}
        return fields
    return None


_RECOGNISERS: dict[str, tuple[Callable[[str], Fields | None], ...]] = {
    **{name: (_sshd, _pam) for name in _SSHD},
    "sudo": (_sudo, _pam),
    "su": (_su, _pam),
    "passwd": (_pam,),
    "chpasswd": (_pam,),
    "login": (_pam,),
    **{name: (_accounts,) for name in _ACCOUNT_TOOLS},
}

#: The programs whose messages :func:`auth_fields` recognises (journal identifiers too).
AUTH_PROGRAMS: tuple[str, ...] = tuple(sorted(_RECOGNISERS))


def auth_fields(program: str | None, message: str) -> Fields | None:
    """The ECS fields of one authentication or account message, or ``None`` if not one.

    ``message repeated N times: [ ... ]`` lines (rsyslog's reduction) yield the fields of the
    inner message with ``vigil.auth.repeated`` set to N.

    Args:
        program: The syslog tag (``sshd``, ``sudo``...); other programs yield ``None``.
        message: The message after the tag.
    """
    if program is None:
        return None
    repeated = _REPEATED.match(message)
    if repeated is not None:
        message = repeated["message"]
    old = _OLD_PAM_TAG.match(program)
    recognisers = (partial(_old_pam, old["service"]),) if old else _RECOGNISERS.get(program, ())
    for recognise in recognisers:
        fields = recognise(message)
        if fields is not None:
            if repeated is not None:
                fields.setdefault("vigil", {}).setdefault("auth", {})["repeated"] = int(
                    repeated["count"]
                )
            return fields
    return None


def program_name(tag: str) -> str:
    """The program of a syslog tag: ``sshd`` for ``sshd`` and for the old ``sshd(pam_unix)``."""
    old = _OLD_PAM_TAG.match(tag)
    return old["service"] if old else tag


def auth_document(record: SyslogRecord, fields: Fields, original: str) -> Fields:
    """Join a parsed line and its recognised fields into one ECS document.

    Args:
        record: The parsed syslog header and message.
        fields: What :func:`auth_fields` returned for the message.
        original: The raw line, kept as ``event.original``.
    """
    document: Fields = {"@timestamp": iso(record.timestamp), **fields}
    document["event"] = {"kind": "event", **fields["event"], "original": original}
    document["message"] = record.message
    syslog: Fields = {"hostname": record.hostname}
    if record.program is not None:
        syslog["appname"] = record.program
        process = document.setdefault("process", {})
        process["name"] = program_name(record.program)
        if record.pid is not None:
            process["pid"] = record.pid
            syslog["procid"] = str(record.pid)
    document["log"] = {"syslog": syslog}
    return document


def read_auth_log(
    path: str | Path,
    now: datetime | None = None,
    zone: tzinfo | None = None,
    stats: Counter[str] | None = None,
    every_line: bool = False,
) -> Iterator[Fields]:
    """Yield the ECS documents of the authentication events in an auth log file.

    Args:
        path: The log file (``auth.log``, ``secure`` or a copy of one).
        now: Reference moment for yearless timestamps; default: the file's modification time.
        zone: Zone of yearless timestamps; default: the local zone.
        stats: Counter updated with ``lines``, ``events``, ``parse_errors`` and ``ignored``
            (lines of no recognised kind, yielded anyway with ``every_line``: ``other``).
        every_line: Also yield the lines of no recognised kind, with their header fields,
            ``message`` and ``event.original`` only (for keyword rules, which search any text).
    """
    counts = stats if stats is not None else Counter()
    file = Path(path)
    if now is None:
        now = datetime.fromtimestamp(file.stat().st_mtime, zone or UTC).astimezone(zone)
    with file.open(encoding="utf-8", errors="backslashreplace") as handle:
        for number, line in enumerate(handle, start=1):
            original = line.rstrip("\r\n")
            if not original:
                continue
            counts["lines"] += 1
            record = parse_syslog(original, now, zone)
            if record is None:
                counts["parse_errors"] += 1
                log.debug("%s:%d has no syslog header", file, number)
                continue
            fields = auth_fields(record.program, record.message)
            if fields is None and not every_line:
                counts["ignored"] += 1
                continue
            counts["events" if fields is not None else "other"] += 1
            yield auth_document(record, fields or {"event": {}}, original)


class AuthLogReader(Reader):
    """Linux ``auth.log`` / ``secure`` files, through :func:`read_auth_log`."""

    name = "authlog"
    reads = (
        "Linux syslog files (auth.log, secure, messages): sshd, sudo, su, PAM and account tools "
        "as authentication events, every other line with its message"
    )
    # Any syslog file sniffs as one, so every more specific reader goes first.
    priority = 90

    @classmethod
    def detect(cls, path: Path) -> bool:
        """The first line has a syslog header (BSD or RFC 3339)."""
        return parse_syslog(first_line(path)) is not None

    def read(self, path: Path) -> Iterator[Fields]:
        """Yield every line of the file as a flat ECS event.

        ``event.module`` is the program (``sshd``, ``sudo``...), Sigma's service for them.
        Lines of a kind :func:`auth_fields` does not recognise come with their header fields and
        ``message`` only, so that keyword rules still see them; lines without a syslog header
        are warnings.
        """
        counts: Counter[str] = Counter()
        shown = str(path)
        for document in read_auth_log(path, stats=counts, every_line=True):
            event = flatten(document)
            event["log.file.path"] = shown
            event["host.os.type"] = "linux"
            program = event.get("process.name")
            if program:
                event["event.module"] = program
            yield event
        self.records = counts["lines"]
        if counts["parse_errors"]:
            self.warnings["not_syslog"] += counts["parse_errors"]
