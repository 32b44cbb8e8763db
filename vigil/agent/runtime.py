"""The running agent: sensors feed the spool, the sender drains it, tasks come and go.

Threads, each with one job:
- writer: moves emitted events from memory to the spool in small transactions;
- sender: sends the oldest spooled batch until the server acknowledges it, backing off while
  the server or the network is down;
- heartbeat: reports per-sensor health, spool state and isolation every few seconds;
- tasks: long-polls the server for signed tasks and runs them;
- isolation_lease: releases an isolation whose lease ran out while the server was silent.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from vigil.agent import identity as identity_mod
from vigil.agent import spool as spool_mod
from vigil.agent.errors import AgentError, NotApplicable, TaskRejected
from vigil.agent.memory import release_free_memory
from vigil.agent.policy import Policy
from vigil.agent.processes import ProcessTable
from vigil.agent.respond import isolate
from vigil.agent.respond.base import REGISTRY as ACTIONS
from vigil.agent.respond.base import ActionContext
from vigil.agent.respond.exec_guard import ExecGuard
from vigil.agent.sensors import REGISTRY as SENSORS
from vigil.agent.sensors.base import Sensor, SensorContext
from vigil.agent.spool import Spool, SpooledBatch
from vigil.agent.tasks import TaskChecker, run_action
from vigil.agent.transport import ServerLink
from vigil.agent.watchdog import Watchdog
from vigil.schema import jsonfast

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10.0
# A sensor that cannot run here is replaced by a weaker one that can, which says it is degraded.
FALLBACKS = {"process_audit": "process_poll"}
POLL_SECONDS = 25.0
MAX_BACKOFF = 30.0
WRITE_GATHER_SECONDS = 0.02
# Events kept in memory after they are spooled, for a triage bundle (the spool forgets what the
# server acknowledged).
RECENT_EVENTS = 2000
LEASE_CHECK_SECONDS = 2.0


class Agent:
    """One agent process, built from an enrolled identity."""

    def __init__(
        self,
        ident: identity_mod.Identity,
        policy: Policy | None = None,
        batch_size: int = 1000,
    ) -> None:
        self.identity = ident
        self.batch_size = batch_size
        self.policy = policy or default_policy()
        self.spool = Spool(ident.state_dir / spool_mod.FILE_NAME)
        self.link = ServerLink(ident)
        self.checker = TaskChecker(
            ident.agent_id, ident.task_key_path.read_text(), ident.state_dir / "nonces.json"
        )
        self.sensors: list[Sensor] = []
        self.sensor_health: dict[str, dict[str, Any]] = {}
        self.processes = ProcessTable(ident.agent_id)
        self.watchdog = Watchdog(self.policy.budget, lambda: list(self.sensors), self._shed)
        self.exec_guard = ExecGuard(
            SensorContext(
                agent_id=ident.agent_id,
                host_id=ident.agent_id,
                host_name=ident.hostname,
                emit=self.emit,
                state_dir=str(ident.state_dir),
                processes=self.processes,
            ),
            self.policy.block_exec,
        )
        self.rejected_batches = 0
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._wake_sender = threading.Event()
        self._task_busy = threading.Event()
        # Kept as the JSON the spool wrote: a tenth of the memory of the event dicts.
        self._recent: collections.deque[str] = collections.deque(maxlen=RECENT_EVENTS)
        self._recent_lock = threading.Lock()

    @property
    def action_context(self) -> ActionContext:
        return ActionContext(
            agent_id=self.identity.agent_id,
            state_dir=str(self.identity.state_dir),
            server_host=self.identity.server_host,
            server_port=self.identity.server_port,
            link=self.link,
            allow_run_command=self.policy.allow_run_command,
            recent_events=self.recent_events,
            exec_guard=self.exec_guard,
            private_paths=self.policy.private_paths,
        )

    def recent_events(self) -> list[dict[str, Any]]:
        """The newest events written to the spool (up to ``RECENT_EVENTS``), oldest first."""
        with self._recent_lock:
            texts = list(self._recent)
        return [jsonfast.loads(text) for text in texts]

    def emit(self, doc: dict[str, Any]) -> None:
        """Hand an event to the spool writer (sensors call this from their own threads)."""
        self._queue.put(doc)

    def start(self) -> None:
        """Re-apply isolation and exec blocks, start the sensors, then the worker threads."""
        state = isolate.reapply_if_isolated(self.action_context)
        if state is not None:
            log.warning(
                "this host was isolated before the agent stopped: isolation re-applied "
                "(allow %s, lease %s s)",
                state.allow,
                state.lease_seconds,
            )
        # Blocked hashes are refused again before the sensors start; a failure is in health.
        self.exec_guard.start()
        self._start_sensors()
        self.watchdog.start()
        workers = (
            self._writer,
            self._sender,
            self._heartbeat,
            self._task_loop,
            self._isolation_lease,
        )
        for target in workers:
            thread = threading.Thread(
                target=target, name=f"vigil-{target.__name__[1:]}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        log.info(
            "agent %s running with sensors: %s",
            self.identity.agent_id,
            ", ".join(s.name for s in self.sensors) or "none",
        )

    def _start_sensors(self) -> None:
        pending = list(self.policy.sensors)
        while pending:
            name = pending.pop(0)
            if self._start_sensor(name):
                continue
            fallback = FALLBACKS.get(name)
            if fallback and fallback not in self.policy.sensors:
                log.warning("sensor %s is off: falling back to %s", name, fallback)
                pending.append(fallback)

    def _context(self, name: str) -> SensorContext:
        return SensorContext(
            agent_id=self.identity.agent_id,
            host_id=self.identity.agent_id,
            host_name=self.identity.hostname,
            emit=self.emit,
            state_dir=str(self.identity.state_dir),
            processes=self.processes,
            options=dict(self.policy.sensors.get(name, {})),
        )

    def _start_sensor(self, name: str) -> bool:
        sensor_cls = SENSORS.get(name)
        if sensor_cls is None:
            self.sensor_health[name] = {"state": "failed", "message": "no such sensor"}
            log.error("no sensor named %r; known sensors: %s", name, ", ".join(SENSORS))
            return False
        sensor = sensor_cls(self._context(name))
        try:
            sensor.check_compatible()
            sensor.start()
        except NotApplicable as exc:
            self.sensor_health[name] = {"state": "not_applicable", "message": str(exc)}
            log.info("sensor %s not started: %s", name, exc)
            return False
        except Exception as exc:  # one sensor failing must not stop the others
            self.sensor_health[name] = {"state": "failed", "message": str(exc)}
            log.error("sensor %s failed to start: %s", name, exc)
            log.debug("sensor %s traceback", name, exc_info=True)
            return False
        self.sensors.append(sensor)
        return True

    def _shed(self, sensor: Sensor, reason: str) -> None:
        """Stop a sensor the watchdog gave up on, and say why in its health."""
        try:
            sensor.stop()
        except Exception:
            log.exception("sensor %s did not stop cleanly", sensor.name)
        self.sensors.remove(sensor)
        health = sensor.health().as_dict()
        health.update(state="shed", message=reason)
        self.sensor_health[sensor.name] = health

    def stop(self) -> None:
        """Stop sensors (restoring kernel state), flush and send what is left, lift firewall."""
        self.watchdog.stop()
        # Marks removed and the group closed; the block list is kept for the next start.
        self.exec_guard.stop()
        for sensor in self.sensors:
            try:
                sensor.stop()
            except Exception:
                log.exception("sensor %s did not stop cleanly", sensor.name)
        self._stop.set()
        self._wake_sender.set()
        for thread in self._threads:
            # The task thread may sit in a long poll: wait for it only while it runs an action.
            if thread.name == "vigil-task_loop" and not self._task_busy.is_set():
                continue
            thread.join(timeout=POLL_SECONDS + 20)
        self._flush_queue()
        self._say_goodbye()
        # The firewall table is removed so nothing is left behind; the isolation state file is
        # kept, so the next start isolates the host again.
        isolate.lift_rules_keep_state(self.action_context)
        self.link.close()
        self.spool.close()
        log.info("agent stopped")

    def _flush_queue(self, first: dict[str, Any] | None = None) -> int:
        docs = [first] if first is not None else []
        while len(docs) < 5000:
            try:
                docs.append(self._queue.get_nowait())
            except queue.Empty:
                break
        texts = self.spool.append(docs)
        with self._recent_lock:
            self._recent.extend(texts)
        return len(docs)

    def _writer(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            # Let a burst gather for a moment: one transaction (and no wake-up of this thread)
            # per few hundred events rather than per event.
            self._stop.wait(WRITE_GATHER_SECONDS)
            self._flush_queue(first)
            self._wake_sender.set()

    def _sender(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            batch = self.spool.peek_json(self.batch_size)
            if batch is None:
                self._wake_sender.wait(1.0)
                self._wake_sender.clear()
                continue
            try:
                self._send(batch)
                backoff = 1.0
            except httpx.HTTPError as exc:
                log.warning(
                    "server unreachable (%s); %d events wait in the spool, retry in %.0fs",
                    exc,
                    self.spool.stats()["queued"],
                    backoff,
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _send(self, batch: SpooledBatch) -> None:
        # The spooled rows are the batch's events as they are: no decoding and encoding again.
        events = ",".join(batch.texts).encode()
        epoch = jsonfast.dumps(self.spool.epoch)
        body = b'{"spool_epoch":' + epoch + b',"events":[' + events + b"]}"
        response = self.link.post_json("/events", body)
        last = batch.last_sequence
        if response.status_code == 422:
            # A batch the server can never accept would block the spool forever: keep it aside
            # for inspection and go on.
            self.rejected_batches += 1
            rejected = self.identity.state_dir / "rejected"
            rejected.mkdir(exist_ok=True)
            reason = jsonfast.dumps(response.text)
            (rejected / f"batch-{last}.json").write_bytes(
                b'{"reason":' + reason + b',"events":[' + events + b"]}"
            )
            log.error("server refused batch ending at %d: %s", last, response.text)
            self.spool.ack(last)
            return
        response.raise_for_status()
        self.spool.ack(response.json()["committed_sequence"])

    def health(self) -> dict[str, Any]:
        sensors = dict(self.sensor_health)
        for sensor in self.sensors:
            sensors[sensor.name] = sensor.health().as_dict()
        spool = self.spool.stats()
        spool["rejected_batches"] = self.rejected_batches
        return {
            "sensors": sensors,
            "spool": spool,
            "isolated": self._isolated(),
            "exec_block": self.exec_guard.health(),
            "watchdog": self.watchdog.report(),
        }

    def _isolated(self) -> bool:
        try:
            return (
                isolate.load_state(self.action_context) is not None and isolate.isolation_active()
            )
        except Exception:  # a missing nft binary only means we cannot tell
            return False

    def _say_goodbye(self) -> None:
        """A last heartbeat saying the agent stops on purpose, so silence is not a surprise."""
        beat = self.health()
        beat["stopping"] = True
        try:
            self.link.post("/heartbeat", beat)
        except httpx.HTTPError as exc:
            log.debug("last heartbeat not delivered: %s", exc)

    def _heartbeat(self) -> None:
        while not self._stop.is_set():
            try:
                self.link.post("/heartbeat", self.health()).raise_for_status()
            except httpx.HTTPError as exc:
                log.debug("heartbeat not delivered: %s", exc)
            self._stop.wait(HEARTBEAT_SECONDS)

    def _isolation_lease(self) -> None:
        """Release an isolation whose lease ran out while the server could not be reached."""
        while not self._stop.wait(LEASE_CHECK_SECONDS):
            self.check_isolation_lease()

    def check_isolation_lease(self) -> bool:
        """Release the host if its isolation lease ran out; True if it did.

        The release is spooled as a telemetry event, so the server learns why as soon as the
        agent reaches it again.
        """
        silent = time.monotonic() - self.link.last_contact
        try:
            state = isolate.release_if_lease_expired(self.action_context, silent)
        except Exception as exc:  # a failed check must not stop the agent; try again next tick
            log.warning("could not check the isolation lease: %s", exc)
            return False
        if state is None:
            return False
        self.emit(
            isolate.lease_event(self.identity.agent_id, self.identity.hostname, state, silent)
        )
        return True

    def _task_loop(self) -> None:
        while not self._stop.is_set():
            try:
                envelopes = self.link.poll_tasks(POLL_SECONDS)
            except httpx.HTTPError as exc:
                log.debug("task poll failed: %s", exc)
                self._stop.wait(2.0)
                continue
            for envelope in envelopes:
                self._task_busy.set()
                try:
                    self._handle_task(envelope)
                finally:
                    self._task_busy.clear()

    def _handle_task(self, envelope: dict[str, Any]) -> None:
        try:
            body = self.checker.check(envelope["body"], envelope["signature"])
        except TaskRejected as exc:
            log.error("%s", exc)
            return
        log.info("running task %s: %s %s", body.task_id, body.action, body.params)
        action_cls = ACTIONS.get(body.action)
        if action_cls is not None and action_cls.long_running:
            self._report_running(body.task_id)
        status, result, message = run_action(body, self.action_context)
        release_free_memory()
        try:
            self.link.post(
                f"/tasks/{body.task_id}/result",
                {"status": status, "result": result, "message": message},
            )
        except httpx.HTTPError as exc:
            log.warning("could not report task %s: %s", body.task_id, exc)

    def _report_running(self, task_id: str) -> None:
        """Say a long action started; a server that cannot be told is no reason not to run it."""
        try:
            self.link.post(f"/tasks/{task_id}/result", {"status": "running", "message": "started"})
        except httpx.HTTPError as exc:
            log.debug("could not report task %s as running: %s", task_id, exc)


def default_policy() -> Policy:
    """Every sensor as root; without root only what can run unprivileged, polling processes."""
    policy = Policy.default(sorted(SENSORS))
    if os.geteuid() != 0:
        policy = policy.only([name for name in policy.sensors if not SENSORS[name].requires_root])
        policy.sensors.setdefault("process_poll", {})
    return policy


def load_identity(state_dir: Path) -> identity_mod.Identity:
    found = identity_mod.load(state_dir)
    if found is None:
        raise AgentError(
            f"no enrolled identity in {state_dir}: run 'vigil agent run --server URL "
            "--enroll-token TOKEN' once"
        )
    return found
