"""Sigma correlation rules on the ingest stream, one engine per tenant."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import UTC, datetime
from typing import Any

from vigil.cases.alerts import build_alert
from vigil.detect import CorrelationHit, Rule, RuleSet
from vigil.detect.correlation import CorrelationEngine

log = logging.getLogger(__name__)

FLUSH_SECONDS = 60.0


class Correlator:
    """Feeds each tenant's events and fired rules to that tenant's correlation engine."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self._engines: dict[str, CorrelationEngine] = {}
        self._lock = threading.Lock()

    def _engine(self, tenant_id: str) -> CorrelationEngine:
        with self._lock:
            engine = self._engines.get(tenant_id)
            if engine is None:
                engine = self._engines[tenant_id] = self.rules.correlation_engine()
            return engine

    def feed(
        self, tenant_id: str, event: dict[str, Any], fired: list[Rule]
    ) -> list[dict[str, Any]]:
        """Alerts of the correlations this event completes (none without correlation rules)."""
        if not self.rules.correlations:
            return []
        return [
            correlation_alert(hit)
            for hit in self._engine(tenant_id).feed(event, fired)
            if hit.correlation.generate
        ]

    def flush(self, now: datetime | None) -> list[tuple[str, dict[str, Any]]]:
        """Decide the windows that are over; (tenant, alert) for each correlation that fires."""
        with self._lock:
            engines = list(self._engines.items())
        return [
            (tenant_id, correlation_alert(hit))
            for tenant_id, engine in engines
            for hit in engine.flush(now)
            if hit.correlation.generate
        ]


def correlation_alert(hit: CorrelationHit) -> dict[str, Any]:
    """An alert for a correlation: its newest event, and what the correlation counted."""
    event = dict(hit.events[-1]) if hit.events else {}
    alert = build_alert(hit.correlation, event, str(event.get("host.name") or ""))  # type: ignore[arg-type]
    alert["rule"]["correlation"] = {
        "group": hit.group,
        "value": hit.value,
        "values": list(hit.values)[:100],
        "rules": list(hit.rules),
        "event_ids": list(hit.event_ids)[:1000],
        "first_seen": hit.first_seen.isoformat(),
        "last_seen": hit.last_seen.isoformat(),
    }
    return alert


async def flush_periodically(correlator: Correlator, store_alert: Any) -> None:
    """Now and then, close the windows that went quiet (for lt/eq/neq conditions)."""
    while True:
        await asyncio.sleep(FLUSH_SECONDS)
        try:
            for tenant_id, alert in await asyncio.to_thread(correlator.flush, datetime.now(UTC)):
                store_alert(tenant_id, alert)
        except Exception:  # the loop must outlive one bad round
            log.exception("flushing correlation windows failed")
