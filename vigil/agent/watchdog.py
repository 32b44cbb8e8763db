"""Keeping the agent within its CPU and memory budget.

Every few seconds the watchdog samples the agent process's CPU use and resident memory. When
the average over the last five minutes is over budget, it stops the running sensor with the
lowest ``shed_order`` (the cheapest to lose) and says so in the sensor's health and in the log;
it sheds one sensor per five minutes until the agent is back within budget. A shed sensor stays off
until the agent restarts: a sensor that blew the budget once will do it again.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

import psutil

from vigil.agent.memory import release_free_memory
from vigil.agent.policy import Budget
from vigil.agent.sensors.base import NEVER_SHED, Sensor

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 5.0
WINDOW = 60  # samples: five minutes, so bursts and start-up are averaged out


class Watchdog:
    """Samples the agent and sheds sensors when it is over budget for a whole window."""

    def __init__(
        self,
        budget: Budget,
        sensors: Callable[[], list[Sensor]],
        shed: Callable[[Sensor, str], None],
        sample_seconds: float = SAMPLE_SECONDS,
        window: int = WINDOW,
    ) -> None:
        self.budget = budget
        self._sensors = sensors
        self._shed = shed
        self.sample_seconds = sample_seconds
        self._cpu: deque[float] = deque(maxlen=window)
        self._rss: deque[float] = deque(maxlen=window)
        self._process = psutil.Process()
        self._process.cpu_percent(None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak_rss_mb = 0.0
        self.shed_sensors: list[str] = []

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vigil-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.sample_seconds + 5)

    def report(self) -> dict[str, float | list[str]]:
        """The figures the heartbeat carries."""
        return {
            "cpu_percent": round(self._average(self._cpu), 2),
            "rss_mb": round(self._rss[-1] if self._rss else 0.0, 1),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "budget_cpu_percent": self.budget.cpu_percent,
            "budget_rss_mb": self.budget.rss_mb,
            "shed": list(self.shed_sensors),
        }

    @staticmethod
    def _average(values: deque[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    def sample(self) -> None:
        """Take one sample, and shed a sensor if the whole window is over budget."""
        self._cpu.append(self._process.cpu_percent(None))
        rss = self._process.memory_info().rss / 2**20
        self._rss.append(rss)
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        if len(self._cpu) < (self._cpu.maxlen or 1):
            return
        cpu = self._average(self._cpu)
        memory = self._average(self._rss)
        if cpu <= self.budget.cpu_percent and memory <= self.budget.rss_mb:
            return
        if cpu <= self.budget.cpu_percent:
            # Over on memory alone: first give back what is freed but still mapped, and judge
            # again on the next sample; a sensor is shed only if the agent still holds it.
            release_free_memory()
            rss = self._process.memory_info().rss / 2**20
            if rss <= self.budget.rss_mb:
                self._rss.clear()
                self._rss.append(rss)
                return
        reason = (
            f"agent over budget: {cpu:.1f}% CPU (budget {self.budget.cpu_percent}%), "
            f"{memory:.0f} MB (budget {self.budget.rss_mb:.0f} MB)"
        )
        candidates = [s for s in self._sensors() if s.shed_order < NEVER_SHED]
        if not candidates:
            log.warning("%s; nothing left to shed", reason)
        else:
            victim = min(candidates, key=lambda s: s.shed_order)
            log.warning("%s: stopping sensor %s", reason, victim.name)
            self.shed_sensors.append(victim.name)
            self._shed(victim, reason)
        # A fresh window: judge the agent again on what it costs without that sensor.
        self._cpu.clear()
        self._rss.clear()

    def _run(self) -> None:
        while not self._stop.wait(self.sample_seconds):
            try:
                self.sample()
            except psutil.Error as exc:
                log.debug("watchdog sample failed: %s", exc)
