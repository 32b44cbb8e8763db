"""SigmaHQ's Linux rules (read from ../shared/data, never copied): all load, and a few fire."""

from __future__ import annotations

from typing import Any

import pytest

from vigil.detect import Rule, RuleSet

from .helpers import SIGMA_LINUX, process_event

pytestmark = pytest.mark.skipif(
    not SIGMA_LINUX.is_dir(), reason=f"SigmaHQ rules not found at {SIGMA_LINUX}"
)

# Rules of the SigmaHQ Linux set that are expected not to load, with the reason. Empty: all
# 210 rules of the shared snapshot compile.
EXPECTED_FAILURES: dict[str, str] = {}


@pytest.fixture(scope="module")
def sigmahq() -> RuleSet:
    return RuleSet.from_paths([SIGMA_LINUX])


def by_file(ruleset: RuleSet, name: str) -> Rule:
    matches = [rule for rule in ruleset.rules if rule.path.endswith("/" + name)]
    assert len(matches) == 1, f"{name} not loaded"
    return matches[0]


def test_every_linux_rule_loads(sigmahq: RuleSet) -> None:
    files = sorted(SIGMA_LINUX.rglob("*.yml"))
    failed = {e.path.rsplit("/", 1)[-1]: e.message for e in sigmahq.errors}
    assert failed == EXPECTED_FAILURES
    assert len(sigmahq.rules) + len(sigmahq.errors) == len(files)


CASES = [
    pytest.param(
        "proc_creation_lnx_base64_decode.yml",
        process_event("/usr/bin/base64", "base64 -d /tmp/payload.b64"),
        process_event("/usr/bin/base64", "base64 /etc/hostname"),
        id="base64-decode",
    ),
    pytest.param(
        "proc_creation_lnx_susp_history_delete.yml",
        process_event("/usr/bin/rm", "rm -f /home/alice/.bash_history"),
        process_event("/usr/bin/rm", "rm -f /home/alice/notes.txt"),
        id="history-delete",
    ),
    pytest.param(
        "proc_creation_lnx_susp_history_delete.yml",
        process_event("/usr/bin/shred", "shred -u /root/.zhistory"),
        process_event("/usr/bin/cat", "cat /root/.bash_history"),
        id="history-shred",
    ),
    pytest.param(
        "proc_creation_lnx_susp_execution_tmp_folder.yml",
        process_event("/tmp/.x/kworker", "/tmp/.x/kworker -c cfg"),
        process_event("/usr/bin/ls", "ls /tmp/"),
        id="exec-from-tmp",
    ),
    pytest.param(
        "proc_creation_lnx_local_account.yml",
        process_event("/usr/bin/cat", "cat /etc/shadow"),
        process_event("/usr/bin/cat", "cat /etc/hostname"),
        id="cat-etc-shadow",
    ),
    pytest.param(
        "proc_creation_lnx_susp_sensitive_file_access.yml",
        process_event("/usr/bin/echo", "echo '* * * * * root sh /tmp/x' > /etc/crontab"),
        process_event("/usr/bin/cat", "cat /etc/crontab"),
        id="sensitive-file-write",
    ),
]


@pytest.mark.parametrize(("file_name", "malicious", "benign"), CASES)
def test_rule_fires_on_malicious_not_benign(
    sigmahq: RuleSet, file_name: str, malicious: dict[str, Any], benign: dict[str, Any]
) -> None:
    rule = by_file(sigmahq, file_name)
    assert rule in sigmahq.match(malicious)
    assert rule not in sigmahq.match(benign)


def test_tmp_rule_filter_applies(sigmahq: RuleSet) -> None:
    rule = by_file(sigmahq, "proc_creation_lnx_susp_execution_tmp_folder.yml")
    assert rule not in sigmahq.match(process_event("/tmp/.mount_x/usr/bin/nextcloud", "nextcloud"))


def test_benign_admin_commands_fire_no_high_rule(sigmahq: RuleSet) -> None:
    benign = [
        process_event("/usr/bin/ls", "ls -la /home/alice"),
        process_event("/usr/bin/git", "git status"),
        process_event("/usr/bin/python3", "python3 -m pytest -q"),
        process_event("/usr/bin/systemctl", "systemctl status nginx"),
    ]
    fired = {rule.title for event in benign for rule in sigmahq.match(event)}
    assert not [t for t in fired if by_title(sigmahq, t).level in ("high", "critical")], fired


def by_title(ruleset: RuleSet, title: str) -> Rule:
    return next(rule for rule in ruleset.rules if rule.title == title)
