"""The server alerts when an agent's visibility drops: a sensor dies, events are lost, silence."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningServer
from vigil.agent import identity
from vigil.agent.transport import ServerLink
from vigil.cli.output import RENDERERS
from vigil.server.visibility import flag_silent_agents


@pytest.fixture
def link(running_server: RunningServer, tmp_path: Path) -> Iterator[ServerLink]:
    enrolled = identity.enroll(
        tmp_path / "agent", running_server.url, running_server.enroll_token()
    )
    server_link = ServerLink(enrolled)
    yield server_link
    server_link.close()


def beat(state: str = "running", lost: int = 0, dropped: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "sensors": {
            "process_audit": {
                "state": state,
                "message": "",
                "counters": {"events": 10, "lost": lost},
            }
        },
        "spool": {"queued": 0, "dropped": dropped},
        "isolated": False,
        **extra,
    }


def alert_rules(server: RunningServer) -> list[str]:
    return [a["rule"]["id"] for a in server.api.call("GET", "/alerts")]


def test_a_healthy_agent_raises_nothing(running_server: RunningServer, link: ServerLink) -> None:
    for _ in range(3):
        assert link.post("/heartbeat", beat()).status_code == 200
    assert alert_rules(running_server) == []


def test_a_sensor_that_dies_raises_an_alert(
    running_server: RunningServer, link: ServerLink
) -> None:
    link.post("/heartbeat", beat())
    link.post("/heartbeat", beat(state="failed"))
    alerts = running_server.api.call("GET", "/alerts")
    assert [a["rule"]["id"] for a in alerts] == ["vigil-visibility-sensor-down"]
    assert alerts[0]["attack"] == ["T1562.001"]
    assert alerts[0]["event"]["vigil"]["visibility"]["sensor"] == "process_audit"


def test_lost_events_raise_an_alert_with_the_count(
    running_server: RunningServer, link: ServerLink
) -> None:
    link.post("/heartbeat", beat(lost=2))
    link.post("/heartbeat", beat(lost=2))
    link.post("/heartbeat", beat(lost=9, dropped=5))
    alerts = running_server.api.call("GET", "/alerts")
    lost = sorted(a["event"]["vigil"]["visibility"]["events_lost"] for a in alerts)
    assert {a["rule"]["id"] for a in alerts} == {"vigil-visibility-telemetry-lost"}
    assert lost == [5, 7]


def test_an_agent_that_goes_quiet_raises_one_alert_until_it_returns(
    running_server: RunningServer, link: ServerLink
) -> None:
    # The server's own watcher may get there first; either way there is one alert per silence.
    link.post("/heartbeat", beat())
    running_server.ctx.config.heartbeat_timeout = 0.2
    time.sleep(0.5)
    flag_silent_agents(running_server.ctx)
    flag_silent_agents(running_server.ctx)
    assert alert_rules(running_server) == ["vigil-visibility-heartbeat-missing"]

    link.post("/heartbeat", beat())
    time.sleep(0.5)
    flag_silent_agents(running_server.ctx)
    assert alert_rules(running_server) == ["vigil-visibility-heartbeat-missing"] * 2


def test_a_clean_stop_is_said_in_the_silence_alert(
    running_server: RunningServer, link: ServerLink
) -> None:
    link.post("/heartbeat", beat())
    link.post("/heartbeat", beat(state="stopped", stopping=True))
    running_server.ctx.config.heartbeat_timeout = 0.2
    time.sleep(0.5)
    flag_silent_agents(running_server.ctx)
    alerts = running_server.api.call("GET", "/alerts")
    assert [a["rule"]["id"] for a in alerts] == ["vigil-visibility-heartbeat-missing"]
    assert alerts[0]["event"]["vigil"]["visibility"]["said_it_was_stopping"] is True
    # `vigil alerts show` says so too, and draws no empty process tree.
    shown = RENDERERS[("alerts", "show")](
        running_server.api.call("GET", f"/alerts/{alerts[0]['id']}")
    )
    assert "said_it_was_stopping True" in shown and "Process tree" not in shown
    assert alerts[0]["event"]["vigil"]["visibility"]["last_seen"].endswith("Z")  # ISO 8601
