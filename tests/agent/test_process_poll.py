"""The psutil polling fallback sensor: degraded, but it sees long-lived processes come and go."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from vigil.agent.errors import AgentError
from vigil.agent.processes import read_start_ticks
from vigil.agent.sensors.base import SensorContext
from vigil.agent.sensors.process_poll import ProcessPollSensor
from vigil.schema.ecs import entity_id

MakeContext = Callable[..., tuple[SensorContext, list[dict[str, Any]]]]


def test_poll_sensor_reports_start_and_end(
    make_context: MakeContext, wait_for: Callable[..., Any]
) -> None:
    context, events = make_context(poll_interval=0.1)
    sensor = ProcessPollSensor(context)
    sensor.check_compatible()
    sensor.start()
    child = subprocess.Popen(["/bin/sleep", "30"])
    try:
        health = sensor.health()
        assert health.state == "degraded"
        assert "processes shorter than that are missed" in health.message
        started = wait_for(
            lambda: [
                e
                for e in list(events)
                if e["process"]["pid"] == child.pid and e["event"]["type"] == ["start"]
            ]
        )
        assert started, "no start event for the sleeping child"
        ticks = read_start_ticks(child.pid)
    finally:
        child.kill()  # our own child
        child.wait()
    ended = wait_for(
        lambda: [
            e
            for e in list(events)
            if e["process"]["pid"] == child.pid and e["event"]["type"] == ["end"]
        ]
    )
    sensor.stop()
    doc = started[0]["process"]
    assert doc["args"] == ["/bin/sleep", "30"]
    assert doc["entity_id"] == entity_id("agent-test", child.pid, ticks or -1)
    assert doc["parent"]["entity_id"] == context.processes.get(doc["parent"]["pid"]).entity_id
    assert ended and ended[0]["process"]["entity_id"] == doc["entity_id"]
    assert sensor.health().state == "stopped"


def test_poll_sensor_rejects_a_bad_interval(make_context: MakeContext) -> None:
    context, _events = make_context(poll_interval=0)
    sensor = ProcessPollSensor(context)
    with pytest.raises(AgentError, match="poll_interval=0 is invalid"):
        sensor.start()
    assert sensor.health().state == "failed"


def test_poll_sensor_needs_no_root() -> None:
    assert ProcessPollSensor.requires_root is False
    assert ProcessPollSensor.name == "process_poll"
