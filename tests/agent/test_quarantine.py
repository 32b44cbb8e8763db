"""Quarantine and restore on real files the test creates in its own temporary folders."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from vigil.agent.respond import REGISTRY, ActionContext
from vigil.agent.respond.errors import ResponseError
from vigil.agent.respond.quarantine import (
    ListQuarantineAction,
    QuarantineAction,
    RestoreAction,
    vault_dir,
)
from vigil.cli.output import task_text

DATA = b"#!/bin/sh\necho dropper\n" * 100


@pytest.fixture
def context(tmp_path: Path) -> ActionContext:
    state = tmp_path / "state"
    state.mkdir()
    return ActionContext(
        agent_id="test-agent", state_dir=str(state), server_host="127.0.0.1", server_port=1
    )


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    folder = tmp_path / "files"
    folder.mkdir()
    path = folder / "dropper.sh"
    path.write_bytes(DATA)
    if os.geteuid() == 0:
        os.chown(path, 1234, 5678)
    os.chmod(path, 0o4751)
    os.utime(path, ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
    return path


def test_actions_are_registered() -> None:
    assert REGISTRY["quarantine"] is QuarantineAction and QuarantineAction.destructive
    assert REGISTRY["restore"] is RestoreAction and not RestoreAction.destructive
    assert QuarantineAction.permission == RestoreAction.permission == "response.quarantine"


def test_quarantine_then_restore_puts_the_file_back_exactly(
    context: ActionContext, victim: Path
) -> None:
    before = os.lstat(victim)

    result = QuarantineAction(context).run({"path": str(victim)})

    assert not os.path.lexists(victim)
    assert result["sha256"] == hashlib.sha256(DATA).hexdigest()
    assert result["path"] == str(victim)
    folder = vault_dir(context.state_dir) / result["quarantine_id"]
    content = folder / "content"
    assert stat.S_IMODE(os.lstat(content).st_mode) == 0
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["path"] == str(victim)
    assert manifest["sha256"] == result["sha256"]
    assert manifest["size"] == len(DATA)
    assert manifest["mode"] == 0o4751
    assert (manifest["uid"], manifest["gid"]) == (before.st_uid, before.st_gid)
    assert manifest["mtime_ns"] == before.st_mtime_ns
    assert manifest["atime_ns"] == before.st_atime_ns

    restored = RestoreAction(context).run({"quarantine_id": result["quarantine_id"]})

    assert restored["path"] == str(victim)
    assert victim.read_bytes() == DATA
    after = os.lstat(victim)
    assert stat.S_IMODE(after.st_mode) == 0o4751
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert after.st_mtime_ns == before.st_mtime_ns
    assert not folder.exists()


def test_quarantine_across_filesystems_copies_and_unlinks(
    context: ActionContext, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    real_rename = os.rename

    def no_rename(source: object, target: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "rename", no_rename)
    result = QuarantineAction(context).run({"path": str(victim)})
    monkeypatch.setattr(os, "rename", real_rename)

    assert not victim.exists()
    manifest = json.loads(
        (vault_dir(context.state_dir) / result["quarantine_id"] / "manifest.json").read_text()
    )
    assert manifest["moved_by"] == "copy"
    RestoreAction(context).run({"quarantine_id": result["quarantine_id"]})
    assert victim.read_bytes() == DATA


def test_refuses_a_directory(context: ActionContext, tmp_path: Path) -> None:
    with pytest.raises(ResponseError, match="is a directory"):
        QuarantineAction(context).run({"path": str(tmp_path)})


def test_refuses_a_symlink_and_leaves_it(context: ActionContext, victim: Path) -> None:
    link = victim.parent / "link"
    link.symlink_to(victim)
    with pytest.raises(ResponseError, match="symbolic link .* name the file it points to"):
        QuarantineAction(context).run({"path": str(link)})
    assert link.is_symlink() and victim.exists()


def test_refuses_a_missing_path(context: ActionContext, tmp_path: Path) -> None:
    with pytest.raises(ResponseError, match="does not exist; nothing was done"):
        QuarantineAction(context).run({"path": str(tmp_path / "nope")})


def test_refuses_a_special_file(context: ActionContext, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ResponseError, match="not a regular file"):
        QuarantineAction(context).run({"path": str(fifo)})


def test_refuses_the_agents_own_files(context: ActionContext) -> None:
    own = Path(context.state_dir) / "identity.json"
    own.write_text("{}")
    with pytest.raises(ResponseError, match="agent's own state folder"):
        QuarantineAction(context).run({"path": str(own)})
    assert own.exists()


def test_refuses_a_relative_path(context: ActionContext) -> None:
    with pytest.raises(ResponseError, match="must be absolute"):
        QuarantineAction(context).run({"path": "dropper.sh"})


def test_restore_refuses_to_replace_a_file_that_now_exists(
    context: ActionContext, victim: Path
) -> None:
    result = QuarantineAction(context).run({"path": str(victim)})
    victim.write_bytes(b"new file")

    with pytest.raises(ResponseError, match="something now exists at .* move or remove it"):
        RestoreAction(context).run({"quarantine_id": result["quarantine_id"]})

    assert victim.read_bytes() == b"new file"
    assert (vault_dir(context.state_dir) / result["quarantine_id"] / "content").exists()


def test_restore_refuses_a_changed_vault_copy(context: ActionContext, victim: Path) -> None:
    result = QuarantineAction(context).run({"path": str(victim)})
    content = vault_dir(context.state_dir) / result["quarantine_id"] / "content"
    os.chmod(content, 0o600)
    content.write_bytes(b"tampered")

    with pytest.raises(ResponseError, match="changed in the vault, nothing was restored"):
        RestoreAction(context).run({"quarantine_id": result["quarantine_id"]})
    assert not victim.exists()


@pytest.mark.parametrize("bad", ["../../etc", "0" * 32, 7], ids=["traversal", "unknown", "int"])
def test_restore_refuses_a_bad_id(context: ActionContext, bad: object) -> None:
    with pytest.raises(ResponseError, match="quarantine"):
        RestoreAction(context).run({"quarantine_id": bad})


def test_the_vault_lists_what_it_holds_until_it_is_restored(
    context: ActionContext, victim: Path
) -> None:
    listing = ListQuarantineAction(context)
    assert listing.run({}) == {"quarantined": [], "total": 0}
    second = victim.with_name("miner")
    second.write_bytes(b"miner")

    first_id = QuarantineAction(context).run({"path": str(victim)})["quarantine_id"]
    second_id = QuarantineAction(context).run({"path": str(second)})["quarantine_id"]
    held = listing.run({})
    assert held["total"] == 2
    assert [(e["quarantine_id"], e["path"], e["complete"]) for e in held["quarantined"]] == [
        (first_id, str(victim), True),
        (second_id, str(second), True),
    ]
    assert held["quarantined"][1]["sha256"] == hashlib.sha256(b"miner").hexdigest()
    # At a terminal, `vigil respond list_quarantine HOST` shows it as a table.
    task = {"id": "t", "action": "list_quarantine", "agent_id": "h", "status": "done",
            "message": "", "requested_by": "a", "created": "now", "reason": "", "params": {},
            "result": held}  # fmt: skip
    rows = task_text(task).splitlines()[-2:]
    assert rows[0].split()[:2] == [first_id, str(victim)] and rows[0].endswith("yes")

    RestoreAction(context).run({"quarantine_id": first_id})
    assert [e["quarantine_id"] for e in listing.run({})["quarantined"]] == [second_id]
