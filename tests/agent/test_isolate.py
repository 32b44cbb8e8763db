"""Isolate and release with real nftables, only ever inside network namespaces the test made.

The action runs in a Python process started with ``ip netns exec`` in the lab's ``endpoint``
namespace; the test runner's own namespace is checked never to hold the isolation table.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netns import Lab, skip_reason
from vigil.agent.respond import REGISTRY
from vigil.agent.respond.errors import ResponseError
from vigil.agent.respond.isolate import (
    TABLE_NAME,
    IsolateAction,
    ReleaseAction,
    build_ruleset,
    parse_allow,
    resolve_server,
)
from vigil.agent.respond.nft import list_tables

PORT = 8443
OTHER_PORT = 9000

_reason = skip_reason() or (None if shutil.which("nft") else "nftables 'nft' is not installed")
netlab = pytest.mark.skipif(_reason is not None, reason=_reason or "")

# Runs inside the endpoint namespace: call one function of vigil.agent.respond.isolate with an
# ActionContext and print its result (or the error) as JSON.
_CALL = """
import json, sys
from vigil.agent.respond import REGISTRY, ActionContext, isolate
state_dir, host, port, what, params = sys.argv[1:6]
ctx = ActionContext("test-agent", state_dir, host, int(port))
try:
    if what in REGISTRY:
        out = REGISTRY[what](ctx).run(json.loads(params))
    elif what == "reapply_if_isolated":
        out = isolate.reapply_if_isolated(ctx)
    else:
        out = isolate.isolation_active()
except Exception as exc:
    out = {"error": type(exc).__name__, "message": str(exc)}
print(json.dumps(out))
"""


def _root_has_no_isolation_table() -> None:
    assert ("inet", TABLE_NAME) not in list_tables(), "isolation table in the runner's namespace"


@pytest.fixture
def lab() -> Iterator[Lab]:
    _root_has_no_isolation_table()
    with Lab() as built:
        built.server.serve_tcp(PORT)
        built.server.serve_tcp(OTHER_PORT)
        built.third.serve_tcp(PORT)
        yield built
    _root_has_no_isolation_table()


def call(
    lab: Lab,
    state_dir: Path,
    what: str,
    params: dict[str, Any] | None = None,
    *,
    server_host: str | None = None,
    env: dict[str, str] | None = None,
) -> Any:
    """Call an action or helper inside the lab's endpoint namespace and return its JSON result."""
    host = server_host or lab.server.ipv4
    args = [str(state_dir), host, str(PORT), what, json.dumps(params or {})]
    done = lab.endpoint.run([sys.executable, "-c", _CALL, *args], env=env)
    _root_has_no_isolation_table()
    return json.loads(done.stdout)


def reach(lab: Lab) -> dict[str, bool]:
    """What the endpoint can connect to, by a short label."""
    server, third = lab.server, lab.third
    return {
        "server4": lab.endpoint.connects(server.ipv4, PORT),
        "server6": lab.endpoint.connects(server.ipv6, PORT),
        "server4-other-port": lab.endpoint.connects(server.ipv4, OTHER_PORT),
        "third4": lab.endpoint.connects(third.ipv4, PORT),
        "third6": lab.endpoint.connects(third.ipv6, PORT),
    }


OPEN = dict.fromkeys(["server4", "server6", "server4-other-port", "third4", "third6"], True)


@netlab
@pytest.mark.root
def test_isolate_keeps_server_blocks_the_rest_and_release_restores(
    lab: Lab, tmp_path: Path
) -> None:
    state = tmp_path / "isolation.json"
    assert reach(lab) == OPEN
    lab.endpoint.serve_tcp(PORT)

    result = call(lab, tmp_path, "isolate")

    assert result == {
        "isolated": True,
        "already_isolated": False,
        "server": [lab.server.ipv4],
        "port": PORT,
        "allow": [],
    }
    assert call(lab, tmp_path, "isolation_active") is True
    assert reach(lab) == {
        "server4": True,
        "server6": False,
        "server4-other-port": False,
        "third4": False,
        "third6": False,
    }
    assert not lab.third.connects(lab.endpoint.ipv4, PORT)
    assert not lab.third.connects(lab.endpoint.ipv6, PORT)
    saved = json.loads(state.read_text())
    assert saved["server"] == [lab.server.ipv4]
    assert saved["server_port"] == PORT

    again = call(lab, tmp_path, "isolate", {"allow": [lab.third.ipv4]})

    assert again["already_isolated"] is True
    assert again["allow"] == []
    assert not lab.endpoint.connects(lab.third.ipv4, PORT)

    released = call(lab, tmp_path, "release")

    assert released == {"isolated": False, "was_isolated": True}
    assert not state.exists()
    assert call(lab, tmp_path, "isolation_active") is False
    assert reach(lab) == OPEN
    assert lab.third.connects(lab.endpoint.ipv4, PORT)
    assert call(lab, tmp_path, "release") == {"isolated": False, "was_isolated": False}


@netlab
@pytest.mark.root
def test_isolate_over_ipv6_with_allow_list(lab: Lab, tmp_path: Path) -> None:
    allow = [f"{lab.third.ipv6}/128", "192.0.2.0/24"]

    result = call(lab, tmp_path, "isolate", {"allow": allow}, server_host=lab.server.ipv6)

    assert result["server"] == [lab.server.ipv6]
    assert result["allow"] == allow
    assert reach(lab) == {
        "server4": False,
        "server6": True,
        "server4-other-port": False,
        "third4": False,
        "third6": True,
    }
    assert call(lab, tmp_path, "release")["was_isolated"] is True
    assert reach(lab) == OPEN


@netlab
@pytest.mark.root
def test_reapply_after_the_table_is_lost(lab: Lab, tmp_path: Path) -> None:
    assert call(lab, tmp_path, "reapply_if_isolated") is False
    call(lab, tmp_path, "isolate")
    # What a reboot does: the rules are gone, the state file is not.
    lab.endpoint.run(["nft", "delete", "table", "inet", TABLE_NAME])
    assert lab.endpoint.connects(lab.third.ipv4, PORT)

    assert call(lab, tmp_path, "reapply_if_isolated") is True

    assert call(lab, tmp_path, "isolation_active") is True
    assert not lab.endpoint.connects(lab.third.ipv4, PORT)
    assert lab.endpoint.connects(lab.server.ipv4, PORT)
    call(lab, tmp_path, "release")
    assert call(lab, tmp_path, "reapply_if_isolated") is False


@netlab
@pytest.mark.root
@pytest.mark.parametrize(
    ("params", "server_host", "message"),
    [
        ({"allow": ["10.0.0.300"]}, None, "allow entry '10.0.0.300' is not an IP address"),
        ({"allow": "10.0.0.1"}, None, "'allow' must be a list"),
        ({}, "vigil-no-such-host.invalid", "cannot resolve the server host"),
    ],
    ids=["bad-address", "allow-not-list", "unresolvable-server"],
)
def test_refused_isolation_changes_nothing(
    lab: Lab, tmp_path: Path, params: dict[str, Any], server_host: str | None, message: str
) -> None:
    result = call(lab, tmp_path, "isolate", params, server_host=server_host)

    assert result["error"] == "ResponseError"
    assert message in result["message"]
    assert call(lab, tmp_path, "isolation_active") is False
    assert not (tmp_path / "isolation.json").exists()
    assert reach(lab) == OPEN


@netlab
@pytest.mark.root
def test_missing_nft_is_reported(lab: Lab, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()

    result = call(lab, tmp_path, "isolate", env={"PATH": str(empty)})

    assert result == {
        "error": "ResponseError",
        "message": "nftables 'nft' command not found: install the nftables package",
    }
    assert not (tmp_path / "isolation.json").exists()


@netlab
@pytest.mark.root
def test_nft_error_carries_its_stderr(lab: Lab) -> None:
    code = (
        "from vigil.agent.respond.nft import run_nft\n"
        "from vigil.agent.respond.errors import ResponseError\n"
        "try:\n"
        "    run_nft(['list', 'table', 'inet', 'vigil_no_such_table'])\n"
        "except ResponseError as exc:\n"
        "    print(exc)\n"
    )

    out = lab.endpoint.python(code).stdout

    assert "'nft list table inet vigil_no_such_table' failed with exit code 1" in out
    assert "No such file or directory" in out


def test_registered() -> None:
    assert REGISTRY["isolate"] is IsolateAction
    assert REGISTRY["release"] is ReleaseAction
    assert IsolateAction.permission == ReleaseAction.permission == "response.isolate"
    assert IsolateAction.destructive is True
    assert IsolateAction.__doc__ and ReleaseAction.__doc__


def test_ruleset_for_an_ipv4_server_has_no_ipv6_server_rule() -> None:
    text = build_ruleset(["10.77.0.2"], PORT, parse_allow(["fd77::3"]))

    assert "ip daddr { 10.77.0.2 } tcp dport 8443 accept" in text
    assert "ip6 daddr { fd77::3/128 } accept" in text
    assert "ip6 daddr { fd77::2" not in text
    assert text.startswith(f"table inet {TABLE_NAME}\ndelete table inet {TABLE_NAME}\n")
    assert text.count("policy drop;") == 3


def test_ruleset_refuses_a_bad_port() -> None:
    with pytest.raises(ResponseError, match="server port 0 is not a TCP port"):
        build_ruleset(["10.77.0.2"], 0, [])


def test_resolve_server_accepts_addresses_and_names() -> None:
    assert resolve_server("10.77.0.2", PORT) == ["10.77.0.2"]
    assert resolve_server("fd77::2", PORT) == ["fd77::2"]
    assert "127.0.0.1" in resolve_server("localhost", PORT)
