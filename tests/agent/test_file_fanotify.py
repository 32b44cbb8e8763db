"""The fanotify file sensor on the real kernel: marks are filesystem-wide, the include list
limits reports to a directory each test creates."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vigil.agent.errors import AgentError, NotApplicable
from vigil.agent.fanotify import api
from vigil.agent.fanotify.records import RawEvent
from vigil.agent.processes import ProcessTable, read_start_ticks
from vigil.agent.sensors import file_fanotify
from vigil.agent.sensors.base import SensorContext
from vigil.agent.sensors.file_fanotify import FileFanotifySensor, dynamic_loaders
from vigil.schema.ecs import entity_id

Docs = list[dict[str, Any]]
Start = Callable[..., tuple[FileFanotifySensor, Docs]]
Wait = Callable[..., Any]


def needs_root(test: Callable[..., None]) -> Callable[..., None]:
    """Mark a test as needing root and the real kernel, and skip it otherwise."""
    skip = pytest.mark.skipif(os.geteuid() != 0, reason="fanotify marks need root")
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


@pytest.fixture
def watched(tmp_path: Path) -> Path:
    """The directory the sensor reports on (the state directory is a sibling)."""
    path = tmp_path / "watched"
    path.mkdir()
    return path


@pytest.fixture
def start_sensor(tmp_path: Path, watched: Path) -> Iterator[Start]:
    """Start a file sensor reporting on ``watched``; every sensor started is stopped after."""
    started: list[FileFanotifySensor] = []
    before = _fanotify_fds()

    def start(ignore_own_pid: bool = False, **options: Any) -> tuple[FileFanotifySensor, Docs]:
        docs: Docs = []
        state = tmp_path / "state"
        state.mkdir(exist_ok=True)
        options.setdefault("file_include", [str(watched)])
        context = SensorContext(
            agent_id="agent-test",
            host_id="host-test",
            host_name="testhost",
            emit=docs.append,
            state_dir=str(state),
            options=options,
        )
        sensor = FileFanotifySensor(context)
        if not ignore_own_pid:
            # The test process plays the agent; let its own writes through unless asked.
            sensor.own_pid = -1
        sensor.check_compatible()
        started.append(sensor)
        sensor.start()
        return sensor, docs

    yield start
    for sensor in started:
        sensor.stop()
    assert _fanotify_fds() == before, "a fanotify descriptor was left open"


def _find(docs: Docs, action: str, path: Path | str) -> list[dict[str, Any]]:
    return [
        doc
        for doc in list(docs)
        if doc["event"]["action"] == action and doc["file"]["path"] == str(path)
    ]


@needs_root
def test_file_lifecycle_is_reported_with_paths_and_process(
    start_sensor: Start, watched: Path, wait_for: Wait
) -> None:
    sensor, docs = start_sensor()
    other = watched / "other"
    other.mkdir()
    target = watched / "report.txt"

    target.write_text("first draft\n")
    modified = wait_for(lambda: _find(docs, "modification", target))
    os.chmod(target, 0o600)
    moved = other / "report-final.txt"
    os.rename(target, moved)
    os.unlink(moved)
    program = watched / "true-copy"
    shutil.copy("/bin/true", program)
    child = subprocess.Popen([str(program)])
    assert child.wait(timeout=30) == 0

    created = wait_for(lambda: _find(docs, "creation", target))
    attributes = wait_for(lambda: _find(docs, "attributes_modified", target))
    renamed = wait_for(lambda: _find(docs, "rename", moved))
    deleted = wait_for(lambda: _find(docs, "deletion", moved))
    executed = wait_for(lambda: _find(docs, "execution", program))
    assert created and modified and attributes and renamed and deleted and executed

    for found, kind in (
        (created, "creation"),
        (modified, "change"),
        (attributes, "change"),
        (renamed, "change"),
        (deleted, "deletion"),
    ):
        doc = found[0]
        assert doc["event"]["category"] == ["file"]
        assert doc["event"]["type"] == [kind]
        assert doc["process"]["pid"] == os.getpid()
        assert doc["process"]["entity_id"] == entity_id(
            "agent-test", os.getpid(), read_start_ticks(os.getpid()) or -1
        )
        assert doc["process"]["executable"] == os.path.realpath(sys.executable)
    file = created[0]["file"]
    assert (file["name"], file["directory"], file["extension"]) == (
        "report.txt",
        str(watched),
        "txt",
    )
    assert modified[0]["file"]["hash"]["sha256"] == hashlib.sha256(b"first draft\n").hexdigest()
    assert renamed[0]["file"]["Ext"]["original"]["path"] == str(target)
    assert renamed[0]["file"]["directory"] == str(other)
    assert executed[0]["event"]["type"] == ["access"]
    assert executed[0]["process"]["pid"] == child.pid
    assert sensor.health().state == "running"
    assert sensor.health().counters["errors"] == 0


@needs_root
def test_excluded_trees_and_the_state_directory_produce_nothing(
    start_sensor: Start, tmp_path: Path, watched: Path, wait_for: Wait
) -> None:
    noisy = watched / "noisy"
    noisy.mkdir()
    sensor, docs = start_sensor(file_exclude=[str(noisy)])

    for number in range(20):
        (noisy / f"scratch-{number}.log").write_text("noise")
    (tmp_path / "state" / "spool.sqlite").write_text("the agent's own spool")
    marker = watched / "marker"
    marker.write_text("done")

    assert wait_for(lambda: _find(docs, "modification", marker))
    paths = {doc["file"]["path"] for doc in list(docs)}
    assert not [path for path in paths if path.startswith(str(noisy))]
    assert not [path for path in paths if path.startswith(str(tmp_path / "state"))]
    assert sensor.health().counters["filtered"] >= 20


@needs_root
def test_events_of_the_agents_own_pid_are_ignored(
    start_sensor: Start, watched: Path, wait_for: Wait
) -> None:
    sensor, docs = start_sensor(ignore_own_pid=True)
    assert sensor.own_pid == os.getpid()

    (watched / "written-by-agent").write_text("ours")
    marker = watched / "written-by-child"
    child = subprocess.Popen(["/bin/touch", str(marker)])
    assert child.wait(timeout=30) == 0

    found = wait_for(lambda: _find(docs, "creation", marker))
    assert found and found[0]["process"]["pid"] == child.pid
    assert not [doc for doc in list(docs) if doc["process"]["pid"] == os.getpid()]


@needs_root
def test_renamed_directory_paths_are_not_served_stale(
    start_sensor: Start, watched: Path, wait_for: Wait
) -> None:
    _, docs = start_sensor()
    before = watched / "before"
    before.mkdir()
    first = before / "one"
    first.write_text("1")
    assert wait_for(lambda: _find(docs, "modification", first))

    after = watched / "after"
    os.rename(before, after)
    second = after / "two"
    second.write_text("2")

    assert wait_for(lambda: _find(docs, "modification", second))
    renamed = wait_for(lambda: _find(docs, "rename", after))
    assert renamed[0]["file"]["type"] == "dir"
    assert renamed[0]["file"]["Ext"]["original"]["path"] == str(before)


@needs_root
def test_moves_are_paired_when_the_kernel_lacks_fan_rename(
    start_sensor: Start, watched: Path, wait_for: Wait, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An event bit the kernel does not know is refused with EINVAL, as FAN_RENAME is before 5.17.
    monkeypatch.setattr(file_fanotify, "RENAME_MASK", 0x80000000)
    sensor, docs = start_sensor()
    assert "renames from MOVED_FROM/MOVED_TO pairs" in sensor.health().message
    source = watched / "draft"
    source.write_text("x")
    destination = watched / "final"
    os.rename(source, destination)

    renamed = wait_for(lambda: _find(docs, "rename", destination))
    assert renamed and renamed[0]["file"]["Ext"]["original"]["path"] == str(source)
    assert renamed[0]["process"]["pid"] == os.getpid()
    assert sensor.health().counters["unresolved"] == 0


@needs_root
def test_two_thousand_creations_arrive_without_loss(
    start_sensor: Start, watched: Path, wait_for: Wait
) -> None:
    sensor, docs = start_sensor(file_hash=False)
    bulk = watched / "bulk"
    bulk.mkdir()
    for number in range(2000):
        fd = os.open(bulk / f"f{number}", os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)

    def created() -> int:
        return len([doc for doc in list(docs) if doc["event"]["action"] == "creation"])

    assert wait_for(lambda: created() >= 2001) and created() == 2001
    counters = sensor.health().counters
    assert counters["overflow"] == counters["dropped"] == counters["errors"] == 0


@needs_root
def test_shared_process_table_supplies_the_entity(
    start_sensor: Start, watched: Path, wait_for: Wait
) -> None:
    sensor, docs = start_sensor()
    table = ProcessTable("agent-test")
    table.scan()
    sensor.context.processes = table
    target = watched / "from-table"
    target.write_text("x")

    found = wait_for(lambda: _find(docs, "creation", target))
    instance = table.get(os.getpid())
    assert instance is not None
    assert found[0]["process"]["entity_id"] == instance.entity_id


@needs_root
def test_overflow_is_counted(start_sensor: Start) -> None:
    sensor, _ = start_sensor()
    sensor._triage(RawEvent(api.FAN_Q_OVERFLOW, -1), 0.0, {})
    assert sensor.health().counters["overflow"] == 1


@needs_root
def test_start_fails_clearly_for_a_pseudo_filesystem(start_sensor: Start) -> None:
    with pytest.raises(AgentError, match="/proc/sys.* is on proc, a pseudo filesystem") as caught:
        start_sensor(file_include=["/proc/sys"])
    assert "remove it from file_include" in str(caught.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"file_include": "/tmp"}, "file_include must be a list"),
        ({"file_exclude": ["relative/path"]}, "use absolute paths"),
        ({"file_hash_max_bytes": 0}, "file_hash_max_bytes=0 is invalid"),
        ({"file_hash": "yes"}, "must be true or false"),
    ],
    ids=["include-not-a-list", "relative-exclude", "zero-hash-limit", "hash-not-bool"],
)
@needs_root
def test_bad_options_fail_start(start_sensor: Start, options: dict[str, Any], message: str) -> None:
    with pytest.raises(AgentError, match=message):
        start_sensor(**options)


def test_not_applicable_without_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    context = SensorContext("agent-test", "host-test", "testhost", lambda doc: None, str(tmp_path))
    with pytest.raises(NotApplicable, match="needs root"):
        FileFanotifySensor(context).check_compatible()


@needs_root
@pytest.mark.parametrize("report_loader", [False, True])
def test_the_loaders_exec_opens_are_left_out_unless_asked_for(
    start_sensor: Start, watched: Path, wait_for: Wait, report_loader: bool
) -> None:
    # Every dynamic exec also opens the ELF interpreter for exec; by default only the program's
    # own exec open is reported, and the loader's are counted.
    loaders = dynamic_loaders()
    if not loaders:
        pytest.skip("no dynamic loader found on this host")
    folders = sorted({os.path.dirname(path) for path in loaders})
    sensor, docs = start_sensor(
        file_include=[str(watched), *folders], file_loader_exec=report_loader
    )
    program = watched / "true-copy"
    shutil.copy("/bin/true", program)
    assert subprocess.run([str(program)], timeout=30).returncode == 0

    def loader_execs() -> list[dict[str, Any]]:
        return [
            d
            for d in list(docs)
            if d["event"]["action"] == "execution" and d["file"]["path"] in loaders
        ]

    assert wait_for(lambda: _find(docs, "execution", program))
    if report_loader:
        assert wait_for(loader_execs)
    else:
        assert loader_execs() == []
        assert sensor.health().counters["loader_exec"] >= 1


@needs_root
def test_a_non_boolean_loader_option_is_refused(start_sensor: Start) -> None:
    with pytest.raises(AgentError, match="file_loader_exec='yes' must be true or false"):
        start_sensor(file_loader_exec="yes")
