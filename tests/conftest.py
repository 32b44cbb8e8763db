"""Shared fixtures: a real Vigil server on loopback, and paths to the shared test data."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vigil.cli.client import ApiClient
from vigil.detect import builtin_rules_dir
from vigil.server.app import ADMIN_TOKEN_FILE, build_server
from vigil.server.context import ServerConfig, ServerContext

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SIGMA_LINUX = SHARED_DATA / "sigma" / "rules" / "linux"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    """A server started by a test, with an analyst API client."""

    config: ServerConfig
    ctx: ServerContext
    api: ApiClient

    @property
    def url(self) -> str:
        return self.config.url

    def enroll_token(self) -> str:
        token: str = self.api.call("POST", "/enroll-tokens", {"uses": 10})["token"]
        return token


def start_server(
    data_dir: Path, rule_paths: list[Path], host: str = "127.0.0.1", port: int | None = None
) -> tuple[RunningServer, Any, threading.Thread]:
    config = ServerConfig(
        data_dir=data_dir, host=host, port=port or free_port(host), rule_paths=rule_paths
    )
    ctx, server = build_server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "test server did not start"
    token = (data_dir / ADMIN_TOKEN_FILE).read_text().strip()
    api = ApiClient(config.url, token, str(ctx.authority.ca_path))
    return RunningServer(config, ctx, api), server, thread


@pytest.fixture
def running_server(tmp_path: Path) -> Iterator[RunningServer]:
    """A real server on a free loopback port, with the built-in and SigmaHQ Linux rules."""
    running, server, thread = start_server(tmp_path / "server", [builtin_rules_dir(), SIGMA_LINUX])
    try:
        yield running
    finally:
        running.api.close()
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)
        assert not thread.is_alive(), "test server did not stop"
        running.ctx.close()
