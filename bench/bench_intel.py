"""Threat-intel matching cost: events/s with 0 and with 100,000 indicators, against ingest.

Runs in one process on the same generated flat events (process starts with hashes, network
connections, DNS answers, file writes, URLs):
- ``IntelIndex.match`` with an empty index (the price of the ingest hook alone);
- ``IntelIndex.match`` with N indicators (hashes, addresses, networks of several prefix
  lengths, domains, URLs, file names), about 1% of events hitting one;
- full ``ingest_batch`` on bench_ingest's events, for the per-event cost intel adds to.

Prints events per second, the ratio between the two indexes, and intel's per-event cost as a
share of the per-event cost of ingest (goal: under 10%).

    python -m bench.bench_intel [--events N] [--indicators N] [--ingest-events N]
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_ingest import SIGMA_LINUX, make_events
from vigil.detect import builtin_rules_dir
from vigil.intel import Indicator, IntelIndex
from vigil.intel import IndicatorType as T
from vigil.schema.wire import EventBatch
from vigil.server.context import ServerConfig, ServerContext
from vigil.server.ingest import ingest_batch
from vigil.store.state import DEFAULT_TENANT

SHARES = ((T.SHA256, 0.40), (T.IPV4, 0.25), (T.CIDR, 0.02), (T.DOMAIN, 0.25), (T.URL, 0.05))
CIDR_LENGTHS = (16, 20, 22, 24, 28)


def ipv4(rng: random.Random) -> str:
    return ".".join(str(rng.randrange(1, 255)) for _ in range(4))


def domain(rng: random.Random) -> str:
    return f"{rng.getrandbits(40):x}.{rng.choice(['com', 'net', 'org', 'info', 'ru'])}"


def make_indicators(count: int, rng: random.Random) -> list[Indicator]:
    """``count`` random indicators in the shares of SHARES, file names for the rest."""
    made: list[Indicator] = []
    for kind, share in SHARES:
        for _ in range(int(count * share)):
            if kind is T.SHA256:
                value = f"{rng.getrandbits(256):064x}"
            elif kind is T.IPV4:
                value = ipv4(rng)
            elif kind is T.CIDR:
                length = rng.choice(CIDR_LENGTHS)
                network = (rng.randrange(1 << 32), length)
                value = str(ipaddress.ip_network(network, strict=False))
            elif kind is T.DOMAIN:
                value = domain(rng)
            else:
                value = f"http://{domain(rng)}/{rng.getrandbits(32):x}/"
            made.append(Indicator(kind, value, "bench"))
    while len(made) < count:
        made.append(Indicator(T.FILENAME, f"{rng.getrandbits(48):x}.bin", "bench"))
    return made


def make_flat_events(
    count: int, indicators: list[Indicator], rng: random.Random
) -> list[dict[str, Any]]:
    """Flat events of five kinds; about 1% carry a value of one of the indicators."""
    events: list[dict[str, Any]] = []
    for seq in range(count):
        hit = indicators[rng.randrange(len(indicators))] if rng.random() < 0.01 else None
        kind = seq % 5
        if kind == 0:
            event = {
                "process.name": rng.choice(["bash", "curl", "python3", "sshd"]),
                "process.executable": "/usr/bin/curl",
                "process.hash.sha256": f"{rng.getrandbits(256):064x}",
            }
        elif kind == 1:
            event = {"destination.ip": ipv4(rng), "source.ip": "10.0.0.5", "destination.port": 443}
        elif kind == 2:
            event = {"dns.question.name": "www." + domain(rng), "dns.resolved_ip": [ipv4(rng)]}
        elif kind == 3:
            event = {"file.name": "x.tmp", "file.hash.sha256": f"{rng.getrandbits(256):064x}"}
        else:
            event = {"url.full": f"https://{domain(rng)}/index.html", "destination.ip": ipv4(rng)}
        if hit is not None:
            event.update(_carrying(hit))
        event["event.category"] = ["process"]
        event["@timestamp"] = "2024-04-04T00:00:00Z"
        events.append(event)
    return events


def _carrying(indicator: Indicator) -> dict[str, Any]:
    if indicator.type is T.SHA256:
        return {"process.hash.sha256": indicator.value}
    if indicator.type is T.IPV4:
        return {"destination.ip": indicator.value}
    if indicator.type is T.CIDR:
        return {"destination.ip": indicator.value.split("/")[0]}
    if indicator.type is T.DOMAIN:
        return {"dns.question.name": "cdn." + indicator.value}
    if indicator.type is T.URL:
        return {"url.full": indicator.value}
    return {"file.name": indicator.value}


def match_rate(
    index: IntelIndex, events: list[dict[str, Any]], rounds: int = 3
) -> tuple[float, int]:
    """Best events/s over a few rounds, and the number of hits."""
    best = 0.0
    hits = 0
    for _ in range(rounds):
        started = time.perf_counter()
        hits = sum(len(index.match(e)) for e in events)
        best = max(best, len(events) / (time.perf_counter() - started))
    return best, hits


def ingest_rate(count: int) -> float:
    """Events/s of full ingest_batch (validate, store, detect) on bench_ingest's events."""
    events = make_events(count)
    with tempfile.TemporaryDirectory() as tmp:
        config = ServerConfig(data_dir=Path(tmp), rule_paths=[builtin_rules_dir(), SIGMA_LINUX])
        ctx = ServerContext.open(config)
        agent_id = ctx.state.add_agent(DEFAULT_TENANT, "host", "bench-host", "linux", "bench")
        agent = ctx.state.agent(agent_id)
        assert agent is not None
        started = time.perf_counter()
        for at in range(0, count, 1000):
            ingest_batch(ctx, agent, EventBatch(spool_epoch="epoch", events=events[at : at + 1000]))
        rate = count / (time.perf_counter() - started)
        ctx.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--indicators", type=int, default=100_000)
    parser.add_argument("--ingest-events", type=int, default=5000, help="0 skips ingest")
    args = parser.parse_args()
    rng = random.Random(7)

    indicators = make_indicators(args.indicators, rng)
    events = make_flat_events(args.events, indicators, rng)
    started = time.perf_counter()
    full = IntelIndex(indicators)
    build = time.perf_counter() - started
    empty_rate, _ = match_rate(IntelIndex([]), events)
    full_rate, hits = match_rate(full, events)

    print(f"events: {len(events)}; indicators: {len(full)} (index built in {build:.2f} s)")
    print(f"match, 0 indicators          {empty_rate:12.0f} events/s")
    print(f"match, {len(full):<7} indicators  {full_rate:12.0f} events/s ({hits} hits)")
    print(f"100k relative to empty       {full_rate / empty_rate:12.2f}x")
    if args.ingest_events:
        ingest = ingest_rate(args.ingest_events)
        share = ingest / full_rate
        print(f"full ingest_batch            {ingest:12.0f} events/s")
        print(f"intel matching per event     {1e6 / full_rate:12.2f} us = {share:.1%} of ingest's")


if __name__ == "__main__":
    main()
