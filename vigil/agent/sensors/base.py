"""The sensor plugin interface and its registry.

A sensor watches one telemetry source and hands nested ECS documents to ``emit``. Each sensor
declares its name, the operating systems it runs on, the privilege it needs and a version;
subclasses register themselves by name when they are defined, so the agent policy can name them.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

log = logging.getLogger(__name__)

REGISTRY: dict[str, type[Sensor]] = {}
NEVER_SHED = 1000

Emit = Callable[[dict[str, Any]], None]


@dataclass
class SensorContext:
    """What a sensor gets from the agent: who it is, where to send events, where to keep state."""

    agent_id: str
    host_id: str
    host_name: str
    emit: Emit
    state_dir: str
    # Process lineage shared by sensors: pid -> (entity id, executable, command line).
    processes: Any = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SensorHealth:
    """A sensor's own report: state is running, stopped, failed or not_applicable."""

    state: str
    message: str = ""
    counters: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "message": self.message, "counters": dict(self.counters)}


class Sensor(abc.ABC):
    """Base class of every sensor; subclasses set the class attributes and implement the hooks."""

    name: ClassVar[str]
    supported_os: ClassVar[tuple[str, ...]] = ("linux",)
    requires_root: ClassVar[bool] = True
    version: ClassVar[str] = "1"
    # When the agent is over its CPU or memory budget, sensors are stopped lowest first;
    # NEVER_SHED keeps a sensor running whatever it costs.
    shed_order: ClassVar[int] = 50

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A class naming itself is a sensor; an intermediate base class names nothing. (ABC's
        # abstract-method set is not known yet when this runs.)
        if isinstance(cls.__dict__.get("name"), str):
            REGISTRY[cls.name] = cls

    def __init__(self, context: SensorContext) -> None:
        self.context = context
        self.counters: dict[str, int] = {}
        self._health = SensorHealth("stopped")
        self._lock = threading.Lock()

    def count(self, counter: str, by: int = 1) -> None:
        """Add to one of this sensor's counters (events, lost, errors...)."""
        with self._lock:
            self.counters[counter] = self.counters.get(counter, 0) + by

    @abc.abstractmethod
    def check_compatible(self) -> None:
        """Raise NotApplicable with the reason when this sensor cannot run on this host."""

    @abc.abstractmethod
    def start(self) -> None:
        """Begin watching, on the sensor's own thread; return once events are flowing."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop watching and restore every kernel setting the sensor changed."""

    def health(self) -> SensorHealth:
        """The sensor's state with a copy of its counters."""
        with self._lock:
            return SensorHealth(self._health.state, self._health.message, dict(self.counters))

    def set_state(self, state: str, message: str = "") -> None:
        with self._lock:
            self._health = SensorHealth(state, message)
