"""Collect a triage bundle: one tar.gz of what an analyst looks at first, sent as evidence.

The bundle is built in the agent's state folder and uploaded through the same path as
``collect`` (chunks, sha256 checked by the server, size cap, chain of custody), then deleted.
Contents, most volatile first (RFC 3227):

- ``live/processes.json``, ``live/sockets.json``: the process and socket tables (psutil);
- ``telemetry/recent.jsonl``: the newest events the agent spooled, kept in its memory;
  ``telemetry/unsent.jsonl``: events still in the spool, not yet acknowledged by the server;
- ``files/<host path>``: ``/etc/passwd`` and ``/etc/group`` (never ``/etc/shadow``); every
  user's shell and tool histories, ``authorized_keys`` and user systemd units (homes from
  ``/etc/passwd``, ``/root`` and ``/home/*``); crontabs; systemd units; and the regular files
  changed in ``/tmp``, ``/var/tmp`` and ``/dev/shm`` within ``since_minutes``, each up to
  ``per_file_max_bytes``;
- ``recent/recent_files.json``: type, size, mode, owner and times of everything changed there;
- ``manifest.json``: every member with its source, size and sha256, the symbolic links met
  (never followed) and what was skipped and why (see ``triage_archive``).

Files are read as ``triage_fs`` describes: no link is followed, only regular files are opened,
nothing blocks on a FIFO or device. An item that cannot be read is skipped and listed; the
bundle goes on. Reference: crontab(5), systemd.unit(5) (unit search paths), passwd(5).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sqlite3
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from vigil.agent import spool
from vigil.agent.respond import triage_live
from vigil.agent.respond.base import Action, ActionContext
from vigil.agent.respond.collect import MAX_BYTES, max_bytes, server_link, upload_evidence
from vigil.agent.respond.errors import ResponseError
from vigil.agent.respond.triage_archive import Bundle
from vigil.agent.respond.triage_fs import Tree, Unavailable, kind_of
from vigil.schema.ecs import iso_epoch, utc_now_iso

log = logging.getLogger(__name__)

NAME = "collect_triage"
WORK_FOLDER = "triage"
DEFAULT_PER_FILE_BYTES = 10 * 1024 * 1024
DEFAULT_SINCE_MINUTES = 24 * 60
MAX_SINCE_MINUTES = 366 * 24 * 60
DEFAULT_MAX_EVENTS = 1000
MAX_EVENTS = 100_000
DEFAULT_TIMEOUT_SECONDS = 300
MAX_TIMEOUT_SECONDS = 3600
# Entries looked at in one place before the walk stops (and says so in the manifest).
MAX_WALK_ENTRIES = 100_000
MAX_RECENT_ROWS = 10_000
MAX_DEPTH = 16
# /etc/passwd is parsed for home folders only up to this size.
MAX_PASSWD_BYTES = 4 * 1024 * 1024

ACCOUNT_FILES = ("/etc/passwd", "/etc/group")
HISTORY_FILES = (
    ".bash_history",
    ".zsh_history",
    ".zhistory",
    ".histfile",
    ".sh_history",
    ".ash_history",
    ".history",
    ".local/share/fish/fish_history",
    ".python_history",
    ".node_repl_history",
    ".mysql_history",
    ".psql_history",
    ".sqlite_history",
    ".rediscli_history",
    ".lesshst",
    ".viminfo",
)
KEY_FILES = (".ssh/authorized_keys", ".ssh/authorized_keys2")
USER_UNIT_FOLDER = ".config/systemd/user"
CRON_FILES = ("/etc/crontab", "/etc/anacrontab", "/etc/cron.allow", "/etc/cron.deny")
CRON_FOLDERS = (
    "/etc/cron.d",
    "/etc/cron.hourly",
    "/etc/cron.daily",
    "/etc/cron.weekly",
    "/etc/cron.monthly",
    "/var/spool/cron",
)
# Where administrators, packages' local installs and running units put unit files.
UNIT_FOLDERS = (
    "/etc/systemd/system",
    "/etc/systemd/user",
    "/run/systemd/system",
    "/run/systemd/transient",
    "/usr/local/lib/systemd/system",
)
# Units installed by packages: many and rarely changed, so they come last.
VENDOR_UNIT_FOLDERS = ("/usr/lib/systemd/system", "/lib/systemd/system")
RECENT_FOLDERS = ("/tmp", "/var/tmp", "/dev/shm")


def _integer(params: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = params.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ResponseError(
            f"{NAME}: {key!r} must be an integer from {low} to {high}, got {value!r}; "
            "nothing was collected"
        )
    return value


@dataclass(frozen=True)
class TriageOptions:
    """The checked parameters of one ``collect_triage`` task."""

    max_bytes: int = MAX_BYTES
    per_file_max_bytes: int = DEFAULT_PER_FILE_BYTES
    since_minutes: int = DEFAULT_SINCE_MINUTES
    max_events: int = DEFAULT_MAX_EVENTS
    hash_executables: bool = False
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TriageOptions:
        """Check a task's parameters; unknown names are refused so a typo is not ignored.

        Raises:
            ResponseError: a parameter is unknown, of the wrong type or out of range.
        """
        known = {f for f in cls.__dataclass_fields__} | {"task_id"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ResponseError(
                f"{NAME}: unknown parameter {unknown[0]!r}; known: "
                f"{', '.join(sorted(known - {'task_id'}))}; nothing was collected"
            )
        cap = max_bytes(params, NAME)
        per_file = _integer(
            params, "per_file_max_bytes", min(DEFAULT_PER_FILE_BYTES, cap), 0, MAX_BYTES
        )
        if per_file > cap:
            raise ResponseError(
                f"{NAME}: 'per_file_max_bytes' {per_file} is over 'max_bytes' {cap}; lower it "
                "or raise 'max_bytes'; nothing was collected"
            )
        hash_executables = params.get("hash_executables", False)
        if not isinstance(hash_executables, bool):
            raise ResponseError(
                f"{NAME}: 'hash_executables' must be true or false, got {hash_executables!r}"
            )
        return cls(
            max_bytes=cap,
            per_file_max_bytes=per_file,
            since_minutes=_integer(
                params, "since_minutes", DEFAULT_SINCE_MINUTES, 1, MAX_SINCE_MINUTES
            ),
            max_events=_integer(params, "max_events", DEFAULT_MAX_EVENTS, 0, MAX_EVENTS),
            hash_executables=hash_executables,
            timeout_seconds=_integer(
                params, "timeout_seconds", DEFAULT_TIMEOUT_SECONDS, 1, MAX_TIMEOUT_SECONDS
            ),
        )


class _OutOfTime(Exception):
    """The bundle's time limit passed; the current source stops."""


class _Collector:
    """Gathers the sources into one bundle, recording every link and skip on the way."""

    def __init__(
        self,
        bundle: Bundle,
        tree: Tree,
        options: TriageOptions,
        work_dir: Path,
        skip_dirs: frozenset[tuple[int, int]],
        now: float,
    ) -> None:
        self.bundle = bundle
        self.tree = tree
        self.options = options
        self.work_dir = work_dir
        self.skip_dirs = skip_dirs
        self.since = now - options.since_minutes * 60
        self.deadline = time.monotonic() + options.timeout_seconds

    def _check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise _OutOfTime

    def generated(self, name: str, data: bytes, source: str, category: str, rows: int) -> None:
        """Add content the agent made (a table, a list of events) as member ``name``."""
        self._check_time()
        record = {
            "source": source,
            "category": category,
            "sha256": _sha256(data),
            "rows": rows,
        }
        if not self.bundle.add_bytes(name, data, record):
            self.bundle.skip(
                source, category, "over_total_cap", f"{name}: {len(data)} bytes do not fit"
            )

    def file(
        self,
        host_path: str,
        category: str,
        listed: os.stat_result | None = None,
        keep: int = 0,
    ) -> bytes | None:
        """Add the regular file at ``host_path`` as ``files/<host_path>``; skip and say why.

        A file that does not exist and was not ``listed`` by a walk is passed over silently.
        Returns the content when it is at most ``keep`` bytes (to parse it), else None.
        """
        self._check_time()
        name = "files/" + host_path.lstrip("/")
        if self.bundle.has(name):
            return None
        cap = self.options.per_file_max_bytes
        try:
            info = listed if listed is not None else self.tree.lstat(host_path)
            if stat.S_ISLNK(info.st_mode):
                self.bundle.link(host_path, self.tree.readlink(host_path), category)
                return None
            if stat.S_ISREG(info.st_mode) and info.st_size <= cap:
                if not self.bundle.fits(info.st_size):
                    raise Unavailable(
                        "over_total_cap", f"{host_path}: {info.st_size} bytes do not fit"
                    )
            copy, size, digest, opened = self.tree.read(
                host_path, cap, str(self.work_dir), expected=info
            )
        except Unavailable as problem:
            if problem.reason != "missing" or listed is not None:
                self.bundle.skip(host_path, category, problem.reason, problem.detail)
            return None
        with copy:
            record = {
                "source": host_path,
                "category": category,
                "sha256": digest,
                "mode": oct(stat.S_IMODE(opened.st_mode)),
                "uid": opened.st_uid,
                "gid": opened.st_gid,
                "mtime": iso_epoch(opened.st_mtime),
                "ctime": iso_epoch(opened.st_ctime),
            }
            if not self.bundle.add(name, copy, size, record, opened.st_mtime):
                self.bundle.skip(
                    host_path, category, "over_total_cap", f"{host_path}: {size} bytes do not fit"
                )
                return None
            if size > keep:
                return None
            copy.seek(0)
            return copy.read()

    def folder(self, host_path: str, category: str, depth: int = MAX_DEPTH) -> None:
        """Add every regular file below the folder ``host_path`` (links listed, not followed)."""
        for path, info in self._walk(host_path, category, depth):
            if stat.S_ISDIR(info.st_mode):
                continue
            if stat.S_ISLNK(info.st_mode):
                self.bundle.link(path, self.tree.readlink(path), category)
            else:
                self.file(path, category, listed=info)

    def _walk(self, host_path: str, category: str, depth: int) -> list[tuple[str, os.stat_result]]:
        """The entries below ``host_path``, problems recorded; a missing folder gives none."""
        try:
            walk = self.tree.walk(host_path, depth, self.skip_dirs)
        except Unavailable as problem:
            if problem.reason != "missing":
                self.bundle.skip(host_path, category, problem.reason, problem.detail)
            return []
        found: list[tuple[str, os.stat_result]] = []
        try:
            for path, info in walk:
                self._check_time()
                if isinstance(info, Unavailable):
                    self.bundle.skip(path, category, info.reason, info.detail)
                    continue
                if len(found) >= MAX_WALK_ENTRIES:
                    self.bundle.skip(
                        host_path,
                        category,
                        "limit",
                        f"{host_path}: stopped after {MAX_WALK_ENTRIES} entries",
                    )
                    break
                found.append((path, info))
        finally:
            walk.close()  # releases the folders still open
        return found

    def homes(self, passwd: bytes | None) -> list[str]:
        """Home folders: those in ``/etc/passwd``, ``/root`` and each folder in ``/home``.

        A home that is a link is listed as one and left out; so is one that is not a folder.
        """
        candidates = {"/root"}
        for line in (passwd or b"").decode("utf-8", "surrogateescape").splitlines():
            fields = line.split(":")
            if len(fields) >= 7 and fields[5].startswith("/") and not line.startswith("#"):
                candidates.add(os.path.normpath(fields[5]))
        candidates.update(path for path, _info in self._walk("/home", "homes", 1))
        homes = []
        for home in sorted(candidates):
            try:
                info = self.tree.lstat(home)
            except Unavailable as problem:
                if problem.reason != "missing":
                    self.bundle.skip(home, "homes", problem.reason, problem.detail)
                continue
            if stat.S_ISLNK(info.st_mode):
                self.bundle.link(home, self.tree.readlink(home), "homes")
            elif stat.S_ISDIR(info.st_mode):
                homes.append(home)
        return homes

    def recent(self) -> tuple[list[dict[str, Any]], list[tuple[str, os.stat_result]]]:
        """Entries changed (mtime or ctime) since the window began, newest first.

        Returns the metadata rows, and the regular files among them to collect.
        """
        rows: list[dict[str, Any]] = []
        files: list[tuple[str, os.stat_result]] = []
        changed = []
        for place in RECENT_FOLDERS:
            for path, info in self._walk(place, "recent_files", MAX_DEPTH):
                if max(info.st_mtime, info.st_ctime) >= self.since:
                    changed.append((path, info))
        changed.sort(key=lambda item: max(item[1].st_mtime, item[1].st_ctime), reverse=True)
        if len(changed) > MAX_RECENT_ROWS:
            self.bundle.skip(
                ", ".join(RECENT_FOLDERS),
                "recent_files",
                "limit",
                f"{len(changed)} changed entries; only the newest {MAX_RECENT_ROWS} are listed",
            )
        for path, info in changed[:MAX_RECENT_ROWS]:
            kind = kind_of(info.st_mode)
            target = self.tree.readlink(path) if kind == "symlink" else None
            if target is not None:
                self.bundle.link(path, target, "recent_files")
            rows.append(
                {
                    "path": path,
                    "type": kind,
                    "size": info.st_size,
                    "mode": oct(stat.S_IMODE(info.st_mode)),
                    "uid": info.st_uid,
                    "gid": info.st_gid,
                    "inode": info.st_ino,
                    "links": info.st_nlink,
                    "mtime": iso_epoch(info.st_mtime),
                    "ctime": iso_epoch(info.st_ctime),
                    "atime": iso_epoch(info.st_atime),
                    "link_target": target,
                }
            )
            if kind == "file":
                files.append((path, info))
        return rows, files


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json(rows: Any) -> bytes:
    return json.dumps(rows, indent=1, ensure_ascii=False, default=str).encode(
        "utf-8", "surrogateescape"
    )


def _jsonl(events: list[dict[str, Any]]) -> bytes:
    lines = (json.dumps(e, ensure_ascii=False, default=str) for e in events)
    return "".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape")


def build_bundle(
    archive: Path,
    options: TriageOptions,
    context: ActionContext,
    root: str = "/",
    now: float | None = None,
) -> dict[str, Any]:
    """Write the triage archive at ``archive``; return its manifest.

    Args:
        archive: The tar.gz to write; its folder also holds temporary copies while they are read.
        options: The checked task parameters.
        context: The agent's context (agent id, state folder, recent events).
        root: Where the host's file system is; tests point it at a tree they made. Processes,
            sockets and telemetry are always the live agent's.
        now: The time the ``since_minutes`` window ends (default: now).
    """
    now = time.time() if now is None else now
    bundle = Bundle(archive, options.max_bytes)
    tree = Tree(root)
    collector = _Collector(bundle, tree, options, archive.parent, _private_folders(context), now)
    try:
        for step, source in _steps(collector, context):
            try:
                step()
            except _OutOfTime:
                bundle.skip(source, source, "timeout", f"{options.timeout_seconds} s passed")
                log.warning("%s: time limit reached at %s", NAME, source)
    except BaseException:
        bundle.abandon()
        raise
    finally:
        tree.close()
    header = {
        "agent_id": context.agent_id,
        "hostname": socket.gethostname(),
        "created_at": utc_now_iso(),
        "root": root,
        "since": iso_epoch(collector.since),
        "params": asdict(options),
        "notes": [
            "processes, sockets and telemetry are the live agent's; files are read below root",
            "telemetry/recent.jsonl is the agent's in-memory copy of the newest events it "
            "spooled (sent or not); telemetry/unsent.jsonl is what the spool still holds, not "
            "yet acknowledged by the server; an event may be in both",
            "links are listed, never followed; member modes are 0600, original modes are in "
            "the entries",
        ],
    }
    return bundle.finish(header)


def _private_folders(context: ActionContext) -> frozenset[tuple[int, int]]:
    """(device, inode) of the folders never collected: the agent's state, the private paths."""
    found = set()
    for folder in (context.state_dir, *context.private_paths):
        try:
            info = os.stat(folder)
        except OSError:
            continue  # not there (yet): nothing in it to leak
        found.add((info.st_dev, info.st_ino))
    return frozenset(found)


def _steps(collector: _Collector, context: ActionContext) -> list[tuple[Callable[[], None], str]]:
    """The sources in the order they are collected, each a callable and its name."""
    options = collector.options
    state: dict[str, Any] = {}

    def live() -> None:
        rows = triage_live.processes(context.agent_id, options.hash_executables)
        collector.generated("live/processes.json", _json(rows), "psutil", "processes", len(rows))
        try:
            conns = triage_live.sockets(context.agent_id)
        except psutil.AccessDenied:
            collector.bundle.skip(
                "psutil", "sockets", "unreadable", "socket tables: not allowed, run as root"
            )
            return
        collector.generated("live/sockets.json", _json(conns), "psutil", "sockets", len(conns))

    def telemetry() -> None:
        if context.recent_events is None:
            collector.bundle.skip(
                "agent memory", "telemetry", "missing", "this agent keeps no recent events"
            )
        else:
            events = triage_live.newest_events(
                context.recent_events(), collector.since, options.max_events
            )
            collector.generated(
                "telemetry/recent.jsonl", _jsonl(events), "agent memory", "telemetry", len(events)
            )
        path = Path(context.state_dir) / spool.FILE_NAME
        if not path.exists():
            collector.bundle.skip(str(path), "telemetry", "missing", f"{path}: no spool here")
            return
        try:
            unsent = spool.newest_unsent(path, options.max_events)
        except (sqlite3.Error, ValueError) as exc:  # locked, missing or damaged: go on
            collector.bundle.skip(str(path), "telemetry", "unreadable", f"{path}: {exc}")
            return
        events = triage_live.newest_events(unsent, collector.since, options.max_events)
        collector.generated(
            "telemetry/unsent.jsonl", _jsonl(events), str(path), "telemetry", len(events)
        )

    def accounts() -> None:
        state["passwd"] = collector.file("/etc/passwd", "accounts", keep=MAX_PASSWD_BYTES)
        for path in ACCOUNT_FILES[1:]:
            collector.file(path, "accounts")
        state["homes"] = collector.homes(state["passwd"])

    def per_user(names: tuple[str, ...], category: str) -> None:
        for home in state.get("homes", ["/root"]):
            for name in names:
                collector.file(os.path.join(home, name), category)

    def cron() -> None:
        for path in CRON_FILES:
            collector.file(path, "cron")
        for folder in CRON_FOLDERS:
            collector.folder(folder, "cron")

    def units() -> None:
        for folder in UNIT_FOLDERS:
            collector.folder(folder, "systemd")
        for home in state.get("homes", ["/root"]):
            collector.folder(os.path.join(home, USER_UNIT_FOLDER), "systemd")

    def recent_list() -> None:
        rows, state["recent"] = collector.recent()
        collector.generated(
            "recent/recent_files.json",
            _json(rows),
            ", ".join(RECENT_FOLDERS),
            "recent_files",
            len(rows),
        )

    def vendor_units() -> None:
        for folder in VENDOR_UNIT_FOLDERS:
            collector.folder(folder, "systemd")

    def recent_files() -> None:
        for path, info in state.get("recent", []):
            collector.file(path, "recent_files", listed=info)

    return [
        (live, "live"),
        (telemetry, "telemetry"),
        (accounts, "accounts"),
        (lambda: per_user(HISTORY_FILES, "history"), "history"),
        (lambda: per_user(KEY_FILES, "ssh"), "ssh"),
        (cron, "cron"),
        (units, "systemd"),
        (recent_list, "recent_files"),
        (vendor_units, "systemd_vendor"),
        (recent_files, "recent_files"),
    ]


class CollectTriageAction(Action):
    """Build a triage bundle (tar.gz with a manifest) and upload it as evidence.

    Params:
        max_bytes: The most the archive may take, manifest included (default and maximum
            100 MiB); what does not fit is skipped and listed.
        per_file_max_bytes: Files larger than this are skipped (default 10 MiB, at most
            ``max_bytes``).
        since_minutes: Files in /tmp, /var/tmp and /dev/shm changed this recently are listed
            and collected, and telemetry this recent is kept (default 1440, one day).
        max_events: The most telemetry events kept from memory and from the spool (default
            1000, 0 for none).
        hash_executables: Add the sha256 of each process's executable (default false).
        timeout_seconds: Stop gathering after this long and send what is there (default 300).
        task_id: The task that asked, recorded in the chain of custody (set by the agent).

    Returns ``{"evidence_id", "sha256", "size", "entries", "bytes", "links", "skipped",
    "skipped_by_reason"}``; ``size`` is the archive's, ``bytes`` the sum of its members'.
    """

    name = NAME
    permission = "response.collect"
    destructive = False
    uploads_evidence = True
    long_running = True

    def __init__(self, context: ActionContext, root: str = "/") -> None:
        """``root`` is where the host's files are read (tests only; tasks cannot set it)."""
        super().__init__(context)
        self.root = root

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """Check the parameters, build the bundle in the state folder, upload it, delete it."""
        options = TriageOptions.from_params(params)
        link = server_link(self.context, NAME)
        work = Path(self.context.state_dir) / WORK_FOLDER
        work.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        archive = work / f"triage-{stamp}-{uuid.uuid4().hex[:8]}.tar.gz"

        try:
            try:
                manifest = build_bundle(archive, options, self.context, self.root)
            except OSError as exc:
                raise ResponseError(
                    f"{NAME}: could not write the bundle in {work}: {exc.strerror or exc}; "
                    "free space there or lower 'max_bytes'; nothing was sent"
                ) from exc
            size = archive.stat().st_size
            if size > options.max_bytes:
                raise ResponseError(
                    f"{NAME}: the archive came out at {size} bytes, over 'max_bytes' "
                    f"{options.max_bytes}; nothing was sent; this is a bug, please report it"
                )
            counts = manifest["counts"]
            metadata = {
                "kind": "triage",
                "format": "tar.gz",
                "manifest_format": manifest["format"],
                "agent_id": self.context.agent_id,
                "hostname": manifest["hostname"],
                "entries": counts["entries"],
                "skipped": counts["skipped"],
            }
            record = upload_evidence(
                link,
                NAME,
                str(archive),
                size,
                options.max_bytes,
                params.get("task_id"),
                metadata,
                source=f"triage:{manifest['hostname']}/{archive.name}",
            )
        finally:
            archive.unlink(missing_ok=True)
        log.info(
            "sent triage bundle as evidence %s (%d bytes, %d entries, %d skipped)",
            record["id"],
            size,
            counts["entries"],
            counts["skipped"],
        )
        return {
            "evidence_id": record["id"],
            "sha256": record["sha256"],
            "size": size,
            "entries": counts["entries"],
            "bytes": counts["bytes"],
            "links": counts["links"],
            "skipped": counts["skipped"],
            "skipped_by_reason": counts["skipped_by_reason"],
        }
