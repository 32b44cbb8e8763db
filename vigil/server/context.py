"""Everything a running server holds: stores, authority, rules and the task doorbells."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from vigil.detect import RuleSet
from vigil.intel import IntelIndex, IntelStore
from vigil.server import pki
from vigil.server.correlate import Correlator
from vigil.store.evidence import EvidenceStore
from vigil.store.state import StateStore
from vigil.store.telemetry import TelemetryStore

log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    """Where the server keeps its data, where it listens and which rules it loads."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8443
    rule_paths: list[Path] = field(default_factory=list)
    # Values of the rules' %name% placeholders (``field|expand``).
    placeholders: dict[str, list[str]] = field(default_factory=dict)
    server_names: list[str] = field(default_factory=list)
    # Seconds without a heartbeat before an agent counts as silent (agents beat every 10 s).
    heartbeat_timeout: float = 60.0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"


class Doorbells:
    """Wakes an agent's pending long poll when a task is queued for it.

    Tasks are queued from worker threads while polls wait on the event loop, so a ring from
    another thread is handed to the loop.
    """

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def ring(self, agent_id: str) -> None:
        if self.loop is None:
            return
        self.loop.call_soon_threadsafe(self._events[agent_id].set)

    def close(self) -> None:
        """Answer every waiting poll now, and every later one at once: the server is stopping."""
        self._closed = True
        if self.loop is not None:
            for event in list(self._events.values()):
                self.loop.call_soon_threadsafe(event.set)

    async def wait(self, agent_id: str, timeout: float) -> None:
        if self._closed:
            return
        event = self._events[agent_id]
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        event.clear()


@dataclass
class ServerContext:
    """The open stores, CA, loaded rules and doorbells of one server."""

    config: ServerConfig
    state: StateStore
    telemetry: TelemetryStore
    authority: pki.Authority
    rules: RuleSet
    correlator: Correlator
    doorbells: Doorbells
    intel: IntelStore
    evidence: EvidenceStore
    # Swapped whole after an import or an allow-list change; ingest reads the reference.
    intel_index: IntelIndex

    @classmethod
    def open(cls, config: ServerConfig) -> ServerContext:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        authority = pki.load_or_create(config.data_dir / "pki")
        rules = RuleSet.from_paths(config.rule_paths, placeholders=config.placeholders)
        for error in rules.errors:
            log.warning("rule not loaded: %s: %s", error.path, error.message)
        log.info("loaded %d rules (%d could not be loaded)", len(rules.rules), len(rules.errors))
        intel = IntelStore.open(config.data_dir)
        return cls(
            config=config,
            state=StateStore(config.data_dir / "state.sqlite"),
            telemetry=TelemetryStore(config.data_dir / "telemetry.duckdb"),
            authority=authority,
            rules=rules,
            correlator=Correlator(rules),
            doorbells=Doorbells(),
            intel=intel,
            evidence=EvidenceStore.open(config.data_dir),
            intel_index=intel.load_index(),
        )

    def reload_intel(self) -> None:
        """Match new events against the indicators and allow-list as they are now."""
        self.intel_index = self.intel.load_index()

    def close(self) -> None:
        self.evidence.close()
        self.intel.close()
        self.telemetry.close()
        self.state.close()
