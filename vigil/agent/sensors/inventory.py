"""Host inventory: packages, accounts, listeners, cron, systemd units, SSH keys, kernel modules.

At start the sensor lists every item of every kind and emits one ``event.kind: state`` document
per item, so a hunt over the ``events`` view answers "which hosts have package X" or "where is
this key authorized" from columns (``package.name``, ``package.version``, ``user.name``,
``file.path``...) instead of unnesting a list. The items stay in ``vigil.inventory.item``.

Then it lists everything again every ``inventory_interval`` seconds and emits one
``event.kind: event`` document per item added, removed or changed (``package_installed``,
``user_added``, ``cron_changed``, ``authorized_key_added``, ``systemd_unit_added``,
``kernel_module_loaded``, ``listener_opened``...), with the previous item in
``vigil.inventory.previous``. The last listing is saved in ``STATE_DIR/inventory.json``, so
what changed while the agent was stopped is reported at the next start.

A kind whose listing fails keeps its previous items: a failure is counted and logged, never
reported as everything having been removed.

Options (``SensorContext.options``):
    inventory_root: the root of the tree to list (default ``/``; listeners always come from
        the running kernel).
    inventory_interval: seconds between listings (1-86400, default 300).
    inventory_kinds: the kinds to list (default: all of :data:`KINDS`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vigil.agent.errors import AgentError, NotApplicable
from vigil.agent.hostinfo import (
    accounts,
    crontabs,
    kmodules,
    listeners,
    packages,
    ssh_keys,
    units,
)
from vigil.agent.hostinfo.files import Item
from vigil.agent.processes import event_base
from vigil.agent.sensors.base import Sensor, SensorContext

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 300.0
INTERVAL_RANGE = (1.0, 86400.0)
STATE_FILE = "inventory.json"
STATE_VERSION = 1
Items = dict[str, Item]


@dataclass(frozen=True)
class Kind:
    """One kind of inventory item: how to list it and how its events look in ECS."""

    name: str
    category: str
    collect: Callable[[str, Sensor], Items]
    ecs: Callable[[Item], dict[str, Any]]
    # (event.type, event.action) for an item added, removed and changed.
    added: tuple[list[str], str]
    removed: tuple[list[str], str]
    changed: tuple[list[str], str] | None
    # Fields that change without the item changing (a listener's pid after a restart).
    volatile: tuple[str, ...] = ()


def _keys(root: str, sensor: Sensor) -> Items:
    found, malformed = ssh_keys.collect(root)
    sensor.count("malformed_keys", malformed)
    return found


def _file_fields(item: Item) -> dict[str, Any]:
    path = str(item["path"])
    return {
        "file": {"path": path, "name": os.path.basename(path), "directory": os.path.dirname(path)}
    }


def _package_fields(item: Item) -> dict[str, Any]:
    return {
        "package": {
            "name": item["name"],
            "version": item["version"],
            "architecture": item["architecture"],
            "type": item["type"],
        }
    }


def _listener_fields(item: Item) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "destination": {"ip": item["ip"], "port": item["port"]},
        "network": {"transport": item["transport"], "type": item["type"], "direction": "ingress"},
    }
    process = {
        key: value
        for key, value in (
            ("pid", item["pid"]),
            ("name", item["process_name"]),
            ("executable", item["executable"]),
        )
        if value is not None
    }
    if process:
        fields["process"] = process
    if item["uid"] is not None:
        fields["user"] = {"id": str(item["uid"])}
    return fields


def _key_fields(item: Item) -> dict[str, Any]:
    return {**_file_fields(item), "user": {"name": item["user"]}}


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(
            "packages",
            "package",
            lambda root, _s: packages.collect(root),
            _package_fields,
            (["installation"], "package_installed"),
            (["deletion"], "package_removed"),
            (["change"], "package_updated"),
        ),
        Kind(
            "users",
            "iam",
            lambda root, _s: accounts.users(root),
            lambda item: {"user": {"name": item["name"], "id": item["uid"]}},
            (["user", "creation"], "user_added"),
            (["user", "deletion"], "user_removed"),
            (["user", "change"], "user_changed"),
        ),
        Kind(
            "groups",
            "iam",
            lambda root, _s: accounts.groups(root),
            lambda item: {"group": {"name": item["name"], "id": item["gid"]}},
            (["group", "creation"], "group_added"),
            (["group", "deletion"], "group_removed"),
            (["group", "change"], "group_changed"),
        ),
        Kind(
            "listeners",
            "network",
            lambda _root, _s: listeners.collect(),
            _listener_fields,
            (["start"], "listener_opened"),
            (["end"], "listener_closed"),
            None,
            volatile=("pid",),
        ),
        Kind(
            "crontabs",
            "configuration",
            lambda root, _s: crontabs.collect(root),
            _file_fields,
            (["creation"], "cron_added"),
            (["deletion"], "cron_removed"),
            (["change"], "cron_changed"),
        ),
        Kind(
            "systemd_units",
            "configuration",
            lambda root, _s: units.collect(root),
            _file_fields,
            (["creation"], "systemd_unit_added"),
            (["deletion"], "systemd_unit_removed"),
            (["change"], "systemd_unit_changed"),
        ),
        Kind(
            "authorized_keys",
            "configuration",
            _keys,
            _key_fields,
            (["creation"], "authorized_key_added"),
            (["deletion"], "authorized_key_removed"),
            (["change"], "authorized_key_changed"),
        ),
        Kind(
            "kernel_modules",
            "driver",
            lambda root, _s: kmodules.collect(root),
            lambda item: {},
            (["start"], "kernel_module_loaded"),
            (["end"], "kernel_module_unloaded"),
            None,
        ),
    )
}


class InventorySensor(Sensor):
    """Emits the host's inventory at start and an event for every item added, removed or changed."""

    name = "inventory"
    shed_order = 10
    supported_os = ("linux",)
    requires_root = False
    version = "1"

    def __init__(self, context: SensorContext) -> None:
        super().__init__(context)
        self._root = str(context.options.get("inventory_root", "/"))
        self._kinds: list[Kind] = []
        self._interval = DEFAULT_INTERVAL
        self._known: dict[str, Items] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_compatible(self) -> None:
        """The inventory reads Linux files; the root must be a folder.

        Raises:
            NotApplicable: Not Linux, or ``inventory_root`` is not a folder.
        """
        if not sys.platform.startswith("linux"):
            raise NotApplicable(f"the inventory reads Linux files; this host is {sys.platform}")
        if not os.path.isdir(self._root):
            raise NotApplicable(
                f"inventory_root {self._root!r} is not a folder: set it to the host's root, /"
            )

    def start(self) -> None:
        """List everything, emit the snapshot and what changed since the last run, then poll.

        Raises:
            AgentError: An option is invalid.
        """
        self._configure()
        for counter in ("events", "collections", "items", "changes", "errors"):
            self.count(counter, 0)
        previous = self._load()

        current = self._collect(previous)
        stamp = time.time()
        for kind in self._kinds:
            for key, item in sorted(current[kind.name].items()):
                self._emit_item(kind, key, item, None, "state", stamp)
        if previous is not None:
            self._emit_changes(previous, current, stamp)
        self._known = current
        self._save()

        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="vigil-inventory", daemon=True)
        self._thread.start()
        kinds = ", ".join(kind.name for kind in self._kinds)
        self.set_state("running", f"listing {kinds} every {self._interval:g} s")

    def stop(self) -> None:
        """Stop polling; the last listing stays saved for the next start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        self.set_state("stopped")

    def _configure(self) -> None:
        options = self.context.options
        interval = options.get("inventory_interval", DEFAULT_INTERVAL)
        low, high = INTERVAL_RANGE
        if isinstance(interval, bool) or not isinstance(interval, int | float):
            interval = -1.0
        if not low <= interval <= high:
            message = (
                f"inventory option inventory_interval={options['inventory_interval']!r} is "
                f"invalid: use seconds from {low:g} to {high:g} (default {DEFAULT_INTERVAL:g})"
            )
            self.set_state("failed", message)
            raise AgentError(message)
        self._interval = float(interval)
        names = options.get("inventory_kinds", list(KINDS))
        unknown = sorted(set(names) - set(KINDS))
        if unknown or not names:
            message = (
                f"inventory option inventory_kinds={names!r} is invalid: "
                f"use some of {', '.join(KINDS)}"
            )
            self.set_state("failed", message)
            raise AgentError(message)
        self._kinds = [KINDS[name] for name in KINDS if name in names]

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                current = self._collect(self._known)
                self._emit_changes(self._known, current, time.time())
                self._known = current
                self._save()
            except Exception as exc:
                self.count("errors")
                log.warning("inventory listing failed: %s", exc)
                log.debug("inventory traceback", exc_info=True)

    def _collect(self, previous: dict[str, Items] | None) -> dict[str, Items]:
        current: dict[str, Items] = {}
        for kind in self._kinds:
            try:
                current[kind.name] = kind.collect(self._root, self)
            except Exception as exc:
                self.count("errors")
                log.warning(
                    "inventory cannot list %s: %s; keeping the last listing", kind.name, exc
                )
                log.debug("inventory %s traceback", kind.name, exc_info=True)
                current[kind.name] = dict((previous or {}).get(kind.name, {}))
        self.count("collections")
        total = sum(len(items) for items in current.values())
        with self._lock:
            self.counters["items"] = total
        return current

    def _emit_changes(
        self, previous: dict[str, Items], current: dict[str, Items], stamp: float
    ) -> None:
        for kind in self._kinds:
            if kind.name not in previous:
                continue  # a kind enabled since the last run: its snapshot says it all
            before, after = previous[kind.name], current[kind.name]
            for key in sorted(after.keys() - before.keys()):
                self._emit_item(kind, key, after[key], None, "added", stamp)
            for key in sorted(before.keys() - after.keys()):
                self._emit_item(kind, key, before[key], None, "removed", stamp)
            for key in sorted(after.keys() & before.keys()):
                if _stable(before[key], kind) != _stable(after[key], kind):
                    if kind.changed is not None:
                        self._emit_item(kind, key, after[key], before[key], "changed", stamp)

    def _emit_item(
        self,
        kind: Kind,
        key: str,
        item: Item,
        old: Item | None,
        change: str,
        stamp: float,
    ) -> None:
        if change == "state":
            subject = [t for t in kind.added[0] if t in ("user", "group")]
            types, action = [*subject, "info"], "inventory_snapshot"
        else:
            spec = {"added": kind.added, "removed": kind.removed, "changed": kind.changed}[change]
            assert spec is not None
            types, action = spec
        unique = f"inventory:{stamp:.6f}:{kind.name}:{key}:{action}"
        document = event_base(self.context, stamp, types[0], action, unique)
        document["event"].update(
            {"kind": "state" if change == "state" else "event", "category": [kind.category]}
        )
        document["event"]["type"] = list(types)
        document.update(kind.ecs(item))
        inventory: dict[str, Any] = {"kind": kind.name, "key": key, "item": item}
        if old is not None:
            inventory["previous"] = old
        document["vigil"] = {"inventory": inventory}
        self.context.emit(document)
        self.count("events")
        if change != "state":
            self.count("changes")

    def _state_path(self) -> str:
        return os.path.join(self.context.state_dir, STATE_FILE)

    def _load(self) -> dict[str, Items] | None:
        try:
            with open(self._state_path(), encoding="utf-8") as handle:
                saved = json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning(
                "inventory state %s is unreadable (%s); changes while stopped are not reported",
                self._state_path(),
                exc,
            )
            return None
        if not isinstance(saved, dict) or saved.get("version") != STATE_VERSION:
            log.warning(
                "inventory state %s has another format; starting afresh", self._state_path()
            )
            return None
        kinds = saved.get("kinds")
        return kinds if isinstance(kinds, dict) else None

    def _save(self) -> None:
        path = self._state_path()
        temporary = f"{path}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump({"version": STATE_VERSION, "kinds": self._known}, handle)
        os.replace(temporary, path)


def _stable(item: Item, kind: Kind) -> Item:
    return {key: value for key, value in item.items() if key not in kind.volatile}
