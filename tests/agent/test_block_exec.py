"""Exec blocking on the real kernel: fanotify permission marks only on folders each test made.

Every guard a test creates is stopped afterwards, even when the test fails, and the test then
checks no fanotify descriptor is left open. A process waiting for a permission verdict can be
killed, and every ``subprocess.run`` has a timeout, so a fault cannot hang the run either.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vigil.agent.errors import AgentError
from vigil.agent.fanotify import permission
from vigil.agent.policy import BlockExecPolicy, Policy
from vigil.agent.respond import REGISTRY, ActionContext, exec_guard
from vigil.agent.respond.block_exec import BlockExecAction, ListBlockedAction, UnblockExecAction
from vigil.agent.respond.errors import ResponseError
from vigil.agent.respond.exec_guard import BLOCKLIST_FILE, ExecGuard, protected_programs
from vigil.agent.sensors import REGISTRY as SENSORS
from vigil.agent.sensors.base import SensorContext
from vigil.cli.main import parse_params

Docs = list[dict[str, Any]]
MakeGuard = Callable[..., tuple[ExecGuard, Docs]]
Wait = Callable[..., Any]

TRUE = Path(shutil.which("true") or "/bin/true").resolve()


def needs_root(test: Callable[..., None]) -> Callable[..., None]:
    """Mark a test as needing root and the real kernel, and skip it otherwise."""
    skip = pytest.mark.skipif(os.geteuid() != 0, reason="fanotify permission marks need root")
    marked: Callable[..., None] = pytest.mark.root(skip(test))
    return marked


def _fanotify_fds() -> int:
    count = 0
    for entry in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{entry}") == "anon_inode:[fanotify]":
                count += 1
        except OSError:
            continue
    return count


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(path: Path | str, *args: str) -> int:
    """Run a program; raises PermissionError when its exec is refused."""
    return subprocess.run([str(path), *args], timeout=30, capture_output=True).returncode


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The only folder a test puts a permission mark on; it made the folder itself."""
    path = tmp_path / "bin"
    path.mkdir()
    return path


@pytest.fixture
def programs(folder: Path) -> tuple[Path, Path]:
    """Two programs in ``folder``: a copy of true, and one with another hash that also runs."""
    blocked, other = folder / "blocked", folder / "other"
    shutil.copy(TRUE, blocked)
    other.write_bytes(TRUE.read_bytes() + b"\0")
    other.chmod(0o755)
    assert _sha256(blocked) != _sha256(other)
    return blocked, other


@pytest.fixture
def make_guard(tmp_path: Path, folder: Path) -> Iterator[MakeGuard]:
    """Build exec guards on ``folder`` with one state folder; all are stopped after the test."""
    made: list[ExecGuard] = []
    before = _fanotify_fds()

    def build(**scope: Any) -> tuple[ExecGuard, Docs]:
        docs: Docs = []
        scope.setdefault("paths", [str(folder)])
        context = SensorContext(
            agent_id="agent-test",
            host_id="host-test",
            host_name="testhost",
            emit=docs.append,
            state_dir=str(tmp_path / "state"),
        )
        guard = ExecGuard(context, BlockExecPolicy(**scope))
        made.append(guard)
        return guard, docs

    try:
        yield build
    finally:
        for guard in made:
            guard.stop()
    assert _fanotify_fds() == before, "a fanotify descriptor was left open"


def cached(guard: ExecGuard, path: Path) -> str | None:
    """The digest the guard has cached for ``path`` (without waiting for a new hash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return guard._hasher.digest(fd, 0.001)[0]
    finally:
        os.close(fd)


def action_context(tmp_path: Path, guard: ExecGuard | None) -> ActionContext:
    return ActionContext("agent-test", str(tmp_path / "state"), "127.0.0.1", 1, exec_guard=guard)


def test_the_actions_declare_permission_destructiveness_and_undo() -> None:
    assert REGISTRY["block_exec"] is BlockExecAction
    assert {"unblock_exec", "list_blocked"} <= set(REGISTRY)
    for action in (BlockExecAction, UnblockExecAction, ListBlockedAction):
        assert action.permission == "response.block_exec"
    assert BlockExecAction.destructive is True and BlockExecAction.undo == "unblock_exec"
    assert UnblockExecAction.destructive is False and ListBlockedAction.destructive is False


@needs_root
def test_a_blocked_hash_cannot_run_while_other_files_still_do(
    tmp_path: Path, make_guard: MakeGuard, programs: tuple[Path, Path]
) -> None:
    blocked, other = programs
    guard, _ = make_guard()
    assert run(blocked) == 0

    result = BlockExecAction(action_context(tmp_path, guard)).run(
        {"sha256": _sha256(blocked).upper(), "reason": "dropper from alert 42"}
    )

    assert result["blocked"] is True and result["already_blocked"] is False
    assert result["sha256"] == _sha256(blocked) and result["marked"] == [str(blocked.parent)]
    with pytest.raises(PermissionError) as refused:
        run(blocked)
    assert refused.value.errno == errno.EPERM
    assert run(other) == 0
    # A copy under another name has the same hash and is refused too.
    twin = blocked.with_name("twin")
    shutil.copy(blocked, twin)
    with pytest.raises(PermissionError):
        run(twin)
    health = guard.health()
    assert health["state"] == "enforcing" and health["blocked"] == 1
    assert health["counters"]["denied"] >= 2 and health["counters"]["allowed"] >= 1


@needs_root
def test_unblock_lets_it_run_again_and_closes_the_group(
    tmp_path: Path, make_guard: MakeGuard, programs: tuple[Path, Path]
) -> None:
    blocked, _ = programs
    guard, _ = make_guard()
    context = action_context(tmp_path, guard)
    before = _fanotify_fds()
    BlockExecAction(context).run({"sha256": _sha256(blocked)})
    assert _fanotify_fds() == before + 1
    again = BlockExecAction(context).run({"sha256": _sha256(blocked)})
    assert again["already_blocked"] is True and again["blocked_count"] == 1
    listed = ListBlockedAction(context).run({})
    assert [entry["sha256"] for entry in listed["blocked"]] == [_sha256(blocked)]
    assert listed["enforced"] is True

    result = UnblockExecAction(context).run({"sha256": _sha256(blocked)})

    assert result == {
        "sha256": _sha256(blocked),
        "blocked": False,
        "was_blocked": True,
        "blocked_count": 0,
    }
    assert run(blocked) == 0
    # Nothing is blocked, so no exec waits for the agent: the group is closed.
    assert _fanotify_fds() == before
    assert guard.health()["state"] == "idle"
    assert ListBlockedAction(context).run({})["blocked"] == []
    assert UnblockExecAction(context).run({"sha256": _sha256(blocked)})["was_blocked"] is False


@needs_root
def test_the_block_survives_a_restart_of_the_guard(
    tmp_path: Path, make_guard: MakeGuard, programs: tuple[Path, Path]
) -> None:
    blocked, other = programs
    first, _ = make_guard()
    first.block(_sha256(blocked), reason="miner", note="case 7")
    first.stop()  # the agent stops: marks removed, group closed, list kept
    assert run(blocked) == 0
    saved = json.loads((tmp_path / "state" / BLOCKLIST_FILE).read_text())
    assert saved["blocked"][_sha256(blocked)]["reason"] == "miner"

    second, _ = make_guard()
    assert second.start() == 1

    with pytest.raises(PermissionError):
        run(blocked)
    assert run(other) == 0
    listed = second.listing()["blocked"]
    assert listed[0]["note"] == "case 7" and listed[0]["blocked_at"]
    second.unblock(_sha256(blocked))
    assert run(blocked) == 0
    third, _ = make_guard()
    assert third.start() == 0 and not third.enforcing


@needs_root
def test_a_blocked_exec_is_reported_with_file_hash_and_process(
    make_guard: MakeGuard, programs: tuple[Path, Path], wait_for: Wait
) -> None:
    blocked, _ = programs
    guard, docs = make_guard()
    guard.block(_sha256(blocked), reason="dropper")

    # The shell tries the exec itself, so the attempting process is known and outlives it.
    shell = subprocess.Popen(
        ["/bin/sh", "-c", f'exec "{blocked}"'], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    _, stderr = shell.communicate(timeout=30)

    assert shell.returncode == 126 and b"not permitted" in stderr
    found = wait_for(lambda: [d for d in docs if d["process"]["pid"] == shell.pid])
    assert len(found) == 1
    doc = found[0]
    assert doc["event"]["action"] == "exec_blocked"
    assert doc["event"]["category"] == ["process", "file"]
    assert doc["event"]["type"] == ["denied"] and doc["event"]["outcome"] == "failure"
    assert doc["event"]["reason"] == "sha256 on the exec block list: dropper"
    assert doc["file"]["path"] == str(blocked) and doc["file"]["name"] == "blocked"
    assert doc["file"]["hash"] == {"sha256": _sha256(blocked)}
    assert doc["process"]["entity_id"] and doc["process"]["name"] in ("sh", "dash", "bash")
    assert str(blocked) in doc["process"]["command_line"]
    assert doc["agent"]["id"] == "agent-test" and doc["host"]["name"] == "testhost"
    assert doc["event"]["id"] and doc["@timestamp"].endswith("Z")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("xyz", id="not-hex"),
        pytest.param("", id="empty"),
        pytest.param(None, id="missing"),
        pytest.param(12, id="number"),
        pytest.param("a" * 63, id="short"),
        pytest.param("da39a3ee5e6b4b0d3255bfef95601890afd80709", id="sha1"),
        pytest.param("g" * 64, id="not-hex-64"),
    ],
)
def test_a_bad_sha256_is_refused_and_nothing_is_blocked(
    tmp_path: Path, make_guard: MakeGuard, value: Any
) -> None:
    guard, _ = make_guard()
    for action in (BlockExecAction, UnblockExecAction):
        params = {} if value is None else {"sha256": value}
        with pytest.raises(ResponseError, match=r"'sha256' must be the 64 hex digits .* got"):
            action(action_context(tmp_path, guard)).run(params)
    assert not (tmp_path / "state" / BLOCKLIST_FILE).exists()
    assert not guard.enforcing


def test_other_bad_params_are_refused(tmp_path: Path, make_guard: MakeGuard) -> None:
    guard, _ = make_guard()
    with pytest.raises(ResponseError, match="'reason' must be text"):
        BlockExecAction(action_context(tmp_path, guard)).run({"sha256": "a" * 64, "reason": 3})
    with pytest.raises(ResponseError, match="'note' must be text of at most 1000"):
        BlockExecAction(action_context(tmp_path, guard)).run(
            {"sha256": "a" * 64, "note": "n" * 1001}
        )


def test_without_a_scope_block_exec_names_the_policy_key(
    tmp_path: Path, make_guard: MakeGuard
) -> None:
    guard, _ = make_guard(paths=[])
    with pytest.raises(
        ResponseError, match=r"set response\.block_exec\.paths .* nothing was blocked"
    ):
        BlockExecAction(action_context(tmp_path, guard)).run({"sha256": "a" * 64})
    assert not (tmp_path / "state" / BLOCKLIST_FILE).exists()


def test_an_agent_without_a_guard_refuses(tmp_path: Path) -> None:
    for action in (BlockExecAction, UnblockExecAction, ListBlockedAction):
        with pytest.raises(ResponseError, match="runs no exec guard"):
            action(action_context(tmp_path, None)).run({"sha256": "a" * 64})


def test_the_hash_of_a_program_the_host_needs_is_refused(
    tmp_path: Path, make_guard: MakeGuard
) -> None:
    guard, _ = make_guard()
    shell = os.path.realpath("/bin/sh")
    assert shell in protected_programs()
    with pytest.raises(ResponseError, match=f"is the hash of {shell}, which this host needs"):
        guard.block(_sha256(Path(shell)))
    assert not (tmp_path / "state" / BLOCKLIST_FILE).exists()


@needs_root
def test_a_script_run_directly_is_blocked_but_not_when_given_to_its_interpreter(
    make_guard: MakeGuard, folder: Path
) -> None:
    script = folder / "payload.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    guard, _ = make_guard()
    guard.block(_sha256(script))

    # execve of the script opens it for exec; the kernel then execs /bin/sh (outside the scope).
    with pytest.raises(PermissionError):
        run(script)
    # The interpreter merely reads a script it is given: no exec of the script, no verdict.
    assert run("/bin/sh", str(script)) == 0


@needs_root
def test_marks_are_not_recursive_a_subfolder_is_not_covered(
    make_guard: MakeGuard, folder: Path, programs: tuple[Path, Path]
) -> None:
    blocked, _ = programs
    below = folder / "below"
    below.mkdir()
    shutil.copy(blocked, below / "blocked")
    guard, _ = make_guard()
    guard.block(_sha256(blocked))

    with pytest.raises(PermissionError):
        run(blocked)
    assert run(below / "blocked") == 0


@needs_root
def test_a_hash_over_the_time_limit_allows_then_the_cached_hash_blocks(
    make_guard: MakeGuard, folder: Path, wait_for: Wait
) -> None:
    big = folder / "big"
    # An ELF runs with bytes appended; 64 MiB take far longer to hash than a millisecond.
    with open(big, "wb") as handle:
        handle.write(TRUE.read_bytes())
        handle.write(b"\0" * (64 * 1024 * 1024))
    big.chmod(0o755)
    guard, _ = make_guard(hash_timeout_seconds=0.001)
    guard.block(_sha256(big))

    assert run(big) == 0
    assert guard.health()["counters"]["unhashed_timeout"] == 1
    # The hash went on in the background; once cached, the next exec is judged by it.
    wait_for(lambda: cached(guard, big), timeout=60)
    with pytest.raises(PermissionError):
        run(big)


@needs_root
def test_a_file_over_the_size_limit_is_allowed_without_hashing(
    make_guard: MakeGuard, programs: tuple[Path, Path]
) -> None:
    blocked, _ = programs
    guard, _ = make_guard(max_hash_bytes=1024)
    guard.block(_sha256(blocked))

    assert run(blocked) == 0
    assert guard.health()["counters"]["unhashed_too_large"] == 1


@needs_root
def test_an_error_while_judging_allows_the_exec(
    make_guard: MakeGuard, programs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked, _ = programs
    guard, _ = make_guard()
    guard.block(_sha256(blocked))

    def broken(fd: int, timeout: float) -> tuple[str | None, str]:
        raise RuntimeError("hashing broke")

    monkeypatch.setattr(guard._hasher, "digest", broken)
    assert run(blocked) == 0
    assert guard.health()["counters"]["errors"] == 1 and guard.enforcing


@needs_root
def test_a_dead_answering_thread_releases_every_exec_and_block_rearms(
    make_guard: MakeGuard, programs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked, _ = programs
    guard, _ = make_guard()
    guard.block(_sha256(blocked))
    before = _fanotify_fds()

    def broken(buffer: bytes) -> Any:
        raise RuntimeError("parser broke")

    with monkeypatch.context() as patch:
        patch.setattr(permission, "parse", broken)
        # The event was read but never answered: closing the group lets the exec through.
        assert run(blocked) == 0
    health = guard.health()
    assert health["state"] == "failed" and "parser broke" in health["message"]
    assert _fanotify_fds() == before - 1

    guard.block(_sha256(blocked))
    assert guard.health()["state"] == "enforcing"
    with pytest.raises(PermissionError):
        run(blocked)


@needs_root
def test_scope_folders_that_cannot_be_marked_are_reported(
    tmp_path: Path, make_guard: MakeGuard, folder: Path, programs: tuple[Path, Path]
) -> None:
    blocked, _ = programs
    missing = tmp_path / "missing"
    guard, _ = make_guard(paths=[str(folder), str(missing)])
    result = guard.block(_sha256(blocked))
    assert result["marked"] == [str(folder)]
    assert result["unmarked"] == [f"{missing}: No such file or directory"]
    with pytest.raises(PermissionError):
        run(blocked)

    nowhere, _ = make_guard(paths=[str(missing)])
    with pytest.raises(ResponseError, match="no directory or mount .* could be marked"):
        nowhere.block("b" * 64)
    assert [entry["sha256"] for entry in nowhere.listing()["blocked"]] == [_sha256(blocked)]


def test_an_unreadable_block_list_is_reported_not_overwritten(
    tmp_path: Path, make_guard: MakeGuard
) -> None:
    saved = tmp_path / "state" / BLOCKLIST_FILE
    saved.parent.mkdir()
    saved.write_text("{not json")
    guard, _ = make_guard()
    assert guard.start() == 0
    assert guard.health()["state"] == "failed" and str(saved) in guard.health()["message"]
    with pytest.raises(ResponseError, match="cannot read the exec block list"):
        guard.block("a" * 64)
    assert saved.read_text() == "{not json"


def test_the_policy_sets_the_scope(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.yml"
    policy_file.write_text(
        "response:\n  block_exec:\n    paths: [/tmp/x/../drop]\n    mounts: [/]\n"
        "    hash_timeout_seconds: 0.5\n"
    )
    policy = Policy.load(policy_file, sorted(SENSORS))
    assert policy.block_exec == BlockExecPolicy(
        paths=["/tmp/drop"], mounts=["/"], hash_timeout_seconds=0.5
    )
    assert policy.only(["inventory"]).block_exec == policy.block_exec
    assert Policy.default(sorted(SENSORS)).block_exec.configured is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("block_exec: [/tmp]", "takes a mapping", id="not-mapping"),
        pytest.param("block_exec: {dirs: [/tmp]}", "unknown keys", id="unknown-key"),
        pytest.param("block_exec: {paths: [tmp]}", "use absolute paths", id="relative"),
        pytest.param("block_exec: {paths: /tmp}", "list of absolute paths", id="not-list"),
        pytest.param("block_exec: {hash_timeout_seconds: 0}", "positive number", id="timeout"),
        pytest.param("block_exec: {max_hash_bytes: -1}", "positive integer", id="size"),
    ],
)
def test_a_bad_scope_says_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    policy_file = tmp_path / "policy.yml"
    policy_file.write_text(f"response: {{{text}}}")
    with pytest.raises(AgentError, match=message):
        Policy.load(policy_file, sorted(SENSORS))


def test_the_cli_param_reaches_the_action_as_the_same_hash(
    tmp_path: Path, make_guard: MakeGuard
) -> None:
    guard, _ = make_guard(paths=[])
    for digest in ("0" + "1" * 63, "1" * 64, "ab" * 32):
        params = parse_params([f"sha256={digest}", "reason=from alert"])
        assert params["reason"] == "from alert"
        # An all-digit hash is read as a JSON number; the action takes it back as the digits.
        assert UnblockExecAction(action_context(tmp_path, guard)).run(params)["sha256"] == digest


@needs_root
def test_a_stuck_answering_thread_is_cut_loose_at_stop(
    make_guard: MakeGuard, programs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked, _ = programs
    guard, _ = make_guard()
    guard.block(_sha256(blocked))
    release = threading.Event()

    def stuck(fd: int, timeout: float) -> tuple[str | None, str]:
        release.wait(60)
        return None, "stuck"

    monkeypatch.setattr(guard._hasher, "digest", stuck)
    monkeypatch.setattr(exec_guard, "JOIN_SECONDS", 0.5)
    # Popen itself waits until its child has exec'd: let a shell (not in scope) do the exec.
    waiting = subprocess.Popen(["/bin/sh", "-c", f'exec "{blocked}"'])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(timeout=1)  # the exec waits for a verdict that does not come

        guard.stop()

        # /dev/null took the group's place: the kernel allowed the exec when the group went.
        assert waiting.wait(timeout=30) == 0
    finally:
        release.set()
        if waiting.poll() is None:
            waiting.kill()
    assert not guard.enforcing
