"""Suspend and resume, and the live views, against processes, sockets and files the test owns."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vigil.agent.respond import REGISTRY, ActionContext
from vigil.agent.respond.errors import ResponseError
from vigil.agent.respond.kill import read_start_ticks
from vigil.agent.respond.live import (
    LiveConnectionsAction,
    LiveFileInfoAction,
    LiveProcessesAction,
)
from vigil.agent.respond.suspend import ResumeAction, SuspendAction
from vigil.cli.output import task_text as render_task
from vigil.schema.ecs import entity_id

AGENT_ID = "test-agent"


@pytest.fixture
def context(tmp_path: Path) -> ActionContext:
    return ActionContext(
        agent_id=AGENT_ID, state_dir=str(tmp_path), server_host="127.0.0.1", server_port=1
    )


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A ``sleep`` the test starts; it is resumed and killed at the end."""
    child = subprocess.Popen(["sleep", "60"])
    yield child
    try:
        os.kill(child.pid, 18)  # SIGCONT, so a stopped child can die
    except ProcessLookupError:
        pass
    child.kill()
    child.wait(timeout=10)


def _eid(pid: int) -> str:
    return entity_id(AGENT_ID, pid, read_start_ticks(pid))


def _state(pid: int) -> str:
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    return raw[raw.rindex(b")") + 2 :].split()[0].decode()


def _wait_state(pid: int, wanted: set[str]) -> str:
    deadline = time.monotonic() + 5
    state = _state(pid)
    while state not in wanted and time.monotonic() < deadline:
        time.sleep(0.02)
        state = _state(pid)
    return state


def test_registered() -> None:
    assert REGISTRY["suspend"] is SuspendAction
    assert REGISTRY["resume"] is ResumeAction
    assert SuspendAction.permission == ResumeAction.permission == "response.kill"
    assert SuspendAction.destructive
    for live in (LiveProcessesAction, LiveConnectionsAction, LiveFileInfoAction):
        assert REGISTRY[live.name] is live
        assert live.permission == "response.live"
        assert not live.destructive


def test_suspend_then_resume(context: ActionContext, sleeper: subprocess.Popen[bytes]) -> None:
    target = {"entity_id": _eid(sleeper.pid), "pid": sleeper.pid}

    out = SuspendAction(context).run(target)
    assert out["pid"] == sleeper.pid
    assert _wait_state(sleeper.pid, {"T"}) == "T"

    ResumeAction(context).run(target)
    assert _wait_state(sleeper.pid, {"S", "R"}) in {"S", "R"}
    assert sleeper.poll() is None


def test_wrong_entity_refused(context: ActionContext, sleeper: subprocess.Popen[bytes]) -> None:
    with pytest.raises(ResponseError, match="suspend: pid .* another process; nothing was susp"):
        SuspendAction(context).run({"entity_id": "0" * 32, "pid": sleeper.pid})
    assert _state(sleeper.pid) != "T"


def test_protected_pids_refused(context: ActionContext) -> None:
    with pytest.raises(ResponseError, match="suspend: refusing to suspend pid 1"):
        SuspendAction(context).run({"entity_id": _eid(1), "pid": 1})
    me = os.getpid()
    with pytest.raises(ResponseError, match="Vigil agent itself"):
        SuspendAction(context).run({"entity_id": _eid(me), "pid": me})
    with pytest.raises(ResponseError, match="'tree' is not supported"):
        SuspendAction(context).run({"entity_id": _eid(me), "pid": me, "tree": True})


def test_live_processes_lists_child(
    context: ActionContext, sleeper: subprocess.Popen[bytes]
) -> None:
    out = LiveProcessesAction(context).run({})
    rows = {row["pid"]: row for row in out["processes"]}
    row = rows[sleeper.pid]
    assert row["entity_id"] == _eid(sleeper.pid)
    assert row["ppid"] == os.getpid()
    assert row["name"] == "sleep"
    assert row["cmdline"] == "sleep 60"
    assert row["rss_bytes"] is not None

    capped = LiveProcessesAction(context).run({"limit": 1})
    assert len(capped["processes"]) == 1
    assert capped["truncated"]


def test_live_connections_show_listener(context: ActionContext) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        out = LiveConnectionsAction(context).run({"kind": "tcp"})

    mine = [c for c in out["connections"] if c["local"] == {"ip": "127.0.0.1", "port": port}]
    assert len(mine) == 1
    assert mine[0]["status"] == "LISTEN"
    assert mine[0]["pid"] == os.getpid()
    assert mine[0]["entity_id"] == _eid(os.getpid())
    with pytest.raises(ResponseError, match="use for example 'inet'"):
        LiveConnectionsAction(context).run({"kind": "nonsense"})


def test_file_info(context: ActionContext, tmp_path: Path) -> None:
    data = b"vigil file info\n" * 100
    target = tmp_path / "sample.bin"
    target.write_bytes(data)
    target.chmod(0o640)

    out = LiveFileInfoAction(context).run({"path": str(target)})
    assert out["sha256"] == hashlib.sha256(data).hexdigest()
    assert (out["type"], out["size"], out["mode"]) == ("file", len(data), "0o640")
    assert out["uid"] == os.getuid()
    assert out["mtime"].endswith("Z") or "+00:00" in out["mtime"]

    capped = LiveFileInfoAction(context).run({"path": str(target), "max_hash_bytes": 10})
    assert capped["sha256"] is None
    assert "larger than max_hash_bytes" in capped["hash_skipped"]

    link = tmp_path / "link"
    link.symlink_to(target)
    linked = LiveFileInfoAction(context).run({"path": str(link)})
    assert (linked["type"], linked["link_target"], linked["sha256"]) == (
        "symlink",
        str(target),
        None,
    )
    with pytest.raises(ResponseError, match="cannot stat"):
        LiveFileInfoAction(context).run({"path": str(tmp_path / "absent")})


def _as_task(action: str, result: dict[str, object]) -> dict[str, object]:
    return {
        "id": "t1", "action": action, "agent_id": AGENT_ID, "status": "done", "message": "",
        "requested_by": "analyst", "created": "now", "reason": "", "params": {},
        "result": result,
    }  # fmt: skip


def test_live_views_are_tables_for_a_person(
    context: ActionContext, sleeper: subprocess.Popen[bytes]
) -> None:
    # What `vigil respond live_processes HOST` prints: a table, not one line of JSON.
    text = render_task(_as_task("live_processes", LiveProcessesAction(context).run({})))
    lines = text.splitlines()
    assert lines[4].startswith("  processes: ") and "PID" in lines[5] and "COMMAND LINE" in lines[5]
    assert any(line.split()[:2] == [str(sleeper.pid), str(os.getpid())] for line in lines)
    assert any(line.rstrip().endswith("sleep 60") for line in lines)

    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as listener:
        listener.bind(("::1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        out = LiveConnectionsAction(context).run({"kind": "tcp"})
    text = render_task(_as_task("live_connections", out))
    mine = [line for line in text.splitlines() if f"[::1]:{port} " in line]
    assert len(mine) == 1 and "LISTEN" in mine[0] and mine[0].rstrip().endswith(str(os.getpid()))
