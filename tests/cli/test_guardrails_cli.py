"""The guardrail commands of the ``vigil`` CLI against a real server: what a person sees."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningServer
from tests.server.guardrail_helpers import enroll_host
from vigil.cli.client import CliError
from vigil.cli.main import build_parser, main, task_exit_code


@pytest.fixture
def cli(
    running_server: RunningServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Callable[..., tuple[int, str, str]]]:
    """Run ``vigil ...`` as the admin (or as VIGIL_TOKEN) and return (exit code, out, err)."""
    token = (running_server.config.data_dir / "admin-token").read_text().strip()
    monkeypatch.setenv("VIGIL_SERVER", running_server.url)
    monkeypatch.setenv("VIGIL_CA", str(running_server.ctx.authority.ca_path))

    def run(*argv: str, token_of: str = token) -> tuple[int, str, str]:
        monkeypatch.setenv("VIGIL_TOKEN", token_of)
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield run


def test_policy_tokens_tags_and_approval_from_the_cli(
    running_server: RunningServer, cli: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    run = cli
    enrolled, link = enroll_host(running_server, tmp_path / "agent")
    host = enrolled.agent_id

    code, out, _ = run("policy", "show")
    assert code == 0 and "(defaults)" in out and "run_command:         off" in out
    code, out, _ = run("policy", "set", "--isolate-cap-per-hour", "5", "--run-command", "on")
    assert code == 0 and "5 hosts per rolling hour" in out and "run_command:         on" in out
    code, _, err = run("policy", "set")
    assert code == 1 and "nothing to change" in err

    code, rex, _ = run("tokens", "create", "rex", "--role", "responder")
    code, ria, _ = run("tokens", "create", "ria", "--role", "responder")
    assert code == 0 and rex.strip().startswith("vgt_") and len(rex.splitlines()) == 1
    code, out, _ = run("tokens", "list")
    assert "rex" in out and "responder" in out

    code, out, _ = run("hosts", "tag", host, "critical", "web")
    assert code == 0 and "tags critical, web" in out
    code, out, _ = run("hosts", "list")
    assert "TAGS" in out and "critical,web" in out

    code, out, _ = run("hosts", "isolate", host, "--reason", "beacon", "--dry-run")
    assert code == 0 and "would wait for a second analyst's approval; nothing was queued" in out
    assert "guardrail critical_approval" in out

    code, out, _ = run("hosts", "isolate", host, "--reason", "beacon", token_of=rex.strip())
    assert code == 0 and "status:   pending_approval" in out
    task_id = out.split()[1].rstrip(":")
    code, _, err = run("tasks", "approve", task_id, "--reason", "mine", token_of=rex.strip())
    assert code == 1 and "(403): refused by guardrail 'two_person'" in err
    code, out, _ = run(
        "tasks",
        "approve",
        task_id,
        "--reason",
        "seen it",
        "--no-wait",
        "--json",
        token_of=ria.strip(),
    )
    assert code == 0 and '"decided_by": "ria"' in out

    code, out, _ = run("tokens", "create", "ana", "--role", "analyst")
    code, _, err = run("kill", host, "e1", "--reason", "miner", token_of=out.strip())
    assert code == 1 and "refused by guardrail 'role'" in err and "responder" in err
    link.close()


@pytest.mark.parametrize(
    ("argv", "status", "code"),
    [
        pytest.param(["respond", "block_exec", "h"], "failed", 1, id="respond-failed"),
        pytest.param(["kill", "h", "e", "--reason", "r"], "expired", 1, id="kill-expired"),
        pytest.param(["hosts", "isolate", "h", "--reason", "r"], "done", 0, id="isolate-done"),
        pytest.param(["tasks", "show", "t"], "failed", 0, id="showing-is-no-error"),
    ],
)
def test_a_command_that_ran_a_task_exits_1_when_the_task_failed(
    argv: list[str], status: str, code: int
) -> None:
    args = build_parser().parse_args(argv)
    assert task_exit_code(args, {"id": "t", "status": status}) == code


def test_the_audit_trail_from_the_cli(
    running_server: RunningServer, cli: Callable[..., tuple[int, str, str]]
) -> None:
    code, _, _ = cli("policy", "set", "--isolate-cap-per-hour", "7")
    assert code == 0
    code, _, _ = cli("tokens", "create", "audit-me", "--role", "readonly")
    assert code == 0

    code, out, _ = cli("audit", "--limit", "2")
    header, *records = out.splitlines()
    assert code == 0 and header.split() == ["AT", "ACTOR", "ACTION", "TARGET", "OUTCOME", "PARAMS"]
    # The newest two records, newest first: who did what, to what, and how it ended.
    assert len(records) == 2
    assert records[0].split()[1:3] == ["admin", "token.create"] and "audit-me" in records[0]
    assert records[1].split()[1:5] == ["admin", "policy.update", "default", "ok"]

    code, _, err = cli("audit", "--limit", "0")
    assert code == 1 and "422" in err and "greater than or equal to 1" in err
    assert "nothing was stored" not in err  # a refused read stores nothing to begin with
    with pytest.raises(CliError, match="422.*invalid request: .*; nothing was stored"):
        running_server.api.call("POST", "/intel/allow", {"value": ""})
