"""Server ingest throughput: validation, storage and Sigma detection per event.

Runs in one process on the same generated process events:
- baseline: committing the flattened events to DuckDB alone (``TelemetryStore.commit_batch``);
- detection: ``RuleSet.match`` with the built-in and SigmaHQ Linux rules;
- full ingest: ``ingest_batch`` (validate, commit, detect, store alerts), as agents see it.

Prints events per second for each and the full ingest's cost relative to the baseline.

    python -m bench.bench_ingest [--events N] [--batch N]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from vigil.detect import RuleSet, builtin_rules_dir
from vigil.schema.ecs import flatten, utc_now_iso
from vigil.schema.wire import EventBatch
from vigil.server.context import ServerConfig, ServerContext
from vigil.server.ingest import ingest_batch
from vigil.store.state import DEFAULT_TENANT
from vigil.store.telemetry import TelemetryStore

SIGMA_LINUX = Path(__file__).resolve().parents[1].parent / "shared/data/sigma/rules/linux"

COMMANDS = [
    ["/usr/bin/ls", "-la", "/var/log"],
    ["/usr/bin/grep", "-r", "error", "/var/log/syslog"],
    ["/usr/bin/python3", "-m", "pip", "list"],
    ["/usr/bin/curl", "-s", "https://example.org/health"],
    ["/usr/bin/systemctl", "status", "nginx"],
    ["/usr/bin/base64", "-d", "/tmp/payload.b64"],
    ["/usr/bin/cat", "/etc/hostname"],
    ["/usr/bin/git", "status", "--short"],
    ["/usr/sbin/sshd", "-D", "-R"],
    ["/bin/sh", "-c", "echo hello > /dev/null"],
]


def make_events(count: int) -> list[dict[str, Any]]:
    rng = random.Random(7)
    events = []
    for seq in range(1, count + 1):
        argv = [*rng.choice(COMMANDS), f"--marker={seq}"]
        events.append(
            {
                "@timestamp": utc_now_iso(),
                "event": {
                    "kind": "event",
                    "category": ["process"],
                    "type": ["start"],
                    "action": "exec",
                    "sequence": seq,
                },
                "host": {"os": {"type": "linux"}},
                "process": {
                    "entity_id": f"e{seq}",
                    "pid": 1000 + seq,
                    "executable": argv[0],
                    "name": argv[0].rsplit("/", 1)[-1],
                    "args": argv,
                    "command_line": " ".join(argv),
                    "working_directory": "/root",
                    "parent": {
                        "entity_id": f"e{seq - 1}",
                        "pid": 999 + seq,
                        "executable": "/bin/bash",
                        "command_line": "bash",
                    },
                },
                "user": {"id": "0", "name": "root"},
            }
        )
    return events


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    events = make_events(args.events)
    rule_paths = [builtin_rules_dir(), SIGMA_LINUX]
    batches = [events[i : i + args.batch] for i in range(0, len(events), args.batch)]

    with tempfile.TemporaryDirectory() as tmp:
        store = TelemetryStore(Path(tmp) / "baseline.duckdb")
        flat_batches = [[flatten(e) for e in batch] for batch in batches]
        started = time.perf_counter()
        for batch in flat_batches:
            store.commit_batch(DEFAULT_TENANT, "agent", "epoch", batch)
        baseline = rate(len(events), time.perf_counter() - started)
        store.close()

        rules = RuleSet.from_paths(rule_paths)
        flat = [f for batch in flat_batches for f in batch]
        started = time.perf_counter()
        matches = sum(len(rules.match(f)) for f in flat)
        detection = rate(len(flat), time.perf_counter() - started)

        ctx = ServerContext.open(ServerConfig(data_dir=Path(tmp) / "server", rule_paths=rule_paths))
        agent_id = ctx.state.add_agent(DEFAULT_TENANT, "host", "bench-host", "linux", "bench")
        agent = ctx.state.agent(agent_id)
        assert agent is not None
        started = time.perf_counter()
        for batch in batches:
            ingest_batch(ctx, agent, EventBatch(spool_epoch="epoch", events=batch))
        full = rate(len(events), time.perf_counter() - started)
        alerts = len(ctx.state.alerts(DEFAULT_TENANT, 100_000))
        ctx.close()

    print(f"events: {len(events)} in batches of {args.batch}; rules: {len(rules.rules)}")
    print(f"baseline  DuckDB commit only      {baseline:10.0f} events/s")
    print(f"detection RuleSet.match           {detection:10.0f} events/s ({matches} matches)")
    print(f"full      ingest_batch            {full:10.0f} events/s ({alerts} alerts)")
    print(f"full ingest relative to baseline  {full / baseline:10.2f}x")


if __name__ == "__main__":
    main()
