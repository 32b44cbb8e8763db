"""The YARA scan action on files, folders and the memory of a process the test starts."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vigil.agent.respond import REGISTRY, ActionContext
from vigil.agent.respond.errors import ResponseError
from vigil.agent.respond.yara_scan import YaraScanAction

pytest.importorskip("yara")

RULE = """
rule vigil_test_marker : test
{
    meta:
        description = "Vigil test marker"
    strings:
        $marker = "VIGIL-YARA-TEST-MARKER"
    condition:
        $marker
}
"""


@pytest.fixture
def action(tmp_path: Path) -> YaraScanAction:
    context = ActionContext(
        agent_id="test-agent", state_dir=str(tmp_path), server_host="127.0.0.1", server_port=1
    )
    return YaraScanAction(context)


def test_registered() -> None:
    assert REGISTRY["yara"] is YaraScanAction
    assert YaraScanAction.permission == "response.yara"
    assert not YaraScanAction.destructive


def test_hit_on_marked_file_and_none_on_clean(action: YaraScanAction, tmp_path: Path) -> None:
    marked = tmp_path / "marked.bin"
    marked.write_bytes(b"\x00" * 10 + b"VIGIL-YARA-TEST-MARKER" + b"\x00")
    clean = tmp_path / "clean.bin"
    clean.write_bytes(b"nothing to see here")

    out = action.run({"rules": RULE, "paths": [str(marked), str(clean)], "cpu_percent": 100})

    assert out["scanned"] == 2
    assert not out["truncated"]
    assert len(out["matches"]) == 1
    match = out["matches"][0]
    assert match["path"] == str(marked)
    assert match["rule"] == "vigil_test_marker"
    assert match["tags"] == ["test"]
    assert match["meta"] == {"description": "Vigil test marker"}
    (string,) = match["strings"]
    assert string["identifier"] == "$marker"
    assert string["instances"][0]["offset"] == 10
    assert bytes.fromhex(string["instances"][0]["data"]) == b"VIGIL-YARA-TEST-MARKER"


def test_bad_rule_text_gives_yaras_message(action: YaraScanAction, tmp_path: Path) -> None:
    with pytest.raises(ResponseError, match=r"do not compile: line \d+: syntax error"):
        action.run({"rules": "rule broken {", "paths": [str(tmp_path)]})


def test_include_is_refused(action: YaraScanAction, tmp_path: Path) -> None:
    with pytest.raises(ResponseError, match="include"):
        action.run({"rules": 'include "/etc/passwd"', "paths": [str(tmp_path)]})


def test_folder_scan_with_caps(action: YaraScanAction, tmp_path: Path) -> None:
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    (tmp_path / "a" / "one.txt").write_bytes(b"VIGIL-YARA-TEST-MARKER")
    (nested / "two.txt").write_bytes(b"xx VIGIL-YARA-TEST-MARKER")
    (nested / "big.txt").write_bytes(b"VIGIL-YARA-TEST-MARKER" + b"x" * 5000)
    (tmp_path / "clean.txt").write_bytes(b"clean")

    out = action.run({"rules": RULE, "paths": [str(tmp_path)], "max_file_bytes": 1000})

    assert out["scanned"] == 3
    assert sorted(Path(m["path"]).name for m in out["matches"]) == ["one.txt", "two.txt"]
    assert out["skipped"] == [
        {"path": str(nested / "big.txt"), "reason": "larger than max_file_bytes (5022 bytes)"}
    ]
    assert not out["truncated"]

    capped = action.run({"rules": RULE, "paths": [str(tmp_path)], "max_files": 2})
    assert capped["scanned"] == 2
    assert capped["truncated"]
    assert capped["truncated_reason"] == "max_files 2 reached"


def test_missing_path_is_skipped_not_fatal(action: YaraScanAction, tmp_path: Path) -> None:
    out = action.run({"rules": RULE, "paths": [str(tmp_path / "absent")]})
    assert out["scanned"] == 0
    assert out["skipped"][0]["reason"].startswith("cannot stat")


def test_params_need_paths_or_pid(action: YaraScanAction) -> None:
    with pytest.raises(ResponseError, match="either 'paths'"):
        action.run({"rules": RULE})
    with pytest.raises(ResponseError, match="cpu_percent"):
        action.run({"rules": RULE, "paths": ["/tmp"], "cpu_percent": 0})


@pytest.fixture
def marked_child() -> Iterator[subprocess.Popen[bytes]]:
    """A Python child that builds the marker at run time, so it exists only in its memory."""
    code = (
        "import sys, time\n"
        "marker = ('VIGIL-YARA-' + 'TEST-MARKER') * 4\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"
    yield child
    child.kill()
    child.wait(timeout=10)


def test_process_memory_scan(action: YaraScanAction, marked_child: subprocess.Popen[bytes]) -> None:
    try:
        out = action.run({"rules": RULE, "pid": marked_child.pid, "timeout_seconds": 60})
    except ResponseError as exc:
        # Without root or CAP_SYS_PTRACE yara cannot attach; the error must say so.
        assert "CAP_SYS_PTRACE" in str(exc)
        return
    assert out["scanned"] == 1
    assert [m["rule"] for m in out["matches"]] == ["vigil_test_marker"]
    assert out["matches"][0]["pid"] == marked_child.pid


def test_process_memory_scan_of_missing_pid(action: YaraScanAction) -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    time.sleep(0.05)
    with pytest.raises(ResponseError, match=f"cannot scan the memory of pid {child.pid}"):
        action.run({"rules": RULE, "pid": child.pid})
