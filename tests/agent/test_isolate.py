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
    IsolationState,
    ReleaseAction,
    lease_event,
    parse_request,
    resolve_server,
)
from vigil.agent.respond.isolation_rules import build_ruleset, parse_allow, verdict
from vigil.agent.respond.nft import list_tables
from vigil.schema.validate import validate_event

PORT = 8443
OTHER_PORT = 9000
# An address nothing in the lab has: the endpoint reaches the server through it only by DNAT.
NAT_ADDRESS = "10.77.0.250"

_reason = skip_reason() or (None if shutil.which("nft") else "nftables 'nft' is not installed")
netlab = pytest.mark.skipif(_reason is not None, reason=_reason or "")

# Runs inside the endpoint namespace: call one function of vigil.agent.respond.isolate with an
# ActionContext and print its result (or the error, with what the action found) as JSON.
_CALL = """
import dataclasses, json, sys
from vigil.agent.respond import REGISTRY, ActionContext, isolate
state_dir, host, port, what, params = sys.argv[1:6]
params = json.loads(params)
ctx = ActionContext("test-agent", state_dir, host, int(port))
try:
    if what in REGISTRY:
        out = REGISTRY[what](ctx).run(params)
    elif what == "reapply_if_isolated":
        state = isolate.reapply_if_isolated(ctx)
        out = state and dataclasses.asdict(state)
    elif what == "release_if_lease_expired":
        state = isolate.release_if_lease_expired(ctx, params["silent"])
        out = state and dataclasses.asdict(state)
    else:
        out = isolate.isolation_active()
except Exception as exc:
    out = {"error": type(exc).__name__, "message": str(exc), "result": getattr(exc, "result", {})}
print(json.dumps(out))
"""


def _root_has_no_isolation_table() -> None:
    assert ("inet", TABLE_NAME) not in list_tables(), "isolation table in the runner's namespace"


@pytest.fixture
def lab() -> Iterator[Lab]:
    _root_has_no_isolation_table()
    with Lab() as built:
        built.server.serve_tcp(PORT)
        built.server.serve_tcp(OTHER_PORT, hold=True)
        built.third.serve_tcp(PORT, hold=True)
        built.third.serve_tcp(OTHER_PORT)
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
ISOLATED = {
    "server4": True,
    "server6": False,
    "server4-other-port": False,
    "third4": False,
    "third6": False,
}


def not_isolated(lab: Lab, state_dir: Path) -> None:
    assert call(lab, state_dir, "isolation_active") is False
    assert not (state_dir / "isolation.json").exists()
    assert reach(lab) == OPEN


@netlab
@pytest.mark.root
def test_isolate_keeps_server_blocks_the_rest_and_release_restores(
    lab: Lab, tmp_path: Path
) -> None:
    state = tmp_path / "isolation.json"
    assert reach(lab) == OPEN
    lab.endpoint.serve_tcp(PORT)

    result = call(lab, tmp_path, "isolate")

    assert {k: result[k] for k in ("isolated", "already_isolated", "server", "port", "allow")} == {
        "isolated": True,
        "already_isolated": False,
        "server": [lab.server.ipv4],
        "port": PORT,
        "allow": [],
    }
    assert result["lease_seconds"] is None
    assert result["proof"]["server"]["reached"] is True
    assert result["proof"]["server"]["address"] == lab.server.ipv4
    # No connection was cut and the lab has no default route: nothing to prove blocked.
    assert result["proof"]["blocked"] is None
    assert "give 'probe'" in result["proof"]["note"]
    assert call(lab, tmp_path, "isolation_active") is True
    assert reach(lab) == ISOLATED
    assert not lab.third.connects(lab.endpoint.ipv4, PORT)
    assert not lab.third.connects(lab.endpoint.ipv6, PORT)
    saved = json.loads(state.read_text())
    assert saved["server"] == [lab.server.ipv4]
    assert saved["server_port"] == PORT
    assert saved["reached"] == lab.server.ipv4

    released = call(lab, tmp_path, "release")

    assert released == {"isolated": False, "was_isolated": True}
    not_isolated(lab, tmp_path)
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
def test_allow_entries_with_a_port_open_that_port_only_v4_and_v6(lab: Lab, tmp_path: Path) -> None:
    third = lab.third
    lab.endpoint.serve_tcp(PORT)
    lab.endpoint.serve_tcp(OTHER_PORT)
    allow = [f"{third.ipv4}:{PORT}", f"[{third.ipv6}]:{PORT}"]

    result = call(lab, tmp_path, "isolate", {"allow": allow})

    assert result["allow"] == [f"{third.ipv4}/32:{PORT}", f"[{third.ipv6}/128]:{PORT}"]
    for address in (third.ipv4, third.ipv6):
        # Its service on the port, and ours on the port for it; nothing else.
        assert lab.endpoint.connects(address, PORT)
        assert not lab.endpoint.connects(address, OTHER_PORT)
    for address in (lab.endpoint.ipv4, lab.endpoint.ipv6):
        assert lab.third.connects(address, PORT)
        assert not lab.third.connects(address, OTHER_PORT)
    assert not lab.server.connects(lab.endpoint.ipv4, PORT)
    call(lab, tmp_path, "release")


@netlab
@pytest.mark.root
def test_dry_run_lists_what_would_be_cut_and_kept_and_applies_nothing(
    lab: Lab, tmp_path: Path
) -> None:
    to_third = lab.endpoint.hold_connection(lab.third.ipv4, PORT)
    to_server = lab.endpoint.hold_connection(lab.server.ipv4, OTHER_PORT)
    to_third6 = lab.endpoint.hold_connection(lab.third.ipv6, PORT)

    result = call(
        lab, tmp_path, "isolate", {"dry_run": True, "allow": [f"[{lab.third.ipv6}]:{PORT}"]}
    )

    assert result["dry_run"] is True
    assert result["isolated"] is False
    assert result["would_apply"]["server"] == [lab.server.ipv4]
    assert result["would_apply"]["allow"] == [f"[{lab.third.ipv6}/128]:{PORT}"]
    cut = {(c["remote_ip"], c["remote_port"]): c for c in result["cut"]}
    kept = {(c["remote_ip"], c["remote_port"]): c for c in result["kept"]}
    assert set(cut) == {(lab.third.ipv4, PORT)}
    row = cut[(lab.third.ipv4, PORT)]
    assert row["pid"] == to_third.pid
    assert row["process"].startswith("python")
    assert row["transport"] == "tcp" and row["status"] == "ESTABLISHED"
    assert kept[(lab.server.ipv4, OTHER_PORT)]["pid"] == to_server.pid
    assert kept[(lab.server.ipv4, OTHER_PORT)]["kept_by"] == "server"
    assert kept[(lab.third.ipv6, PORT)]["pid"] == to_third6.pid
    assert kept[(lab.third.ipv6, PORT)]["kept_by"] == f"allow [{lab.third.ipv6}/128]:{PORT}"
    assert result["would_apply"]["probe"] == {"address": lab.third.ipv4, "port": PORT}
    not_isolated(lab, tmp_path)


@netlab
@pytest.mark.root
def test_proof_blocks_a_cut_connection_and_a_given_probe(lab: Lab, tmp_path: Path) -> None:
    holder = lab.endpoint.hold_connection(lab.third.ipv4, PORT)

    result = call(lab, tmp_path, "isolate")

    proof = result["proof"]
    assert proof["ok"] is True
    assert proof["server"]["reached"] is True
    blocked = proof["blocked"]
    assert (blocked["address"], blocked["port"]) == (lab.third.ipv4, PORT)
    assert blocked["source"].startswith("a connection being cut, of python")
    assert f"(pid {holder.pid})" in blocked["source"]
    assert blocked["reached"] is False
    assert blocked["dropped_by_isolation"] is True
    assert [(c["remote_ip"], c["pid"]) for c in result["connections_cut"]] == [
        (lab.third.ipv4, holder.pid)
    ]

    again = call(lab, tmp_path, "isolate", {"probe": f"[{lab.third.ipv6}]:{OTHER_PORT}"})

    blocked = again["proof"]["blocked"]
    assert (blocked["address"], blocked["port"]) == (lab.third.ipv6, OTHER_PORT)
    assert blocked["source"] == "the probe parameter"
    assert blocked["reached"] is False and blocked["dropped_by_isolation"] is True
    call(lab, tmp_path, "release")


@netlab
@pytest.mark.root
def test_a_probe_the_isolation_lets_through_is_refused(lab: Lab, tmp_path: Path) -> None:
    result = call(lab, tmp_path, "isolate", {"probe": f"{lab.server.ipv4}:{OTHER_PORT}"})

    assert result["error"] == "ResponseError"
    assert "is let through by the isolation (server)" in result["message"]
    not_isolated(lab, tmp_path)


def _nat_to_server(lab: Lab) -> None:
    """Send the endpoint's connections to NAT_ADDRESS on to the server, as a local proxy
    redirect would: the filter then sees the server's real address, not the one resolved."""
    lab.endpoint.run(
        ["nft", "-f", "-"],
        stdin=(
            "table ip vigil_test_nat {\n"
            "\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n"
            f"\t\tip daddr {NAT_ADDRESS} tcp dport {PORT} dnat to {lab.server.ipv4}\n\t}}\n}}\n"
        ),
    )


@netlab
@pytest.mark.root
def test_rolls_back_when_the_server_is_lost_once_the_rules_are_in(lab: Lab, tmp_path: Path) -> None:
    _nat_to_server(lab)
    assert lab.endpoint.connects(NAT_ADDRESS, PORT)

    result = call(lab, tmp_path, "isolate", server_host=NAT_ADDRESS)

    assert result["error"] == "ResponseError"
    assert result["message"].startswith(f"isolate: rolled back: the server {NAT_ADDRESS} port")
    assert "the host is not isolated" in result["message"]
    proof = result["result"]["proof"]
    assert proof["server_before"][0]["reached"] is True
    assert proof["server"]["reached"] is False
    assert result["result"] == {**result["result"], "isolated": False, "rolled_back": True}
    not_isolated(lab, tmp_path)


@netlab
@pytest.mark.root
def test_a_refresh_that_loses_the_server_puts_the_previous_isolation_back(
    lab: Lab, tmp_path: Path
) -> None:
    _nat_to_server(lab)
    call(lab, tmp_path, "isolate", {"allow": [lab.third.ipv6]})

    # The same agent now finds its server under another address that the rules would not let
    # through once NAT has rewritten it.
    result = call(lab, tmp_path, "isolate", server_host=NAT_ADDRESS)

    assert result["error"] == "ResponseError"
    assert "the previous isolation was put back" in result["message"]
    assert result["result"]["isolated"] is True
    assert call(lab, tmp_path, "isolation_active") is True
    saved = json.loads((tmp_path / "isolation.json").read_text())
    assert saved["server"] == [lab.server.ipv4]
    assert saved["allow"] == [f"{lab.third.ipv6}/128"]
    assert reach(lab) == {**ISOLATED, "third6": True}
    call(lab, tmp_path, "release")


@netlab
@pytest.mark.root
def test_isolating_again_refreshes_the_rules_and_keeps_or_replaces_the_allow_list(
    lab: Lab, tmp_path: Path
) -> None:
    call(lab, tmp_path, "isolate", {"allow": [lab.third.ipv6]})
    # Someone opens a hole in the isolation table.
    for rule in (
        f"input ip saddr {lab.third.ipv4} accept",
        f"output ip daddr {lab.third.ipv4} accept",
    ):
        lab.endpoint.run(["nft", *f"add rule inet {TABLE_NAME} {rule}".split()])
    assert lab.endpoint.connects(lab.third.ipv4, PORT)

    again = call(lab, tmp_path, "isolate")

    assert again["already_isolated"] is True
    assert again["rules_refreshed"] is True
    assert again["changed"] == []
    assert again["allow"] == [f"{lab.third.ipv6}/128"]
    assert reach(lab) == {**ISOLATED, "third6": True}

    replaced = call(lab, tmp_path, "isolate", {"allow": [f"{lab.third.ipv4}:{PORT}"]})

    assert replaced["already_isolated"] is True
    assert replaced["changed"] == ["allow"]
    assert replaced["allow"] == [f"{lab.third.ipv4}/32:{PORT}"]
    assert reach(lab) == {**ISOLATED, "third4": True}
    call(lab, tmp_path, "release")


@netlab
@pytest.mark.root
def test_reapply_after_the_table_is_lost_keeps_allow_list_and_lease(
    lab: Lab, tmp_path: Path
) -> None:
    assert call(lab, tmp_path, "reapply_if_isolated") is None
    allow = [f"[{lab.third.ipv6}]:{PORT}"]
    call(lab, tmp_path, "isolate", {"allow": allow, "lease_seconds": 600})
    saved = json.loads((tmp_path / "isolation.json").read_text())
    assert saved["allow"] == [f"[{lab.third.ipv6}/128]:{PORT}"]
    assert saved["lease_seconds"] == 600
    # What a reboot does: the rules are gone, the state file is not.
    lab.endpoint.run(["nft", "delete", "table", "inet", TABLE_NAME])
    assert lab.endpoint.connects(lab.third.ipv4, PORT)

    state = call(lab, tmp_path, "reapply_if_isolated")

    assert state["allow"] == saved["allow"]
    assert state["lease_seconds"] == 600
    assert call(lab, tmp_path, "isolation_active") is True
    assert reach(lab) == {**ISOLATED, "third6": True}
    assert not lab.endpoint.connects(lab.third.ipv6, OTHER_PORT)
    call(lab, tmp_path, "release")
    assert call(lab, tmp_path, "reapply_if_isolated") is None


@netlab
@pytest.mark.root
def test_isolating_a_host_whose_rules_were_lost_keeps_the_saved_allow_list_and_lease(
    lab: Lab, tmp_path: Path
) -> None:
    call(lab, tmp_path, "isolate", {"allow": [lab.third.ipv6], "lease_seconds": 600})
    lab.endpoint.run(["nft", "delete", "table", "inet", TABLE_NAME])

    result = call(lab, tmp_path, "isolate")

    assert result["already_isolated"] is False
    assert result["allow"] == [f"{lab.third.ipv6}/128"]
    assert result["lease_seconds"] == 600
    assert reach(lab) == {**ISOLATED, "third6": True}
    call(lab, tmp_path, "release")


@netlab
@pytest.mark.root
def test_lease_releases_only_after_the_server_was_silent_that_long(
    lab: Lab, tmp_path: Path
) -> None:
    call(lab, tmp_path, "isolate", {"lease_seconds": 30})

    assert call(lab, tmp_path, "release_if_lease_expired", {"silent": 29.0}) is None
    assert call(lab, tmp_path, "isolation_active") is True

    released = call(lab, tmp_path, "release_if_lease_expired", {"silent": 31.0})

    assert released["lease_seconds"] == 30
    not_isolated(lab, tmp_path)
    assert call(lab, tmp_path, "release_if_lease_expired", {"silent": 99.0}) is None


@netlab
@pytest.mark.root
@pytest.mark.parametrize(
    ("params", "server_host", "message"),
    [
        ({"allow": ["10.0.0.300"]}, None, "allow entry '10.0.0.300' is not an IP address"),
        ({"allow": "10.0.0.1"}, None, "'allow' must be a list"),
        ({"allow": ["0.0.0.0/0"]}, None, "allows every address, which is no isolation"),
        ({"allow": ["10.0.0.1:70000"]}, None, "port '70000' in '10.0.0.1:70000' is not a port"),
        ({"dryrun": True}, None, "unknown parameter 'dryrun'"),
        ({"dry_run": "yes"}, None, "'dry_run' must be true or false"),
        ({"lease_seconds": 5}, None, "'lease_seconds' must be a whole number of seconds"),
        ({"probe": "example.com:80"}, None, "probe 'example.com:80' is not an IP address"),
        ({}, "vigil-no-such-host.invalid", "cannot resolve the server host"),
    ],
    ids=[
        "bad-address",
        "allow-not-list",
        "allow-everything",
        "bad-port",
        "misspelt-dry-run",
        "dry-run-not-bool",
        "short-lease",
        "probe-by-name",
        "unresolvable-server",
    ],
)
def test_refused_isolation_changes_nothing(
    lab: Lab, tmp_path: Path, params: dict[str, Any], server_host: str | None, message: str
) -> None:
    result = call(lab, tmp_path, "isolate", params, server_host=server_host)

    assert result["error"] == "ResponseError"
    assert message in result["message"]
    not_isolated(lab, tmp_path)


@netlab
@pytest.mark.root
def test_a_server_unreachable_before_isolating_is_refused(lab: Lab, tmp_path: Path) -> None:
    # Nothing listens on the endpoint's own address: a "server" there refuses at once.
    result = call(lab, tmp_path, "isolate", server_host=lab.endpoint.ipv4)

    assert result["error"] == "ResponseError"
    assert "cannot be reached" in result["message"]
    assert "even before isolating (refused" in result["message"]
    assert result["result"]["proof"]["server_before"][0]["outcome"] == "refused"
    not_isolated(lab, tmp_path)


@netlab
@pytest.mark.root
def test_missing_nft_is_reported(lab: Lab, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()

    result = call(lab, tmp_path, "isolate", env={"PATH": str(empty)})

    assert result["error"] == "ResponseError"
    assert result["message"] == "nftables 'nft' command not found: install the nftables package"
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


@pytest.mark.parametrize(
    ("text", "network", "port"),
    [
        ("192.0.2.7", "192.0.2.7/32", None),
        (" 10.1.2.3/8 ", "10.0.0.0/8", None),
        ("192.0.2.8:443", "192.0.2.8/32", 443),
        ("10.0.0.0/8:53", "10.0.0.0/8", 53),
        ("2001:db8::1", "2001:db8::1/128", None),
        ("[2001:db8::1]:22", "2001:db8::1/128", 22),
        ("[2001:db8::/64]:53", "2001:db8::/64", 53),
        ("[2001:db8::1]", "2001:db8::1/128", None),
    ],
)
def test_allow_entry_forms(text: str, network: str, port: int | None) -> None:
    (entry,) = parse_allow([text])

    assert (str(entry.network), entry.port) == (network, port)
    assert parse_allow([str(entry)]) == [entry]


def test_allow_list_drops_duplicates_and_caps_its_length() -> None:
    assert len(parse_allow(["192.0.2.7", "192.0.2.7/32", "192.0.2.7:80"])) == 2
    with pytest.raises(ResponseError, match="more than 256"):
        parse_allow([f"10.0.{i // 256}.{i % 256}" for i in range(257)])


def test_ruleset_for_an_ipv4_server_has_no_ipv6_server_rule() -> None:
    text = build_ruleset(["10.77.0.2"], PORT, parse_allow(["fd77::3"]))

    assert "ip daddr { 10.77.0.2 } tcp dport 8443 accept" in text
    assert "ip6 daddr { fd77::3/128 } accept" in text
    assert "ip6 daddr { fd77::2" not in text
    assert text.startswith(f"table inet {TABLE_NAME}\ndelete table inet {TABLE_NAME}\n")
    assert text.count("policy drop;") == 3


def test_ruleset_for_an_entry_with_a_port() -> None:
    text = build_ruleset(["10.77.0.2"], PORT, parse_allow(["[fd77::3]:22"]))

    l4 = "meta l4proto { tcp, udp }"
    assert f"ip6 daddr fd77::3/128 {l4} th dport 22 accept" in text
    assert f"ip6 saddr fd77::3/128 {l4} th sport 22 ct state established accept" in text
    assert f"ip6 saddr fd77::3/128 {l4} th dport 22 accept" in text
    assert f"ip6 daddr fd77::3/128 {l4} th sport 22 ct state established accept" in text
    assert "ip6 daddr { fd77::3/128 }" not in text


def test_ruleset_refuses_a_bad_port() -> None:
    with pytest.raises(ResponseError, match="server port 0 is not a TCP port"):
        build_ruleset(["10.77.0.2"], 0, [])


@pytest.mark.parametrize(
    ("remote", "remote_port", "local_port", "expected"),
    [
        ("127.0.0.1", 5432, 40000, "loopback"),
        ("10.77.0.1", 22, 40000, "loopback"),
        ("10.77.0.2", 22, 40000, "server"),
        ("::ffff:10.77.0.2", 8443, 40000, "server"),
        ("192.0.2.7", 80, 40000, "allow 192.0.2.0/24"),
        ("10.77.0.3", 443, 40000, "allow 10.77.0.3/32:443"),
        ("10.77.0.3", 50000, 443, "allow 10.77.0.3/32:443"),
        ("10.77.0.3", 80, 40000, None),
        ("fd77::3", 443, 40000, None),
    ],
)
def test_verdict_mirrors_the_rules(
    remote: str, remote_port: int, local_port: int, expected: str | None
) -> None:
    allow = parse_allow(["192.0.2.0/24", "10.77.0.3:443"])

    why = verdict(
        remote,
        remote_port,
        local_port,
        server=["10.77.0.2"],
        allow=allow,
        local_addresses={"10.77.0.1"},
    )

    assert why == expected


def test_request_keeps_unset_parameters_apart() -> None:
    request = parse_request({"probe": "[fd77::3]", "lease_seconds": 0})

    assert request.allow is None
    assert request.probe == ("fd77::3", 443)
    assert request.lease_seconds is None and request.lease_given is True
    assert parse_request({"allow": []}).allow == []
    assert parse_request({}).lease_given is False


def test_lease_event_passes_the_event_model() -> None:
    state = IsolationState(
        server_host="vigil.example",
        server_port=PORT,
        server=["10.77.0.2"],
        allow=["10.77.0.3/32:443"],
        applied_at="2026-01-01T00:00:00Z",
        lease_seconds=60,
    )

    doc = lease_event("agent-1", "web-01", state, 75.4)
    doc["event"]["sequence"] = 1
    flat = validate_event(doc)

    assert flat["event.action"] == "isolation_lease_expired"
    assert flat["vigil.isolation.silent_seconds"] == 75
    assert "75 s, longer than the lease of 60 s" in flat["message"]


def test_resolve_server_accepts_addresses_and_names() -> None:
    assert resolve_server("10.77.0.2", PORT) == ["10.77.0.2"]
    assert resolve_server("fd77::2", PORT) == ["fd77::2"]
    assert "127.0.0.1" in resolve_server("localhost", PORT)
