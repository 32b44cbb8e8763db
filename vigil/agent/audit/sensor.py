"""What every sensor on kernel audit shares: attaching to the hub, stopping, health."""

from __future__ import annotations

from pathlib import Path

from vigil.agent.audit.hub import AUDIT_BASELINE, HUB, Subscription, check_available
from vigil.agent.errors import AgentError
from vigil.agent.sensors.base import Sensor, SensorHealth


class AuditSensor(Sensor):
    """Base of the sensors fed by the shared audit hub; subclasses name themselves."""

    def check_compatible(self) -> None:
        """Raise NotApplicable off Linux, without root, or when audit is locked or taken."""
        check_available(self.name)

    def attach(self, subscription: Subscription, backlog: int, rcvbuf: int) -> None:
        """Attach to the hub (the first sensor starts kernel audit); on failure say so.

        Raises:
            AgentError: The kernel refused; every change was undone.
        """
        try:
            HUB.attach(subscription, backlog, rcvbuf, baseline=self._baseline_file())
        except AgentError as exc:
            self.set_state("failed", str(exc))
            raise

    def _baseline_file(self) -> Path | None:
        """Where the audit settings found at start are kept, in the agent's state folder."""
        folder = Path(self.context.state_dir) if self.context.state_dir else None
        return folder / AUDIT_BASELINE if folder is not None and folder.is_dir() else None

    def stop(self) -> None:
        """Detach from the audit hub; the last audit sensor restores every audit setting.

        Raises:
            AgentError: A setting could not be restored; the message names it.
        """
        problems = HUB.detach(self.name)
        if problems:
            message = f"{self.name} stopped but could not restore: " + "; ".join(problems)
            self.set_state("failed", message)
            raise AgentError(message + "; check with AUDIT_GET / AUDIT_LIST_RULES and fix by hand")
        self.set_state("stopped")

    def health(self) -> SensorHealth:
        """State and counters, with the shared audit counters (records, lost, backlog...)."""
        health = super().health()
        if health.state == "running" and HUB.failure:
            health.state, health.message = "failed", HUB.failure
        return SensorHealth(health.state, health.message, {**HUB.counters(), **health.counters})
