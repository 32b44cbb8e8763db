"""Fixtures for the process sensors: kernel audit state kept and restored around each test."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest

from vigil.agent.audit import netlink, rules
from vigil.agent.sensors.base import Sensor, SensorContext


def _vigil_rules(sock: netlink.AuditSocket) -> list[bytes]:
    return [data for data in sock.list_rules() if rules.is_vigil_rule(rules.AuditRule.unpack(data))]


@pytest.fixture
def audit_guard() -> Iterator[netlink.AuditStatus]:
    """The audit status before the test; afterwards every change a test left is undone."""
    if os.geteuid() != 0:
        pytest.skip("needs root and the kernel audit subsystem")
    sock = netlink.AuditSocket()
    before = sock.get_status()
    try:
        yield before
    finally:
        try:
            for data in _vigil_rules(sock):
                sock.delete_rule(data)
            now = sock.get_status()
            if now.enabled != before.enabled:
                sock.set_status(netlink.AUDIT_STATUS_ENABLED, enabled=before.enabled)
            if now.pid != before.pid:
                sock.set_status(netlink.AUDIT_STATUS_PID, pid=0)
            if now.backlog_limit != before.backlog_limit:
                sock.set_status(
                    netlink.AUDIT_STATUS_BACKLOG_LIMIT, backlog_limit=before.backlog_limit
                )
        finally:
            sock.close()


@pytest.fixture
def audit_rules_of_ours() -> Callable[[], list[bytes]]:
    """A function listing the loaded audit rules keyed ``vigil``."""

    def listing() -> list[bytes]:
        sock = netlink.AuditSocket()
        try:
            return _vigil_rules(sock)
        finally:
            sock.close()

    return listing


@pytest.fixture
def make_context(tmp_path: Any) -> Callable[..., tuple[SensorContext, list[dict[str, Any]]]]:
    """Build a sensor context whose emit collects documents into a list."""

    def build(**options: Any) -> tuple[SensorContext, list[dict[str, Any]]]:
        events: list[dict[str, Any]] = []
        context = SensorContext(
            agent_id="agent-test",
            host_id="host-test",
            host_name="testhost",
            emit=events.append,
            state_dir=str(tmp_path),
            options=dict(options),
        )
        return context, events

    return build


def _wait_for(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """Poll a predicate until it returns something true or a timeout passes; return its value."""
    return _wait_for


SensorT = TypeVar("SensorT", bound=Sensor)


@contextmanager
def started(sensor: SensorT) -> Iterator[SensorT]:
    """A sensor checked and started for a test; stopped afterwards if it is still running."""
    sensor.check_compatible()
    sensor.start()
    try:
        yield sensor
    finally:
        if sensor.health().state == "running":
            sensor.stop()
