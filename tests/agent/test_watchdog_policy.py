"""The agent policy file, and the watchdog that keeps the agent within its budget."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from vigil.agent import memory
from vigil.agent.errors import AgentError
from vigil.agent.policy import Budget, Policy
from vigil.agent.sensors import REGISTRY
from vigil.agent.sensors.base import Sensor, SensorContext
from vigil.agent.watchdog import Watchdog

KNOWN = sorted(REGISTRY)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yml"
    path.write_text(text)
    return path


def test_the_default_policy_runs_every_sensor_but_fallbacks() -> None:
    policy = Policy.default(KNOWN)
    assert "process_audit" in policy.sensors and "process_poll" not in policy.sensors
    assert policy.budget == Budget(cpu_percent=5.0, rss_mb=150.0)


def test_a_policy_turns_sensors_off_sets_options_and_the_budget(tmp_path: Path) -> None:
    policy = Policy.load(
        write(
            tmp_path,
            """
sensors:
  inventory: {inventory_interval: 600}
  auth_log: false
budget: {cpu_percent: 2, rss_mb: 100}
""",
        ),
        KNOWN,
    )
    assert policy.sensors["inventory"] == {"inventory_interval": 600}
    assert "auth_log" not in policy.sensors and "process_audit" in policy.sensors
    assert policy.budget == Budget(cpu_percent=2, rss_mb=100)
    assert list(policy.only(["inventory"]).sensors) == ["inventory"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("sensors: {keylogger: {}}", "no sensor 'keylogger'; known: ", id="unknown"),
        pytest.param("sensors: {inventory: 3}", "takes a mapping of options", id="options"),
        pytest.param("budget: {cpu: 3}", "bad budget", id="budget"),
        pytest.param("sensor: {}", "unknown keys", id="top-level"),
        pytest.param("sensors: [", "cannot read agent policy", id="yaml"),
    ],
)
def test_a_bad_policy_says_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(AgentError, match=message):
        Policy.load(write(tmp_path, text), KNOWN)


def sensors_by_name(tmp_path: Path, names: list[str]) -> list[Sensor]:
    context = SensorContext(
        agent_id="a", host_id="a", host_name="h", emit=lambda _doc: None, state_dir=str(tmp_path)
    )
    return [REGISTRY[name](context) for name in names]


def test_over_budget_the_cheapest_sensor_to_lose_goes_first(tmp_path: Path) -> None:
    running = sensors_by_name(tmp_path, ["process_poll", "auth_log", "inventory"])
    shed: list[str] = []

    def shed_one(sensor: Sensor, reason: str) -> None:
        assert "over budget" in reason
        shed.append(sensor.name)
        running.remove(sensor)

    # A budget nothing can meet: every full window sheds one sensor.
    watchdog = Watchdog(Budget(cpu_percent=-1, rss_mb=0), lambda: list(running), shed_one, window=2)
    for _ in range(8):
        watchdog.sample()
    assert shed == ["inventory", "auth_log"]
    assert [s.name for s in running] == ["process_poll"]
    report = watchdog.report()
    assert report["shed"] == ["inventory", "auth_log"] and report["peak_rss_mb"] > 0


def test_within_budget_nothing_is_shed(tmp_path: Path) -> None:
    running = sensors_by_name(tmp_path, ["inventory"])
    watchdog = Watchdog(
        Budget(cpu_percent=10_000, rss_mb=1_000_000),
        lambda: running,
        lambda s, r: pytest.fail(f"shed {s.name}: {r}"),
        window=2,
    )
    for _ in range(4):
        watchdog.sample()
    assert watchdog.report()["shed"] == []


def test_run_command_is_off_unless_the_policy_turns_it_on(tmp_path: Path) -> None:
    assert Policy.default(KNOWN).allow_run_command is False
    policy = Policy.load(write(tmp_path, "response: {run_command: true}"), KNOWN)
    assert policy.allow_run_command is True
    assert policy.only(["inventory"]).allow_run_command is True
    with pytest.raises(AgentError, match="takes only run_command"):
        Policy.load(write(tmp_path, "response: {shell: true}"), KNOWN)


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _fragmented_heap() -> list[bytes]:
    # 64 MB of 2 KB blocks from the C heap, one in 64 kept: freed, but glibc cannot shrink the
    # heap past the ones still alive, so the process keeps it resident.
    blocks = [bytes(2048) + i.to_bytes(4, "little") for i in range(32_768)]
    return blocks[::64] + [blocks[-1]]


@pytest.mark.skipif(memory._MALLOC_TRIM is None, reason="no glibc malloc_trim on this system")
def test_freed_memory_is_handed_back_before_a_sensor_is_shed(tmp_path: Path) -> None:
    kept = _fragmented_heap()
    held = _rss_mb()
    memory.release_free_memory()
    trimmed = _rss_mb()
    assert held - trimmed > 30, (held, trimmed)

    # Over the memory budget only with what is freed already: nothing is shed.
    kept += _fragmented_heap()
    assert _rss_mb() > (held + trimmed) / 2
    running = sensors_by_name(tmp_path, ["inventory"])
    watchdog = Watchdog(
        Budget(cpu_percent=10_000, rss_mb=(held + trimmed) / 2),
        lambda: running,
        lambda s, r: pytest.fail(f"shed {s.name}: {r}"),
        window=2,
    )
    for _ in range(2):
        watchdog.sample()
    assert watchdog.report()["shed"] == [] and running
    assert float(watchdog.report()["rss_mb"]) < (held + trimmed) / 2
    del kept
