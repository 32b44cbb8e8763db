"""Group audit records into events by their ``audit(sec.msec:serial)`` id.

Records of different events interleave on a busy machine. A syscall event ends with an EOE
record; records of standalone events (configuration changes, user messages) have no EOE, so a
group is also closed once no record has joined it for ``max_age`` seconds, and the oldest group
is closed when more than ``max_open`` are open.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from vigil.agent.audit.records import AUDIT_EOE, AuditRecord

EventId = tuple[int, int, int]


@dataclass
class AuditEvent:
    """All records of one audit event, in arrival order, without the EOE marker."""

    event_id: EventId
    records: list[AuditRecord] = field(default_factory=list)
    complete: bool = False
    # Facts read from /proc when the first record arrived, by whoever fed the reassembler.
    annotations: dict[str, object] = field(default_factory=dict)

    @property
    def timestamp(self) -> float:
        """The event time as seconds since the epoch."""
        seconds, millis, _serial = self.event_id
        return seconds + millis / 1000

    def first(self, record_type: int) -> AuditRecord | None:
        """The first record of ``record_type``, if any."""
        for record in self.records:
            if record.type == record_type:
                return record
        return None

    def all(self, record_type: int) -> list[AuditRecord]:
        """Every record of ``record_type``, in order."""
        return [record for record in self.records if record.type == record_type]


class Reassembler:
    """Collects records and returns each event once it is complete (or given up on).

    Args:
        max_age: Seconds a group without EOE stays open after its last record.
        max_open: Most groups kept open; past it the oldest is closed.
        clock: Monotonic clock, replaceable in tests.
    """

    def __init__(
        self,
        max_age: float = 2.0,
        max_open: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_age = max_age
        self.max_open = max_open
        self._clock = clock
        self._open: OrderedDict[EventId, tuple[AuditEvent, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def add(self, record: AuditRecord) -> tuple[AuditEvent, list[AuditEvent]]:
        """Add one record.

        Returns:
            The event the record joined, and the events closed by this call (EOE, or the
            oldest group pushed out by ``max_open``), oldest first.
        """
        now = self._clock()
        event_id = record.event_id
        entry = self._open.pop(event_id, None)
        event = entry[0] if entry else AuditEvent(event_id)
        closed: list[AuditEvent] = []
        if record.type == AUDIT_EOE:
            event.complete = True
            closed.append(event)
            return event, closed
        event.records.append(record)
        self._open[event_id] = (event, now)
        while len(self._open) > self.max_open:
            _old_id, (old, _seen) = self._open.popitem(last=False)
            closed.insert(0, old)
        return event, closed

    def expire(self) -> list[AuditEvent]:
        """Close and return the groups idle for longer than ``max_age``, oldest first."""
        deadline = self._clock() - self.max_age
        expired = [event_id for event_id, (_e, seen) in self._open.items() if seen < deadline]
        return [self._open.pop(event_id)[0] for event_id in expired]

    def flush(self) -> list[AuditEvent]:
        """Close and return every open group (at shutdown)."""
        events = [event for event, _seen in self._open.values()]
        self._open.clear()
        return events
