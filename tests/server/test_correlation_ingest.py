"""Sigma correlation rules on the live ingest stream of a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningServer, start_server
from tests.server.test_agent_protocol import process_event
from vigil.agent import identity
from vigil.agent.transport import ServerLink

RULES = """
title: Discovery command
id: 6f0b0c2e-6d5e-4f0e-9d3a-0a1f2b3c4d5e
name: discovery_command
status: test
logsource: {product: linux, category: process_creation}
detection:
    selection:
        Image|endswith: ['/id', '/uname', '/hostname']
    condition: selection
level: low
---
title: Burst of discovery commands on one host
id: 0c5d8a9e-1f2b-4c3d-8e7f-6a5b4c3d2e1f
status: test
correlation:
    type: event_count
    rules: [discovery_command]
    group-by: [host.name]
    timespan: 5m
    condition: {gte: 3}
tags: [attack.discovery, attack.t1082]
level: high
"""


@pytest.fixture
def correlating_server(tmp_path: Path) -> Iterator[RunningServer]:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "discovery.yml").write_text(RULES)
    running, server, thread = start_server(tmp_path / "server", [rules])
    try:
        yield running
    finally:
        running.api.close()
        running.ctx.doorbells.close()
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)
        running.ctx.close()


def test_three_discovery_commands_raise_one_correlation_alert_and_no_base_alerts(
    correlating_server: RunningServer, tmp_path: Path
) -> None:
    enrolled = identity.enroll(
        tmp_path / "agent", correlating_server.url, correlating_server.enroll_token()
    )
    link = ServerLink(enrolled)
    events = [
        process_event(1, "id -u", "/usr/bin/id"),
        process_event(2, "uname -a", "/usr/bin/uname"),
        process_event(3, "ls", "/usr/bin/ls"),
        process_event(4, "hostname", "/usr/bin/hostname"),
    ]
    assert link.post("/events", {"spool_epoch": "e", "events": events}).status_code == 200
    link.close()

    alerts = correlating_server.api.call("GET", "/alerts")
    assert [a["rule"]["title"] for a in alerts] == ["Burst of discovery commands on one host"]
    correlation = alerts[0]["rule"]["correlation"]
    assert correlation["value"] == 3 and correlation["group"] == {"host.name": enrolled.hostname}
    assert alerts[0]["attack"] == ["T1082"]
