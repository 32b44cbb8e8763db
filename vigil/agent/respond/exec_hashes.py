"""SHA-256 of files being executed, within a time limit, cached by file identity.

The exec guard must answer every permission event quickly, so hashing runs on a worker thread
and the guard waits for it at most a set time. A hash that takes longer is finished in the
background and cached, so the next exec of the same file is judged by it. The cache key is
``(device, inode, mtime, ctime, size)``: ctime cannot be set back by a user, so a file changed
and given its old mtime (``touch -r``) is hashed again.

Files are read through the descriptor fanotify gives with each event (a duplicate of it, so
the guard can close its own as soon as it answered): reading it raises no further events.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import stat
import threading
from collections import OrderedDict
from concurrent.futures import Future

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
BACKLOG = 64
CACHE_SIZE = 8192

FileKey = tuple[int, int, int, int, int]


def sha256_fd(fd: int) -> str:
    """The hex sha256 of the whole file open at ``fd``, read with pread (the offset is kept)."""
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def file_key(info: os.stat_result) -> FileKey:
    """The identity a cached hash is valid for."""
    return (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_ctime_ns, info.st_size)


class ExecHasher:
    """Hashes files on its own thread; callers wait a bounded time for the digest.

    Args:
        max_bytes: Larger files are not hashed.
        cache_size: Most digests remembered.
    """

    def __init__(self, max_bytes: int, cache_size: int = CACHE_SIZE) -> None:
        self.max_bytes = max_bytes
        self.cache_size = cache_size
        self._cache: OrderedDict[FileKey, str] = OrderedDict()
        self._pending: dict[FileKey, Future[str | None]] = {}
        self._jobs: queue.Queue[tuple[FileKey, int, Future[str | None]]] = queue.Queue(BACKLOG)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the worker thread unless it runs."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._work, args=(self._stop,), name="vigil-exec-hash", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker; jobs still queued get no digest. The cache is kept."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread = None
        self._drop_queued()

    def digest(self, fd: int, timeout: float) -> tuple[str | None, str]:
        """The sha256 of the file open at ``fd``, or ``None`` with the reason there is none.

        Reasons: ``not_regular``, ``too_large``, ``backlog`` (too many hashes waiting),
        ``timeout`` (the hash goes on and is cached) and ``unreadable``.
        """
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None, "not_regular"
        if info.st_size > self.max_bytes:
            return None, "too_large"
        key = file_key(info)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached, ""
            future = self._pending.get(key)
            if future is None:
                future = Future()
                copy = os.dup(fd)
                try:
                    self._jobs.put_nowait((key, copy, future))
                except queue.Full:
                    os.close(copy)
                    return None, "backlog"
                self._pending[key] = future
        try:
            digest = future.result(timeout)
        except TimeoutError:
            return None, "timeout"
        return (digest, "") if digest is not None else (None, "unreadable")

    def _work(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                key, fd, future = self._jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            digest: str | None = None
            try:
                digest = sha256_fd(fd)
            except Exception:  # an unreadable file is allowed to run, never a dead worker
                log.debug("cannot hash an executed file", exc_info=True)
            finally:
                os.close(fd)
                self._finish(key, digest, future)

    def _finish(self, key: FileKey, digest: str | None, future: Future[str | None]) -> None:
        with self._lock:
            self._pending.pop(key, None)
            if digest is not None:
                self._cache[key] = digest
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        future.set_result(digest)

    def _drop_queued(self) -> None:
        while True:
            try:
                key, fd, future = self._jobs.get_nowait()
            except queue.Empty:
                return
            os.close(fd)
            self._finish(key, None, future)
