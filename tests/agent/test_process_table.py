"""The process lineage table, start ticks and the executable hash cache, on the real /proc."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from vigil.agent.processes import (
    CLOCK_TICKS,
    ExecutableHasher,
    ProcessInstance,
    ProcessTable,
    boot_time,
    read_start_ticks,
    read_stat,
    ticks_to_epoch,
)
from vigil.schema.ecs import entity_id


def test_start_ticks_match_proc_stat_field_22() -> None:
    ticks = read_start_ticks(os.getpid())
    raw = Path(f"/proc/{os.getpid()}/stat").read_text()
    assert ticks == int(raw.rsplit(")", 1)[1].split()[19])
    # psutil counts from the whole-second btime of /proc/stat; we count from CLOCK_BOOTTIME.
    started = ticks_to_epoch(ticks, boot_time())
    assert abs(started - psutil.Process().create_time()) < 1 + 2 / CLOCK_TICKS
    assert started <= time.time()


def test_gone_process_has_no_start_ticks() -> None:
    child = subprocess.Popen(["/bin/true"])
    child.wait()
    assert read_start_ticks(child.pid) is None


def test_stat_parses_comm_with_spaces_and_parentheses(tmp_path: Path) -> None:
    proc = tmp_path / "4242"
    proc.mkdir()
    fields = ["S", "17"] + ["0"] * 17 + ["123456"] + ["0"] * 10
    (proc / "stat").write_text("4242 (a) b (c) " + " ".join(fields) + "\n")
    stat = read_stat(4242, str(tmp_path))
    assert stat is not None and (stat.comm, stat.ppid, stat.start_ticks) == ("a) b (c", 17, 123456)


def test_scan_links_existing_processes_by_entity_id() -> None:
    table = ProcessTable("agent-x")
    assert table.scan() > 1
    me = table.get(os.getpid())
    assert me is not None
    assert me.entity_id == entity_id("agent-x", os.getpid(), read_start_ticks(os.getpid()) or -1)
    assert me.executable == os.path.realpath(sys.executable)
    parent = table.get(os.getppid())
    assert parent is not None and me.parent_entity_id == parent.entity_id


def test_a_reused_pid_does_not_inherit_the_old_entry() -> None:
    table = ProcessTable("agent-x")
    pid = os.getpid()
    stale = ProcessInstance(pid, 1, table.entity_id(pid, 1), "/old/program", "program")
    table.put(stale)
    current = table.resolve(pid, read_start_ticks(pid))
    assert current is not None and current.entity_id != stale.entity_id
    assert current.executable == os.path.realpath(sys.executable)
    assert table.get(pid) == current


def test_entry_of_a_gone_process_is_trusted_until_pruned() -> None:
    table = ProcessTable("agent-x")
    child = subprocess.Popen(["/bin/true"])
    child.wait()
    known = ProcessInstance(child.pid, 5, table.entity_id(child.pid, 5), "/bin/true", "true")
    table.put(known)
    assert table.resolve(child.pid, None) == known
    table.mark_exited(child.pid, 5)
    assert table.prune() == 1
    assert table.get(child.pid) is None
    assert table.resolve(child.pid, None) is None


def test_hasher_hashes_once_per_file_version(tmp_path: Path) -> None:
    target = tmp_path / "program"
    target.write_bytes(b"first")
    hasher = ExecutableHasher()
    assert hasher.sha256(str(target)) == hashlib.sha256(b"first").hexdigest()
    assert hasher.sha256(str(target)) == hashlib.sha256(b"first").hexdigest()
    assert hasher.hashed == 1
    target.write_bytes(b"second version")
    assert hasher.sha256(str(target)) == hashlib.sha256(b"second version").hexdigest()
    assert hasher.hashed == 2


def test_hasher_skips_large_files(tmp_path: Path) -> None:
    target = tmp_path / "big"
    target.write_bytes(b"x" * 2048)
    hasher = ExecutableHasher(size_limit=1024)
    assert hasher.sha256(str(target)) is None and hasher.skipped == 1
    assert hasher.sha256(str(tmp_path / "missing")) is None


def test_hasher_reads_through_proc_exe_of_the_running_pid() -> None:
    exe = os.path.realpath(sys.executable)
    digest = ExecutableHasher().sha256(exe, os.getpid())
    assert digest == hashlib.sha256(Path(exe).read_bytes()).hexdigest()
