"""Refuse the execution of files by SHA-256: the block list and the guard enforcing it.

The block list is kept in ``<state dir>/exec_blocklist.json``. While it holds a hash, the guard
keeps a fanotify permission group (``FAN_CLASS_CONTENT``) with ``FAN_OPEN_EXEC_PERM`` marks on
the scope the agent policy sets (``response.block_exec``): an inode mark with
``FAN_EVENT_ON_CHILD`` on each directory of ``paths`` (its direct children only, not its
subdirectories) and a mount mark on each entry of ``mounts``. Every exec in scope then waits
until the guard's thread hashes the file (cached by identity, see ``exec_hashes``) and answers
``FAN_DENY`` when the hash is blocked, ``FAN_ALLOW`` otherwise. A denied exec fails with
``EPERM`` and is reported as an ``exec_blocked`` event. With an empty block list the group is
closed, so no exec waits for the agent.

Safety, since an unanswered permission event stalls the process that caused it:
- every event read is answered; any error while judging it answers ``FAN_ALLOW``;
- a hash that takes longer than ``hash_timeout_seconds`` answers ``FAN_ALLOW`` (the hash is
  finished in the background and judges the next exec of that file);
- when the thread stops for any reason, it closes the group: the kernel then allows every exec
  still waiting and drops the marks; if it is stuck, ``stop`` swaps the descriptor for
  ``/dev/null``, which releases the group the same way;
- on stop the marks are removed before the group is closed;
- the hashes of programs the host cannot live without (the shell, init, the dynamic loader,
  the agent's own interpreter...) are refused.

Reference: fanotify(7), fanotify_mark(2).
"""

from __future__ import annotations

import errno
import glob
import json
import logging
import os
import re
import select
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vigil.agent.fanotify import permission
from vigil.agent.processes import ProcessInstance, ProcessTable, event_base, read_start_ticks
from vigil.agent.respond.errors import ResponseError
from vigil.agent.respond.exec_hashes import ExecHasher, file_key, sha256_fd
from vigil.schema.ecs import utc_now_iso

if TYPE_CHECKING:
    from vigil.agent.policy import BlockExecPolicy
    from vigil.agent.sensors.base import SensorContext

log = logging.getLogger(__name__)

BLOCKLIST_FILE = "exec_blocklist.json"
READ_SIZE = 64 * 1024
POLL_MS = 200
JOIN_SECONDS = 10.0
SHA256 = re.compile(r"^[0-9a-f]{64}$")
NO_SCOPE = (
    "exec blocking has no scope on this agent: set response.block_exec.paths (directories) "
    "or response.block_exec.mounts (for example [/]) in the agent policy and restart the agent"
)
# Programs the host needs to run at all; their hashes cannot be blocked.
PROTECTED = (
    "/bin/sh",
    "/bin/bash",
    "/usr/bin/env",
    "/sbin/init",
    "/usr/lib/systemd/systemd",
    "/usr/sbin/sshd",
    "/usr/bin/sudo",
    "/usr/sbin/nft",
    "/lib64/ld-linux*.so*",
    "/lib/ld-linux*.so*",
    "/lib/*-linux-gnu*/ld-linux*.so*",
    "/lib/ld-musl-*.so*",
)


def parse_sha256(value: Any, action: str) -> str:
    """Check ``value`` is a SHA-256 in hex (64 digits, any case); return it in lower case.

    Raises:
        ResponseError: it is not; the message shows what was given.
    """
    text = value.strip().lower() if isinstance(value, str) else None
    if isinstance(value, int) and not isinstance(value, bool):
        # ``vigil respond --param`` reads JSON: an all-digit hash arrives as a number.
        text = str(value)
    if text is None or not SHA256.match(text):
        raise ResponseError(
            f"{action}: 'sha256' must be the 64 hex digits of a file's SHA-256, got {value!r}"
        )
    return text


def protected_programs() -> list[str]:
    """The real paths of the programs whose hashes are never blocked, as found on this host."""
    found: list[str] = []
    for pattern in (*PROTECTED, sys.executable):
        for path in sorted(glob.glob(pattern)):
            real = os.path.realpath(path)
            if real not in found and os.path.isfile(real):
                found.append(real)
    return found


def load_blocklist(path: Path) -> dict[str, dict[str, Any]]:
    """Read the saved block list: sha256 -> what was recorded when it was blocked.

    Raises:
        ResponseError: the file exists but is unreadable or malformed; the message names it.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ResponseError(
            f"cannot read the exec block list {path}: {exc}; fix or remove the file"
        ) from exc
    entries = data.get("blocked") if isinstance(data, dict) else None
    if not isinstance(entries, dict) or not all(
        isinstance(key, str) and SHA256.match(key) and isinstance(value, dict)
        for key, value in entries.items()
    ):
        raise ResponseError(
            f"the exec block list {path} is malformed (it needs a 'blocked' mapping of sha256 "
            "to details); fix or remove the file"
        )
    return {key: dict(value) for key, value in entries.items()}


def save_blocklist(path: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Replace the saved block list atomically (temporary file, fsync, rename).

    Raises:
        ResponseError: the file could not be written; the saved list is unchanged.
    """
    temporary = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"version": 1, "blocked": entries}, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        raise ResponseError(
            f"cannot save the exec block list {path}: {exc}; the saved list is unchanged"
        ) from exc


@dataclass
class _Group:
    """One permission group: its descriptor, its marks and the thread answering it.

    ``lock`` guards ``closed``: once the thread closed the descriptor, its number may belong to
    something else and must not be touched.
    """

    fd: int
    marks: list[tuple[Callable[..., None], str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None
    # True from before the thread starts until it stops answering.
    serving: bool = False
    closed: bool = False


def _text(path: str) -> str:
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class ExecGuard:
    """The agent's block list of executables and the fanotify permission group enforcing it.

    Args:
        context: The agent's identity, emit function, state folder and process table; the
            options are not used.
        scope: ``response.block_exec`` of the agent policy.
    """

    def __init__(self, context: SensorContext, scope: BlockExecPolicy) -> None:
        self.context = context
        self.scope = scope
        self.path = Path(context.state_dir) / BLOCKLIST_FILE
        self.counters: dict[str, int] = {}
        self.unmarked: list[str] = []
        self.failure = ""
        self._entries: dict[str, dict[str, Any]] = {}
        self._hashes: frozenset[str] = frozenset()
        self._group: _Group | None = None
        self._hasher = ExecHasher(scope.max_hash_bytes)
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._protected: dict[str, tuple[tuple[int, ...], str]] = {}
        self._proc = ProcessTable(context.agent_id)
        self._run_id = f"{time.time_ns()}"
        self._sequence = 0

    # -- the block list ------------------------------------------------------------------

    def start(self) -> int:
        """Load the saved block list and enforce it again, as the agent does when it starts.

        Never raises: what stops enforcement is logged and shown in :meth:`health`.

        Returns:
            How many blocked hashes are enforced.
        """
        with self._lock:
            try:
                self._set_entries(load_blocklist(self.path))
            except ResponseError as exc:
                self.failure = str(exc)
                log.error("%s", exc)
                return 0
            if not self._entries:
                return 0
            if not self.scope.configured:
                self.failure = f"{len(self._entries)} blocked hashes are not enforced: {NO_SCOPE}"
                log.warning("%s", self.failure)
                return 0
            try:
                self._ensure_armed()
            except Exception as exc:  # the agent starts anyway; health says why nothing is refused
                self.failure = str(exc)
                log.error("exec blocks are not enforced: %s", exc)
                return 0
        log.warning("execution of %d blocked hashes is refused again", len(self._entries))
        return len(self._entries)

    def block(self, sha256: str, reason: str = "", note: str = "") -> dict[str, Any]:
        """Add ``sha256`` to the block list, save it and make sure it is enforced.

        Raises:
            ResponseError: no scope is configured, the hash belongs to a program the host needs,
                the saved list is unreadable, or the kernel refused the group or every mark;
                nothing was blocked then.
        """
        sha256 = parse_sha256(sha256, "block_exec")
        if not self.scope.configured:
            raise ResponseError(f"block_exec: {NO_SCOPE}; nothing was blocked")
        needed = self._protected_program(sha256)
        if needed is not None:
            raise ResponseError(
                f"block_exec: {sha256} is the hash of {needed}, which this host needs to run; "
                "refused, nothing was blocked"
            )
        with self._lock:
            entries = load_blocklist(self.path)
            already = sha256 in entries
            before = dict(entries)
            if not already:
                entries[sha256] = {"reason": reason, "note": note, "blocked_at": utc_now_iso()}
                # Saved first: if the agent dies once the marks are in, it still knows why.
                save_blocklist(self.path, entries)
            self._set_entries(entries)
            try:
                self._ensure_armed()
            except Exception:
                if not already:
                    save_blocklist(self.path, before)
                    self._set_entries(before)
                raise
            self.failure = ""
        log.info("block_exec: execution of sha256 %s is refused (%s)", sha256, reason or "-")
        return {
            "sha256": sha256,
            "blocked": True,
            "already_blocked": already,
            "blocked_count": len(entries),
            **self._scope_report(),
        }

    def unblock(self, sha256: str) -> dict[str, Any]:
        """Remove ``sha256`` from the block list; with nothing left, close the group.

        Raises:
            ResponseError: the hash is malformed or the saved list is unreadable.
        """
        sha256 = parse_sha256(sha256, "unblock_exec")
        with self._lock:
            entries = load_blocklist(self.path)
            was_blocked = entries.pop(sha256, None) is not None
            if was_blocked:
                save_blocklist(self.path, entries)
            self._set_entries(entries)
            if not entries:
                self._disarm()
        if was_blocked:
            log.info("unblock_exec: execution of sha256 %s is allowed again", sha256)
        return {
            "sha256": sha256,
            "blocked": False,
            "was_blocked": was_blocked,
            "blocked_count": len(entries),
        }

    def listing(self) -> dict[str, Any]:
        """The blocked hashes with what was recorded for each, and whether they are enforced.

        Raises:
            ResponseError: the saved list is unreadable.
        """
        entries = load_blocklist(self.path)
        return {
            "blocked": [{"sha256": key, **value} for key, value in sorted(entries.items())],
            "enforced": self.enforcing,
            **self._scope_report(),
        }

    def stop(self) -> None:
        """Remove the marks and close the group; the saved list is kept for the next start."""
        with self._lock:
            self._disarm()

    @property
    def enforcing(self) -> bool:
        """Whether a group with marks is being answered right now."""
        group = self._group
        return group is not None and group.serving

    def health(self) -> dict[str, Any]:
        """State (``enforcing``, ``idle``, ``failed``), counts and scope, for the heartbeat."""
        if self.enforcing:
            state = "enforcing"
        elif self.failure:
            state = "failed"
        else:
            state = "idle"
        with self._count_lock:
            counters = dict(self.counters)
        return {
            "state": state,
            "message": self.failure,
            "blocked": len(self._hashes),
            "counters": counters,
            **self._scope_report(),
        }

    def _set_entries(self, entries: dict[str, dict[str, Any]]) -> None:
        self._entries = dict(entries)
        # One attribute read by the answering thread: replaced whole, never changed in place.
        self._hashes = frozenset(entries)

    def _scope_report(self) -> dict[str, Any]:
        group = self._group
        marked = [path for _, path in group.marks] if group is not None else []
        return {"marked": marked, "unmarked": list(self.unmarked)}

    def _protected_program(self, sha256: str) -> str | None:
        for path in protected_programs():
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                key = file_key(os.fstat(fd))
                known = self._protected.get(path)
                if known is None or known[0] != key:
                    known = (key, sha256_fd(fd))
                    self._protected[path] = known
            finally:
                os.close(fd)
            if known[1] == sha256:
                return path
        return None

    def _count(self, counter: str) -> None:
        with self._count_lock:
            self.counters[counter] = self.counters.get(counter, 0) + 1

    # -- the permission group ------------------------------------------------------------

    def _ensure_armed(self) -> None:
        """Open the group and mark the scope unless a live thread answers it already."""
        if self.enforcing:
            return
        self._disarm()
        try:
            fd = permission.init_exec_group()
        except OSError as exc:
            raise ResponseError(
                f"block_exec: the kernel refused a fanotify permission group ({exc}); the agent "
                "needs root (CAP_SYS_ADMIN) and a kernel with CONFIG_FANOTIFY_ACCESS_PERMISSIONS"
            ) from exc
        group = _Group(fd)
        try:
            self._mark(group)
            self._hasher.start()
            group.thread = threading.Thread(
                target=self._serve, args=(group,), name="vigil-exec-guard", daemon=True
            )
            group.serving = True
            group.thread.start()
        except BaseException:
            os.close(fd)
            raise
        self._group = group
        log.info("exec guard marks %s", ", ".join(path for _, path in group.marks))

    def _mark(self, group: _Group) -> None:
        self.unmarked = []
        wanted = [(permission.mark_directory, path) for path in self.scope.paths]
        wanted += [(permission.mark_mount, path) for path in self.scope.mounts]
        for mark, path in wanted:
            try:
                mark(group.fd, path)
            except OSError as exc:
                why = os.strerror(exc.errno) if exc.errno else str(exc)
                self.unmarked.append(f"{path}: {why}")
                log.warning("exec guard cannot mark %s: %s", path, why)
                continue
            group.marks.append((mark, path))
        if not group.marks:
            raise ResponseError(
                f"block_exec: no directory or mount of response.block_exec could be marked "
                f"({'; '.join(self.unmarked)}); fix the agent policy; nothing was blocked"
            )

    def _disarm(self) -> None:
        """Remove the marks, stop the thread and close the group (it allows what waits)."""
        group, self._group = self._group, None
        if group is None:
            return
        group.stop.set()
        with group.lock:
            if not group.closed:
                for mark, path in group.marks:
                    try:
                        mark(group.fd, path, remove=True)
                    except OSError as exc:
                        log.debug("exec guard could not remove its mark on %s: %s", path, exc)
        if group.thread is not None:
            group.thread.join(JOIN_SECONDS)
        with group.lock:
            if not group.closed and (group.thread is None or not group.thread.is_alive()):
                os.close(group.fd)
                group.closed = True
            elif not group.closed:
                # The thread is stuck: put /dev/null in place of the group, which releases it
                # (every waiting exec is allowed); the thread closes that number when it ends.
                log.error("the exec guard thread did not stop; its fanotify group was released")
                null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                os.dup2(null, group.fd)
                os.close(null)
        self._hasher.stop()

    def _serve(self, group: _Group) -> None:
        """The answering thread: it may fail, but never with an exec left waiting."""
        try:
            self._answer_loop(group)
        except BaseException as exc:  # any failure: close the group below, which allows all
            self._count("errors")
            self.failure = (
                f"the exec guard stopped on an error ({exc!r}); blocked files can run until "
                "the next block_exec or agent restart"
            )
            log.exception("exec guard failed; its fanotify group is closed, every exec allowed")
        finally:
            group.serving = False
            with group.lock:
                if not group.closed:
                    os.close(group.fd)
                    group.closed = True

    def _answer_loop(self, group: _Group) -> None:
        poller = select.poll()
        poller.register(group.fd, select.POLLIN)
        while not group.stop.is_set():
            if not poller.poll(POLL_MS):
                continue
            try:
                buffer = os.read(group.fd, READ_SIZE)
            except BlockingIOError:
                continue
            events, error = permission.parse(buffer)
            for index, event in enumerate(events):
                try:
                    self._answer(group.fd, event)
                except BaseException:
                    # The group is about to close, which allows these; their descriptors are ours.
                    for left in events[index + 1 :]:
                        os.close(left.fd)
                    raise
            if error is not None:
                raise error

    def _answer(self, fd: int, event: permission.PermissionEvent) -> None:
        """Judge one exec, answer it (allow on any error), then report a denial."""
        moment = time.time()
        blocked: str | None = None
        try:
            blocked = self._judge(event)
        except Exception:
            self._count("errors")
            log.warning("exec guard could not judge an exec by pid %d; it was allowed", event.pid)
            log.debug("exec guard judging failure", exc_info=True)
        process: dict[str, Any] = {"pid": event.pid}
        if blocked is not None:
            # Read while the process waits: once refused, it may exit at once.
            try:
                process = self._process_fields(event.pid, read_start_ticks(event.pid))
            except Exception:
                log.debug("exec guard could not describe pid %d", event.pid, exc_info=True)
        self._count("denied" if blocked is not None else "allowed")
        try:
            permission.respond(fd, event.fd, allow=blocked is None)
        except OSError as exc:
            os.close(event.fd)
            self._count("errors")
            if exc.errno == errno.ENOENT:  # the waiting process was killed: nothing waits
                return
            raise
        try:
            if blocked is not None:
                self._report(event, blocked, moment, process)
        except Exception:
            self._count("errors")
            log.warning("exec guard could not report the blocked exec by pid %d", event.pid)
            log.debug("exec guard report failure", exc_info=True)
        finally:
            os.close(event.fd)

    def _judge(self, event: permission.PermissionEvent) -> str | None:
        """The blocked hash of the file being executed, or None to allow it."""
        hashes = self._hashes
        if not hashes or not event.mask & permission.FAN_OPEN_EXEC_PERM:
            return None
        digest, why = self._hasher.digest(event.fd, self.scope.hash_timeout_seconds)
        if digest is None:
            self._count(f"unhashed_{why}")
            return None
        return digest if digest in hashes else None

    def _report(
        self,
        event: permission.PermissionEvent,
        digest: str,
        moment: float,
        process: dict[str, Any],
    ) -> None:
        path = os.readlink(f"/proc/self/fd/{event.fd}")
        directory, name = os.path.split(path)
        entry = self._entries.get(digest, {})
        self._sequence += 1
        doc = event_base(
            self.context,
            moment,
            "denied",
            "exec_blocked",
            f"exec_blocked:{self._run_id}:{self._sequence}",
        )
        doc["event"]["category"] = ["process", "file"]
        doc["event"]["outcome"] = "failure"
        reason = entry.get("reason") or ""
        doc["event"]["reason"] = "sha256 on the exec block list" + (f": {reason}" if reason else "")
        doc["file"] = {
            "path": _text(path),
            "name": _text(name),
            "directory": _text(directory),
            "type": "file",
            "hash": {"sha256": digest},
        }
        doc["process"] = process
        self.context.emit(doc)

    def _process_fields(self, pid: int, ticks: int | None) -> dict[str, Any]:
        """The process that tried the exec, as it was before it (its exec failed)."""
        fields: dict[str, Any] = {"pid": pid}
        table: ProcessTable | None = self.context.processes
        instance: ProcessInstance | None = None
        if table is not None:
            instance = table.resolve(pid, ticks)
        elif ticks is not None:
            instance = self._proc.from_proc(pid)
            if instance is None or instance.start_ticks != ticks:
                instance = ProcessInstance(pid, ticks, self._proc.entity_id(pid, ticks))
        if instance is None:
            return fields
        fields["entity_id"] = instance.entity_id
        for key in ("executable", "name", "command_line"):
            value = getattr(instance, key)
            if value is not None:
                fields[key] = value
        return fields
