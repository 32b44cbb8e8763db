"""``vigil rules check``: per-rule failures, the summary, exit status and JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vigil.cli.main import main

from .helpers import rule_text

GOOD = {"selection": {"Image|endswith": "/curl"}, "condition": "selection"}
CORRELATION = """title: many curls
id: 0e2b5a32-7f41-4f6c-9b7e-3c6f3d3c9a01
correlation:
  type: event_count
  rules: [5b0bd0a8-61b1-4a5f-9c5e-8a0f0e0c2f11]
  group-by: [User]
  timespan: 5m
  condition: {gte: 10}
"""
ORPHAN = CORRELATION.replace("5b0bd0a8-61b1-4a5f-9c5e-8a0f0e0c2f11", "missing_rule").replace(
    "3c9a01", "3c9a02"
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    (rules / "nested").mkdir(parents=True)
    (rules / "good.yml").write_text(rule_text(GOOD), encoding="utf-8")
    (rules / "nested" / "corr.yml").write_text(CORRELATION, encoding="utf-8")
    return rules


def test_all_load(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "2 files: 1 rules and 1 correlation rules loaded, 0 failed" in out


def test_failures_are_listed_and_summarised(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expand = {"selection": {"Image|expand": "%tools%"}, "condition": "selection"}
    (folder / "expand.yml").write_text(rule_text(expand, id="6d1c2b3a-0000-4000-8000-000000000001"))
    (folder / "orphan.yml").write_text(ORPHAN)
    (folder / "broken.yml").write_text("title: [unclosed\n")
    assert main(["rules", "check", str(folder)]) == 1
    lines = capsys.readouterr().out.splitlines()
    failures = [line for line in lines if line.startswith(str(folder))]
    assert len(failures) == 3 and len(lines) == 3 + 1 + 3
    assert any("expand.yml" in line and "placeholder %tools%" in line for line in failures)
    assert any("orphan.yml" in line and "'missing_rule'" in line for line in failures)
    assert "5 files: 1 rules and 1 correlation rules loaded, 3 failed" in lines
    assert "       1  placeholder %tools% has no values" in lines

    (tmp_path / "values.yml").write_text("tools: [/usr/bin/nmap]\n")
    main(["rules", "check", str(folder), "--placeholders", str(tmp_path / "values.yml")])
    assert "2 rules and 1 correlation rules loaded, 2 failed" in capsys.readouterr().out


def test_overlapping_folders_count_each_file_once(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rules", "check", str(folder), str(folder), str(folder / "nested")]) == 0
    assert "2 files: 1 rules and 1 correlation rules loaded, 0 failed" in capsys.readouterr().out


def test_json(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (folder / "orphan.yml").write_text(ORPHAN)
    assert main(["rules", "check", "--json", str(folder)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["files"], report["rules"], report["correlations"], report["failed"]) == (
        3,
        1,
        1,
        1,
    )
    [error] = report["errors"]
    assert error["path"].endswith("orphan.yml")
    assert error["rule_id"] == "0e2b5a32-7f41-4f6c-9b7e-3c6f3d3c9a02"
    assert report["by_reason"] == {error["reason"]: 1}
    assert error["reason"] == "correlation refers to rule '...', which is not loaded"


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(["/no/such/folder"], id="missing-path"),
        pytest.param(["--placeholders", "/no/such/file.yml"], id="missing-placeholders"),
    ],
)
def test_bad_arguments(folder: Path, extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", str(folder), *extra]) == 2
    assert "vigil rules check:" in capsys.readouterr().err


def test_no_rule_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", str(tmp_path)]) == 2
    assert "no rule files" in capsys.readouterr().err


def test_no_folder_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["rules", "check"])
    assert exit_info.value.code == 2


def test_files_that_are_not_rules_are_reported_not_crashed_on(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder / "string.yml").write_text("just a string\n")
    (folder / "list.yml").write_text("- a\n- b\n")
    (folder / "empty.yml").write_text("")
    assert main(["rules", "check", str(folder)]) == 1
    failures = {
        Path(line.split(":", 1)[0]).name: line.split(": ", 1)[1]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith(str(folder))
    }
    assert failures.keys() == {"string.yml", "list.yml", "empty.yml"}
    assert failures["string.yml"].startswith("not a Sigma rule file: each YAML document must be")
    assert failures["list.yml"] == failures["string.yml"]
    assert failures["empty.yml"].startswith("holds no Sigma rule")


def test_messages_point_at_the_mistake(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    typo = {"selection": {"Image|contians": "/curl"}, "condition": "selection"}
    (folder / "typo.yml").write_text(rule_text(typo, id="6d1c2b3a-0000-4000-8000-000000000002"))
    (folder / "quote.yml").write_text('title: "unclosed\nid: x\n')
    assert main(["rules", "check", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "Unknown modifier 'contians'; did you mean 'contains'?" in out
    assert (
        "quote.yml: cannot parse rule file: YAML error at line 3, column 1: found unexpected end "
        "of stream (while scanning a quoted scalar at line 1, column 8)"
    ) in out


def test_a_bad_regular_expression_is_explained_once_in_words(
    folder: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    unclosed = {"selection": {"CommandLine|re": "a(b"}, "condition": "selection"}
    lookahead = {"selection": {"CommandLine|re": "curl (?!-s)"}, "condition": "selection"}
    (folder / "unclosed.yml").write_text(
        rule_text(unclosed, id="6d1c2b3a-0000-4000-8000-000000000003")
    )
    (folder / "lookahead.yml").write_text(
        rule_text(lookahead, id="6d1c2b3a-0000-4000-8000-000000000004")
    )
    assert main(["rules", "check", str(folder)]) == 1
    out, err = capfd.readouterr()
    assert (
        "unclosed.yml (rule 6d1c2b3a-0000-4000-8000-000000000003): invalid Sigma rule: Regular "
        "expression 'a(b' is invalid: missing ), unterminated subpattern at position 1"
    ) in out
    # The evaluator runs Python's re, so a pattern it runs is not refused for another engine.
    assert "lookahead.yml" not in out and "2 rules and 1 correlation rules loaded" in out
    assert err == ""


def test_repeated_ids_are_one_reason(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("copy1.yml", "copy2.yml"):
        (folder / name).write_text(rule_text(GOOD))
    assert main(["rules", "check", "--json", str(folder)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["by_reason"] == {"an earlier rule in ... has this id": 2}
