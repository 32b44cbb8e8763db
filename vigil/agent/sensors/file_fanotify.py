"""File creation, modification, deletion, rename, attribute change and exec from fanotify.

One notification group (``FAN_CLASS_NOTIF | FAN_REPORT_DFID_NAME | FAN_UNLIMITED_QUEUE``,
never a permission class) carries ``FAN_MARK_FILESYSTEM`` marks on every filesystem holding a
watched or included path. Events name a directory by file handle plus an entry name; the reader
thread resolves the directory to a path (cached), applies the include and exclude lists and the
agent's own pid filter, reads the process's start ticks while it still runs, and queues what is
left. A second thread attributes the process, hashes small written files and emits ECS
documents. The kernel queue is unlimited so nothing is lost in a burst; memory stays bounded
because the reader only does cheap work, and the user-space queue between the threads is capped
(what does not fit is counted as ``dropped``).

Options (``SensorContext.options``):
    file_include: path prefixes to report (default ``["/"]``).
    file_exclude: path prefixes never reported, added to ``/proc``, ``/sys`` and the agent's
        state directory (its spool would otherwise record its own writes).
    file_watch: paths whose filesystems are marked (default ``["/"]``); the filesystems of the
        include prefixes are always marked too.
    file_hash: SHA-256 of written files on close (default ``True``); skipped for files larger
        than ``file_hash_max_bytes`` (default 10 MiB) and while the emit queue is backed up.
    file_queue_size: events waiting between the reader and the emitter (default 65536).
    file_dir_cache: directory paths remembered (default 16384).
    file_loader_exec: report the dynamic loader's exec opens (default ``False``). The kernel
        opens the ELF interpreter (``ld-linux*.so``) for exec at every dynamic exec; those
        events name the same file each time and say nothing the exec of the program itself
        does not, yet they were a third of the events of an exec burst. Running the loader
        as a program (``ld.so ./x``) is still an exec of the loader, recorded by
        ``process_audit`` with its argv.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import logging
import os
import queue
import select
import stat
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from vigil.agent.errors import AgentError, NotApplicable
from vigil.agent.fanotify import api, paths, records
from vigil.agent.fanotify.records import DirEntry, RawEvent
from vigil.agent.processes import ProcessInstance, ProcessTable, event_base, read_start_ticks
from vigil.agent.sensors.base import Sensor, SensorContext

log = logging.getLogger(__name__)

INIT_FLAGS = api.FAN_REPORT_DFID_NAME | api.FAN_UNLIMITED_QUEUE | api.FAN_NONBLOCK
BASE_MASK = (
    api.FAN_CREATE
    | api.FAN_CLOSE_WRITE
    | api.FAN_DELETE
    | api.FAN_ATTRIB
    | api.FAN_OPEN_EXEC
    | api.FAN_ONDIR
)
RENAME_MASK = api.FAN_RENAME
MOVE_MASK = api.FAN_MOVED_FROM | api.FAN_MOVED_TO
DEFAULT_EXCLUDE = ("/proc", "/sys")
DEFAULT_HASH_MAX = 10 * 1024 * 1024
HASH_BACKLOG = 1024
READ_SIZE = 256 * 1024
POLL_MS = 200

# (mask bit, event.type, event.action) in the order merged events are reported.
ACTIONS = (
    (api.FAN_CREATE, "creation", "creation"),
    (api.FAN_CLOSE_WRITE, "change", "modification"),
    (api.FAN_ATTRIB, "change", "attributes_modified"),
    (api.FAN_OPEN_EXEC, "access", "execution"),
    (api.FAN_DELETE, "deletion", "deletion"),
)


@dataclass(frozen=True, slots=True)
class _Pending:
    """An event that passed the filters, with what had to be read while it was fresh."""

    moment: float
    mask: int
    pid: int
    start_ticks: int | None
    path: str
    original: str | None = None


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    for prefix in prefixes:
        if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
            return True
    return False


def _path_list(options: dict[str, Any], name: str, default: list[str]) -> list[str]:
    value = options.get(name, default)
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise AgentError(f"file_fanotify option {name} must be a list of absolute paths")
    for item in value:
        if not isinstance(item, str) or not item.startswith("/"):
            raise AgentError(
                f"file_fanotify option {name} has {item!r}: use absolute paths such as '/home'"
            )
    return [os.path.realpath(item) for item in value]


def _int_option(options: dict[str, Any], name: str, default: int) -> int:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AgentError(
            f"file_fanotify option {name}={value!r} is invalid: use a positive integer "
            f"(default {default})"
        )
    return value


def _text(path: str) -> str:
    """``path`` fit for JSON: undecodable bytes become backslash escapes."""
    if path.isascii():
        return path
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


LOADER_PATTERNS = (
    "/lib/ld-linux*.so*",
    "/lib64/ld-linux*.so*",
    "/lib/*-linux-gnu*/ld-linux*.so*",
    "/usr/lib/ld-linux*.so*",
    "/usr/lib64/ld-linux*.so*",
    "/usr/lib/*-linux-gnu*/ld-linux*.so*",
    "/lib/ld-musl-*.so.1",
)


def dynamic_loaders() -> frozenset[str]:
    """The real paths of this host's ELF interpreters, as fanotify names them."""
    return frozenset(
        os.path.realpath(found) for pattern in LOADER_PATTERNS for found in glob.glob(pattern)
    )


def _join(directory: str, name: str) -> str:
    if name in ("", "."):
        return directory
    return directory.rstrip("/") + "/" + name


class _FileHasher:
    """SHA-256 of regular files up to a size, cached by ``(device, inode, mtime, size)``."""

    def __init__(self, size_limit: int, cache_size: int = 4096) -> None:
        self.size_limit = size_limit
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[int, int, int, int], str] = OrderedDict()

    def sha256(self, path: str) -> str | None:
        """The hex digest of ``path``; ``None`` if unreadable, too large or not a regular file."""
        try:
            # O_NONBLOCK: a FIFO swapped in at this path must not block the emit thread.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > self.size_limit:
                return None
            key = (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)
            digest = self._cache.get(key)
            if digest is None:
                hasher = hashlib.sha256()
                while block := os.read(fd, 1 << 20):
                    hasher.update(block)
                digest = hasher.hexdigest()
                self._cache[key] = digest
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            return digest
        except OSError:
            log.debug("cannot hash %s", path, exc_info=True)
            return None
        finally:
            os.close(fd)


class FileFanotifySensor(Sensor):
    """Emits ``file`` events (creation, modification, deletion, rename, attributes, exec).

    Each document carries ``file.path``, ``file.name``, ``file.directory``,
    ``file.extension``, for renames ``file.Ext.original.path``, for closed-after-write files
    ``file.hash.sha256`` when small, and the acting process (pid from fanotify; entity id,
    executable, name and command line from the shared process table or ``/proc``).

    Attributes:
        own_pid: Events of this thread group are ignored; it is the agent's own pid, so the
            agent's writes (its spool above all) cannot feed back into itself.
        marked: The mounts whose filesystems carry a mark while running.
    """

    name = "file_fanotify"
    shed_order = 30
    supported_os = ("linux",)
    requires_root = True
    version = "1"

    def __init__(self, context: SensorContext) -> None:
        super().__init__(context)
        self._fd = -1
        self._resolver = paths.PathResolver()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._include: tuple[str, ...] = ("/",)
        self._exclude: tuple[str, ...] = DEFAULT_EXCLUDE
        self._hasher: _FileHasher | None = None
        self._quiet_execs: frozenset[str] = frozenset()
        self._moves = False
        self._move_from: tuple[int, str | None, int] | None = None
        self.own_pid = os.getpid()
        self._run_id = ""
        self._sequence = 0
        # Reads /proc when no shared table exists; nothing is stored in it.
        self._proc = ProcessTable(context.agent_id)
        self.marked: list[paths.Mount] = []

    def check_compatible(self) -> None:
        """Raise NotApplicable off Linux, without root, or without fanotify name reporting."""
        if not sys.platform.startswith("linux"):
            raise NotApplicable(f"file_fanotify needs Linux (this is {sys.platform})")
        if os.geteuid() != 0:
            raise NotApplicable(
                "file_fanotify needs root (CAP_SYS_ADMIN) for filesystem-wide fanotify marks; "
                "run the agent as root"
            )
        try:
            fd = api.init(INIT_FLAGS)
        except OSError as exc:
            raise NotApplicable(
                f"fanotify with directory file handles and names is unavailable ({exc}): it "
                "needs Linux 5.9 or later built with CONFIG_FANOTIFY"
            ) from None
        os.close(fd)

    def start(self) -> None:
        """Open the fanotify group, mark the filesystems and start the reader and emit threads.

        Raises:
            AgentError: An option is invalid, a path is on a pseudo filesystem, or the kernel
                refused the group or a mark; nothing stays open.
        """
        try:
            self._configure()
        except Exception as exc:
            self._close()
            message = str(exc) if isinstance(exc, AgentError) else f"file_fanotify: {exc}"
            self.set_state("failed", message)
            if isinstance(exc, AgentError):
                raise
            raise AgentError(message) from exc
        for counter in (
            "events",
            "filtered",
            "dropped",
            "overflow",
            "errors",
            "unresolved",
            "loader_exec",
        ):
            self.count(counter, 0)
        self._stop.clear()
        self._run_id = f"{time.time_ns()}"
        self._threads = [
            threading.Thread(target=self._read_loop, name="vigil-file-read", daemon=True),
            threading.Thread(target=self._emit_loop, name="vigil-file-emit", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        where = ", ".join(f"{m.mount_point} ({m.fstype})" for m in self.marked)
        renames = "MOVED_FROM/MOVED_TO pairs" if self._moves else "FAN_RENAME"
        self.set_state("running", f"fanotify filesystem marks on {where}; renames from {renames}")
        log.info("file_fanotify running: marks on %s, renames from %s", where, renames)

    def _configure(self) -> None:
        options = self.context.options
        include = _path_list(options, "file_include", ["/"])
        exclude = _path_list(options, "file_exclude", [])
        watch = _path_list(options, "file_watch", ["/"])
        hash_max = _int_option(options, "file_hash_max_bytes", DEFAULT_HASH_MAX)
        queue_size = _int_option(options, "file_queue_size", 65536)
        self._resolver = paths.PathResolver(_int_option(options, "file_dir_cache", 16384))
        hashing = options.get("file_hash", True)
        if not isinstance(hashing, bool):
            raise AgentError(f"file_fanotify option file_hash={hashing!r} must be true or false")
        self._hasher = _FileHasher(hash_max) if hashing else None
        loader_exec = options.get("file_loader_exec", False)
        if not isinstance(loader_exec, bool):
            raise AgentError(
                f"file_fanotify option file_loader_exec={loader_exec!r} must be true or false"
            )
        self._quiet_execs = frozenset() if loader_exec else dynamic_loaders()
        self._queue = queue.Queue(queue_size)
        self._include = tuple(include)
        state_dir = os.path.realpath(self.context.state_dir)
        self._exclude = (*DEFAULT_EXCLUDE, state_dir, *exclude)

        mounts = paths.read_mounts()
        chosen: dict[int, paths.Mount] = {}
        for path in [*watch, *include]:
            try:
                mount = paths.mount_of(path, mounts)
            except (OSError, LookupError) as exc:
                raise AgentError(
                    f"file_fanotify cannot find the filesystem of {path}: {exc}"
                ) from exc
            if mount.fstype in paths.PSEUDO_FILESYSTEMS:
                raise AgentError(
                    f"file_fanotify cannot watch {path}: it is on {mount.fstype}, a pseudo "
                    "filesystem; remove it from file_include and file_watch"
                )
            chosen.setdefault(mount.device, mount)

        try:
            self._fd = api.init(INIT_FLAGS)
        except OSError as exc:
            raise AgentError(
                f"file_fanotify could not create a fanotify group: {exc}; check that the agent "
                "runs as root on Linux 5.9 or later"
            ) from exc
        self.marked = []
        self._moves = False
        for mount in chosen.values():
            self._mark(mount)
            self._resolver.add_filesystem(mount.mount_point)
            self.marked.append(mount)

    def _mark(self, mount: paths.Mount) -> None:
        rename = MOVE_MASK if self._moves else RENAME_MASK
        try:
            api.mark_filesystem(self._fd, BASE_MASK | rename, mount.mount_point)
            return
        except OSError as exc:
            failure = exc
        if not self._moves and not self.marked and failure.errno == errno.EINVAL:
            # FAN_RENAME arrived in Linux 5.17; before it, renames come as two events.
            log.info("fanotify has no FAN_RENAME here: pairing MOVED_FROM with MOVED_TO")
            self._moves = True
            try:
                api.mark_filesystem(self._fd, BASE_MASK | MOVE_MASK, mount.mount_point)
                return
            except OSError as exc:
                failure = exc
        hint = (
            "the filesystem cannot report file handles; remove it from file_include/file_watch"
            if api.is_unsupported(failure)
            else "check that the agent runs as root"
        )
        raise AgentError(
            f"file_fanotify could not mark the {mount.fstype} filesystem at "
            f"{mount.mount_point}: {failure}; {hint}"
        ) from failure

    def stop(self) -> None:
        """Stop both threads, emit what was queued and close the group (removing its marks)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = []
        self._close()
        self.set_state("stopped")

    def _close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        self._resolver.close()

    def _read_loop(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        try:
            while not self._stop.is_set():
                if poller.poll(POLL_MS):
                    self._drain()
        except Exception:
            self.count("errors")
            log.exception("file_fanotify reader failed; file events stop until restart")
            self.set_state("failed", "the fanotify reader thread failed; see the agent log")
            # Nobody reads the unlimited kernel queue any more: close the group so it is freed.
            self._close()
        finally:
            self._queue.put(None)

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                buffer = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                return
            moment = time.time()
            ticks: dict[int, int | None] = {}
            for raw in records.parse(buffer):
                try:
                    self._triage(raw, moment, ticks)
                except Exception:
                    self.count("errors")
                    log.warning("file_fanotify could not handle an event (mask %#x)", raw.mask)
                    log.debug("file_fanotify event failure", exc_info=True)

    def _path(self, entry: DirEntry | None) -> str | None:
        if entry is None:
            return None
        directory = self._resolver.directory(entry.fsid, entry.handle)
        return None if directory is None else _join(directory, entry.name)

    def _wanted(self, path: str | None) -> bool:
        return path is not None and _under(path, self._include) and not _under(path, self._exclude)

    def _triage(self, raw: RawEvent, moment: float, ticks: dict[int, int | None]) -> None:
        """Resolve, filter and queue one event: everything cheap enough to do while reading."""
        mask = raw.mask
        if mask & api.FAN_Q_OVERFLOW:
            self.count("overflow")
            log.warning("fanotify queue overflowed: file events were lost")
            return
        is_dir = bool(mask & api.FAN_ONDIR)
        if self._moves:
            self._pair_move(raw, moment, ticks)
            if mask & MOVE_MASK:
                return
        original = None
        if mask & api.FAN_RENAME:
            original, path = self._path(raw.old), self._path(raw.new)
            if is_dir and original is not None:
                self._resolver.forget_tree(original)
        else:
            path = self._path(raw.entry)
            if is_dir and mask & api.FAN_DELETE and path is not None:
                self._resolver.forget(path)
            if mask == api.FAN_OPEN_EXEC and path in self._quiet_execs:
                self.count("loader_exec")
                return
        self._queue_event(raw, moment, ticks, path, original)

    def _pair_move(self, raw: RawEvent, moment: float, ticks: dict[int, int | None]) -> None:
        """Join a MOVED_FROM with the MOVED_TO after it (kernels without FAN_RENAME)."""
        pending, self._move_from = self._move_from, None
        if raw.mask & api.FAN_MOVED_TO and pending is not None and pending[0] == raw.pid:
            merged = RawEvent(api.FAN_RENAME | pending[2], raw.pid)
            self._queue_event(merged, moment, ticks, self._path(raw.entry), pending[1])
        elif pending is not None or raw.mask & api.FAN_MOVED_TO:
            self.count("unresolved")
        if raw.mask & api.FAN_MOVED_FROM:
            original = self._path(raw.entry)
            if raw.mask & api.FAN_ONDIR and original is not None:
                self._resolver.forget_tree(original)
            self._move_from = (raw.pid, original, raw.mask & api.FAN_ONDIR)

    def _queue_event(
        self,
        raw: RawEvent,
        moment: float,
        ticks: dict[int, int | None],
        path: str | None,
        original: str | None,
    ) -> None:
        if raw.pid == self.own_pid:
            self.count("filtered")
            return
        if path is None:
            # The directory went away before the event was read (and was not cached).
            self.count("unresolved")
            return
        if not (self._wanted(path) or self._wanted(original)):
            self.count("filtered")
            return
        if raw.pid not in ticks:
            ticks[raw.pid] = read_start_ticks(raw.pid)
        pending = _Pending(moment, raw.mask, raw.pid, ticks[raw.pid], path, original)
        try:
            self._queue.put_nowait(pending)
        except queue.Full:
            self.count("dropped")

    def _emit_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                for doc in self._documents(item):
                    self.context.emit(doc)
                    self.count("events")
            except Exception:
                self.count("errors")
                log.warning("file_fanotify could not emit an event for %s", item.path)
                log.debug("file_fanotify emit failure", exc_info=True)

    def _documents(self, item: _Pending) -> list[dict[str, Any]]:
        process = self._process_fields(item.pid, item.start_ticks)
        is_dir = bool(item.mask & api.FAN_ONDIR)
        if item.mask & api.FAN_RENAME:
            kinds = [("change", "rename")]
        else:
            kinds = [(kind, action) for bit, kind, action in ACTIONS if item.mask & bit]
        docs = []
        for kind, action in kinds:
            self._sequence += 1
            doc = event_base(
                self.context, item.moment, kind, action, f"file:{self._run_id}:{self._sequence}"
            )
            doc["event"]["category"] = ["file"]
            doc["file"] = self._file_fields(item, is_dir, action)
            doc["process"] = process
            docs.append(doc)
        return docs

    def _file_fields(self, item: _Pending, is_dir: bool, action: str) -> dict[str, Any]:
        directory, name = os.path.split(item.path)
        fields: dict[str, Any] = {
            "path": _text(item.path),
            "name": _text(name),
            "directory": _text(directory),
            "type": "dir" if is_dir else "file",
        }
        extension = os.path.splitext(name)[1][1:]
        if extension and not is_dir:
            fields["extension"] = _text(extension)
        if item.original is not None:
            fields["Ext"] = {"original": {"path": _text(item.original)}}
        if (
            action == "modification"
            and self._hasher is not None
            and self._queue.qsize() < HASH_BACKLOG
        ):
            digest = self._hasher.sha256(item.path)
            if digest is not None:
                fields["hash"] = {"sha256": digest}
        return fields

    def _process_fields(self, pid: int, start_ticks: int | None) -> dict[str, Any]:
        fields: dict[str, Any] = {"pid": pid}
        table: ProcessTable | None = self.context.processes
        instance: ProcessInstance | None
        if table is not None:
            instance = table.resolve(pid, start_ticks)
        elif start_ticks is None:
            instance = None
        else:
            # No shared table: read /proc now, and keep only the identity if the pid moved on.
            instance = self._proc.from_proc(pid)
            if instance is None or instance.start_ticks != start_ticks:
                instance = ProcessInstance(pid, start_ticks, self._proc.entity_id(pid, start_ticks))
        return fields if instance is None else self._with_instance(fields, instance)

    @staticmethod
    def _with_instance(fields: dict[str, Any], instance: ProcessInstance) -> dict[str, Any]:
        fields["entity_id"] = instance.entity_id
        for key in ("executable", "name", "command_line"):
            value = getattr(instance, key)
            if value is not None:
                fields[key] = value
        return fields
