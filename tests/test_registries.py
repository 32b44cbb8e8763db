"""Every plugin declares what the agent and the server rely on, and documents itself."""

from __future__ import annotations

import inspect

import pytest

from vigil.agent.respond import REGISTRY as ACTIONS
from vigil.agent.sensors import REGISTRY as SENSORS


@pytest.mark.parametrize("name", sorted(SENSORS))
def test_sensor_declarations(name: str) -> None:
    sensor = SENSORS[name]
    assert sensor.name == name
    assert sensor.supported_os and all(isinstance(o, str) for o in sensor.supported_os)
    assert isinstance(sensor.requires_root, bool) and sensor.version
    assert inspect.getdoc(sensor), f"sensor {name} has no docstring"
    for hook in ("check_compatible", "start", "stop"):
        assert inspect.getdoc(getattr(sensor, hook)), f"{name}.{hook} has no docstring"


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_action_declarations(name: str) -> None:
    action = ACTIONS[name]
    assert action.name == name
    assert action.permission.startswith("response.")
    assert isinstance(action.destructive, bool)
    assert action.undo is None or action.undo in ACTIONS, f"{name} is undone by an unknown action"
    assert inspect.getdoc(action), f"action {name} has no docstring"
    assert inspect.getdoc(action.run), f"{name}.run has no docstring"


def test_the_main_plugins_are_registered() -> None:
    assert {"process_audit", "process_poll"} <= set(SENSORS)
    assert {"isolate", "release", "kill"} <= set(ACTIONS)
