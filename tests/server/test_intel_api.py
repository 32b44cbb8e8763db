"""Threat intelligence through the server: import, live matching, retro-hunt and allow-lists.

Feeds are the real ones in ../shared/data/threat-intel, uploaded the way `vigil intel import`
does. No traffic goes to the addresses in them: events naming those addresses are written by
the test and sent as an agent would send them.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SHARED_DATA, RunningServer
from tests.server.test_agent_protocol import process_event
from vigil.agent import identity
from vigil.agent.transport import ServerLink
from vigil.cli.client import CliError
from vigil.cli.main import main, read_feed_files
from vigil.cli.output import RENDERERS
from vigil.server.intel_api import refresh_due

INTEL = SHARED_DATA / "threat-intel"
FEODO = INTEL / "abuse.ch" / "feodotracker_ipblocklist_2024-04-04.csv"
STIX_HASH = next(INTEL.rglob("malware-indicator-for-file-hash.json"))
MISP_FEED = INTEL / "misp" / "misp-project-tests" / "feeds" / "misp"
STIX_SHA256 = "ef537f25c895bfa782526529a9b63d97aa631564d5d789c2b765448c8635fb6c"


@pytest.fixture
def link(running_server: RunningServer, tmp_path: Path) -> Iterator[ServerLink]:
    enrolled = identity.enroll(
        tmp_path / "agent", running_server.url, running_server.enroll_token()
    )
    server_link = ServerLink(enrolled)
    yield server_link
    server_link.close()


def connection(seq: int, address: str) -> dict[str, Any]:
    event = process_event(seq, "curl http://example.test/", executable="/usr/bin/curl")
    event["event"].update(category=["network"], type=["connection", "start"], action="connect")
    event["destination"] = {"ip": address, "port": 443}
    return event


def send(link: ServerLink, *events: dict[str, Any]) -> None:
    assert link.post("/events", {"spool_epoch": "e", "events": list(events)}).status_code == 200


def import_feed(server: RunningServer, path: Path, kind: str) -> dict[str, Any]:
    body = {"kind": kind, "files": read_feed_files(path)}
    result: dict[str, Any] = server.api.call("POST", "/intel/import", body)
    return result


def shown_alert(alert: dict[str, Any]) -> str:
    return RENDERERS[("alerts", "show")](alert)


def intel_alerts(server: RunningServer) -> list[dict[str, Any]]:
    return [a for a in server.api.call("GET", "/alerts") if a["rule"]["id"].startswith("intel:")]


def test_a_connection_to_a_listed_c2_raises_an_alert(
    running_server: RunningServer, link: ServerLink
) -> None:
    result = import_feed(running_server, FEODO, "csv")
    assert result["counts"]["added"] == 28
    send(link, connection(1, "192.9.135.73"), connection(2, "192.0.2.10"))
    alerts = intel_alerts(running_server)
    assert len(alerts) == 1
    assert alerts[0]["event"]["destination"]["ip"] == "192.9.135.73"
    assert alerts[0]["intel"][0]["field"] == "destination.ip"
    assert alerts[0]["intel"][0]["source"].startswith("feodotracker")
    assert "retro_hunt" not in alerts[0]["rule"]

    # `vigil alerts show` says what matched and what the event was about.
    shown = shown_alert(running_server.api.call("GET", f"/alerts/{alerts[0]['id']}"))
    assert "  event:    network connect" in shown
    assert "-> 192.9.135.73:443" in shown
    assert "  intel:    destination.ip = 192.9.135.73 matches ipv4 192.9.135.73 from feodo" in shown


def test_new_intelligence_is_run_back_over_history(
    running_server: RunningServer, link: ServerLink
) -> None:
    seen_before = process_event(1, "/tmp/dropper --run", executable="/tmp/dropper")
    seen_before["process"]["hash"] = {"sha256": STIX_SHA256.upper()}
    send(link, seen_before)
    assert intel_alerts(running_server) == []

    result = import_feed(running_server, STIX_HASH, "stix")
    assert result["retro_hunt_alerts"] == 1
    alerts = intel_alerts(running_server)
    assert [a["rule"]["retro_hunt"] for a in alerts] == [True]
    assert alerts[0]["event"]["process"]["executable"] == "/tmp/dropper"


def test_an_allow_listed_value_no_longer_alerts(
    running_server: RunningServer, link: ServerLink
) -> None:
    import_feed(running_server, FEODO, "csv")
    running_server.api.call(
        "POST", "/intel/allow", {"value": "192.9.135.0/24", "reason": "our own test range"}
    )
    send(link, connection(1, "192.9.135.73"))
    assert intel_alerts(running_server) == []
    listed = running_server.api.call("GET", "/intel/indicators")
    assert listed["allow"][0]["value"] == "192.9.135.0/24"
    # `vigil intel list` at a terminal: counts per type, then the allow-list.
    shown = RENDERERS[("intel", "list")](listed).splitlines()
    assert shown[0].split() == ["TYPE", "INDICATORS"] and "allow-list:" in shown
    assert shown[-1].split()[1] == "192.9.135.0/24"
    source = next(iter(listed["sources"]))
    assert source.startswith("feodotracker") and listed["sources"][source] == 28

    # A mistake is undone: off the allow-list, the range alerts again.
    running_server.api.call("POST", "/intel/disallow", {"value": "192.9.135.0/24"})
    send(link, connection(2, "192.9.135.73"))
    assert len(intel_alerts(running_server)) == 1
    with pytest.raises(CliError, match="404.*not on the allow-list"):
        running_server.api.call("POST", "/intel/disallow", {"value": "192.9.135.0/24"})

    # And a feed is dropped whole: nothing from it alerts any more.
    dropped = running_server.api.call("DELETE", f"/intel/sources/{source}")
    assert dropped == {"source": source, "removed": 28}
    send(link, connection(3, "192.9.135.73"))
    assert len(intel_alerts(running_server)) == 1
    assert running_server.api.call("GET", "/intel/indicators")["sources"] == {}
    audit = running_server.api.call("GET", "/audit", params={"limit": 2})
    assert [a["action"] for a in audit] == ["intel.remove", "intel.disallow"]


def test_a_feed_that_cannot_be_read_says_why(running_server: RunningServer) -> None:
    with pytest.raises(Exception, match="unknown feed kind|422"):
        running_server.api.call(
            "POST", "/intel/import", {"kind": "yara", "files": {"x.txt": "1.2.3.4"}}
        )
    with pytest.raises(Exception, match="relative path"):
        running_server.api.call(
            "POST", "/intel/import", {"kind": "list", "files": {"../etc/x": "1.2.3.4"}}
        )
    # A STIX bundle imported as CSV: nothing reads, so the kind is questioned, and the file is
    # named as it was sent, not by the server's temporary copy.
    with pytest.raises(CliError, match="422") as refused:
        import_feed(running_server, STIX_HASH, "csv")
    message = str(refused.value)
    assert "reads as a csv feed" in message and "is the kind right?" in message
    assert "vigil-feed-" not in message and STIX_HASH.name in message
    assert not any(running_server.api.call("GET", "/intel/indicators")["counts"].values())


def test_a_misp_feed_folder_is_named_after_itself(
    running_server: RunningServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("VIGIL_SERVER", running_server.url)
    monkeypatch.setenv("VIGIL_CA", str(running_server.ctx.authority.ca_path))
    token = (running_server.config.data_dir / "admin-token").read_text().strip()
    monkeypatch.setenv("VIGIL_TOKEN", token)
    assert main(["intel", "import", str(MISP_FEED), "--kind", "misp", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == MISP_FEED.name


class FeedServer:
    """A plain-list feed on loopback: it stands in for a remote feed, which cannot exist here."""

    def __init__(self) -> None:
        self.text = "198.51.100.7\n"
        handler = self._handler()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/blocklist.txt"

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        feed = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                body = feed.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_subscribed_feed_is_imported_now_and_refreshed_on_schedule(
    running_server: RunningServer, link: ServerLink
) -> None:
    feed = FeedServer()
    try:
        subscribed = running_server.api.call(
            "POST",
            "/intel/subscriptions",
            {"kind": "list", "url": feed.url, "source": "loopback-blocklist", "every_seconds": 60},
        )
        assert subscribed["last_result"].startswith("added 1")
        send(link, connection(1, "198.51.100.7"))
        assert len(intel_alerts(running_server)) == 1

        # The feed changes; the next refresh (due once the interval has passed) brings it in.
        feed.text = "198.51.100.7\n203.0.113.9\n"
        ctx = running_server.ctx
        assert refresh_due(ctx, now=time.time() + 30) == []
        assert refresh_due(ctx, now=time.time() + 61) == ["loopback-blocklist"]
        send(link, connection(2, "203.0.113.9"))
        assert len(intel_alerts(running_server)) == 2
    finally:
        feed.close()
