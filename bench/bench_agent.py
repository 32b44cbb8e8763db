"""Agent fidelity and overhead: does everything reach the server intact, and at what cost?

Starts a server (``vigil server``) and a real agent (``vigil agent run``, default policy, root)
as children, then runs, on this host:
- a burst of short-lived processes, each with a unique marker and awkward argv (spaces, quotes),
  from two shells side by side (``--shells``) so that 5,000 take under 10 s on two cores;
- file creations in a fresh folder;
- loopback TCP connections to a listener of the benchmark's own.

It then asks the server (a hunt over ``events``) what arrived: the fraction of execs with the
exact argv and the right parent, of files with the right path, of connections with the right
port; the agent's CPU and RSS idle and under the burst, also as a ratio to the CPU the workload
itself used (the baseline, measured in the same run); and the delay from an exec to it being
queryable. The same burst also runs once before the agent starts, as the baseline for its wall
time.

The server stands for one on another machine: it runs at the lowest CPU priority (``nice``
19, ``--server-nice``), so on a small test machine its ingest does not take the endpoint's
cores from the workload and the agent; the agent still sends everything as it happens, and the
server catches up when the cores are free.

    python -m bench.bench_agent [--processes 5000] [--files 2000] [--connections 500]
                                [--shells 2] [--server-nice 19]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from vigil.agent import identity
from vigil.cli.client import ApiClient
from vigil.server.app import ADMIN_TOKEN_FILE

IDLE_SECONDS = 20.0
SETTLE_SECONDS = 180.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Sampler:
    """CPU time and peak RSS of one process, sampled in the background."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def cpu_seconds(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak_rss = max(self.peak_rss, self.rss())

    def __enter__(self) -> Sampler:
        self.peak_rss = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def vigil_command() -> list[str]:
    return [sys.executable, "-m", "vigil.cli.main"]


def connect(data_dir: Path, url: str, server: subprocess.Popen[bytes]) -> ApiClient:
    """An admin client once the server answers (its CA and token appear on first start)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited ({server.returncode}); see its log")
        token_file, ca = data_dir / ADMIN_TOKEN_FILE, data_dir / "pki" / "ca.crt"
        if token_file.exists() and ca.exists():
            api = ApiClient(url, token_file.read_text().strip(), str(ca))
            try:
                api.call("GET", "/status")
                return api
            except Exception:  # noqa: BLE001 - not listening yet
                pass
        time.sleep(0.2)
    raise SystemExit("the server did not answer within 120 s")


def hunt(api: ApiClient, sql: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = api.call("POST", "/hunt", {"sql": sql})["rows"]
    return rows


def count(api: ApiClient, where: str) -> int:
    return int(hunt(api, f"SELECT count(*) AS n FROM events WHERE {where}")[0]["n"])


def wait_until(api: ApiClient, where: str, expected: int) -> int:
    deadline = time.monotonic() + SETTLE_SECONDS
    seen = -1
    while time.monotonic() < deadline:
        seen = count(api, where)
        if seen >= expected:
            break
        time.sleep(1.0)
    return seen


@dataclass
class Workload:
    shell_pids: list[int]
    cpu_seconds: float
    wall_seconds: float
    port: int


def burst(
    run: str, processes: int, files: int, connections: int, folder: Path, shells: int
) -> Workload:
    """Run the workload: execs and files from ``shells`` shells at once, then connections.

    Exec ``i`` gets the marker ``vigil-RUN-i``; shell ``k`` runs the execs and files whose
    numbers are ``k`` modulo ``shells``, so markers stay unique across shells.
    """
    scripts = [
        f'for i in $(seq {1 + k} {shells} {processes}); do /bin/echo "vigil-{run}-$i" "a b" '
        '"q\'uote" > /dev/null; done\n'
        f'for i in $(seq {1 + k} {shells} {files}); do : > "{folder}/f-$i.txt"; done\n'
        for k in range(shells)
    ]
    started = time.monotonic()
    running = [subprocess.Popen(["/bin/bash", "-c", script]) for script in scripts]
    usage = {shell.pid: psutil.Process(shell.pid) for shell in running}
    cpu = dict.fromkeys(usage, 0.0)
    while any(shell.poll() is None for shell in running):
        for pid, process in usage.items():
            try:
                times = process.cpu_times()
                cpu[pid] = times.user + times.system + times.children_user + times.children_system
            except psutil.Error:
                pass
        time.sleep(0.05)
    wall = time.monotonic() - started

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted = threading.Thread(
        target=lambda: [listener.accept()[0].close() for _ in range(connections)], daemon=True
    )
    accepted.start()
    for _ in range(connections):
        socket.create_connection(("127.0.0.1", port)).close()
    accepted.join(timeout=30)
    listener.close()
    return Workload(list(usage), sum(cpu.values()), wall, port)


def latency_probes(api: ApiClient, run: str, probes: int = 20) -> list[float]:
    delays = []
    for n in range(probes):
        marker = f"vigil-probe-{run}-{n}"
        started = time.monotonic()
        subprocess.run(["/bin/echo", marker], stdout=subprocess.DEVNULL, check=True)
        while count(api, f"\"process.args\"[2] = '{marker}'") == 0:
            if time.monotonic() - started > 60:
                break
            time.sleep(0.02)
        delays.append(time.monotonic() - started)
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=5000)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument(
        "--shells", type=int, default=2, help="shells running the burst side by side"
    )
    parser.add_argument(
        "--server-nice", type=int, default=19, help="CPU niceness of the server process"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_agent needs root: the agent uses kernel audit and fanotify")

    work = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            *vigil_command(),
            "--data-dir",
            str(work / "server"),
            "server",
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(work / "server.log").open("w"),
        preexec_fn=lambda: os.nice(args.server_nice),
    )
    api = connect(work / "server", url, server)
    token = api.call("POST", "/enroll-tokens", {})["token"]
    identity.enroll(work / "agent", url, token)
    baseline_folder = work / "baseline-files"
    baseline_folder.mkdir()
    baseline = burst("baseline", args.processes, args.files, 0, baseline_folder, args.shells)
    agent = subprocess.Popen(
        [
            *vigil_command(),
            "agent",
            "run",
            "--state-dir",
            str(work / "agent"),
            "--quiet-path",
            str(work / "server"),
        ],
        stderr=(work / "agent.log").open("w"),
    )
    try:
        while not api.call("GET", "/hosts")[0]["health"].get("sensors"):
            time.sleep(0.5)
        time.sleep(5)  # let the inventory snapshot and start-up settle
        run = uuid.uuid4().hex[:8]
        folder = work / "files"
        folder.mkdir()

        with Sampler(agent.pid) as sampler:
            before = sampler.cpu_seconds()
            time.sleep(IDLE_SECONDS)
            idle_cpu = (sampler.cpu_seconds() - before) / IDLE_SECONDS * 100
            idle_rss = sampler.rss()

            before = sampler.cpu_seconds()
            started = time.monotonic()
            workload = burst(run, args.processes, args.files, args.connections, folder, args.shells)
            execs = wait_until(
                api,
                f"\"process.args\"[2] LIKE 'vigil-{run}-%' AND "
                "list_contains(\"event.type\", 'start')",
                args.processes,
            )
            created = wait_until(
                api,
                f"\"file.path\" LIKE '{folder}/f-%' AND \"event.action\" = 'creation'",
                args.files,
            )
            drained = time.monotonic() - started
            burst_cpu = sampler.cpu_seconds() - before
            peak_rss = sampler.peak_rss

        exact = count(
            api,
            f"\"process.args\" = ['/bin/echo', 'vigil-{run}-' || "
            f"split_part(\"process.args\"[2], '-', 3), 'a b', 'q''uote'] AND "
            f"\"process.args\"[2] LIKE 'vigil-{run}-%' AND "
            "list_contains(\"event.type\", 'start')",
        )
        parented = count(
            api,
            f"\"process.args\"[2] LIKE 'vigil-{run}-%' AND "
            f'"process.parent.pid" IN ({", ".join(map(str, workload.shell_pids))}) AND '
            '"process.parent.entity_id" IS NOT NULL AND '
            "list_contains(\"event.type\", 'start')",
        )
        connected = wait_until(
            api,
            f'"destination.port" = {workload.port} AND "event.action" = \'connect\'',
            args.connections,
        )
        delays = latency_probes(api, run)
        health = api.call("GET", "/hosts")[0]["health"]
    finally:
        agent.terminate()
        agent.wait(timeout=60)
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)

    lost = {
        name: {
            k: v for k, v in h.get("counters", {}).items() if k in ("lost", "overflow", "dropped")
        }
        for name, h in health.get("sensors", {}).items()
    }
    print(
        f"workload: {args.processes} execs + {args.files} files in {workload.wall_seconds:.1f}s "
        f"with the agent, {baseline.wall_seconds:.1f}s without "
        f"({workload.wall_seconds / baseline.wall_seconds:.2f}x); "
        f"{args.connections} loopback connections"
    )
    print(
        f"execs reached the server        {execs:6d} / {args.processes} "
        f"({100 * execs / args.processes:.2f}%)"
    )
    print(f"  with exact argv                {exact:6d} ({100 * exact / args.processes:.2f}%)")
    print(
        f"  with the right parent          {parented:6d} ({100 * parented / args.processes:.2f}%)"
    )
    print(
        f"files created, right path       {created:6d} / {args.files} "
        f"({100 * created / args.files:.2f}%)"
    )
    print(f"connections recorded            {connected:6d} / {args.connections}")
    print(f"agent idle CPU                  {idle_cpu:6.2f}% of one core")
    print(f"agent idle RSS                  {idle_rss / 2**20:6.1f} MB")
    print(
        f"agent CPU for the burst         {burst_cpu:6.2f}s "
        f"({burst_cpu / max(workload.cpu_seconds, 1e-9):.2f}x the workload's own "
        f"{workload.cpu_seconds:.2f}s)"
    )
    print(f"agent peak RSS                  {peak_rss / 2**20:6.1f} MB")
    print(f"burst start to all queryable    {drained:6.1f}s")
    print(
        f"exec to queryable (20 probes)   median {statistics.median(delays):.2f}s, "
        f"max {max(delays):.2f}s"
    )
    print(f"loss counters                   {lost}")


if __name__ == "__main__":
    main()
