"""Reading the places a triage bundle covers without following a link or blocking on a pipe.

A host path (``/home/alice/.bash_history``) is opened one component at a time below a root
folder (``/`` on a real endpoint, a copy of a file system in tests), each component with
``O_NOFOLLOW``: a symbolic link anywhere in the path is reported with its target, never
followed. Only regular files are opened for reading; a FIFO, socket or device is reported from
its ``lstat`` and never opened, and what is opened is checked again with ``fstat``. Files are
opened with ``O_NONBLOCK`` (a FIFO swapped in after the check cannot block the read) and, where
the kernel allows, ``O_NOATIME`` so collecting does not change access times.

Reference: openat(2) (``O_NOFOLLOW``, ``O_NONBLOCK``, ``O_NOATIME``), fstat(2), inode(7).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile
from collections.abc import Generator
from typing import IO

from vigil.agent.respond.errors import ResponseError

READ_CHUNK = 1024 * 1024
# File bodies up to this size stay in memory while they are read; larger ones go to a temporary
# file in the bundle's work folder.
SPOOL_IN_MEMORY = 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class Unavailable(ResponseError):
    """One item could not be collected; ``reason`` is a short code kept in the manifest.

    Codes: ``missing`` (never there), ``vanished`` (listed, then gone), ``symlink`` (not
    followed), ``not_regular`` (FIFO, socket, device or folder), ``unreadable`` (permission or
    I/O error), ``too_big`` (over the per-file cap, or grew past it while read).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


Walk = Generator[tuple[str, "os.stat_result | Unavailable"], None, None]


def kind_of(mode: int) -> str:
    """A short name for the file type in ``mode``."""
    for test, label in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "dir"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "char_device"),
        (stat.S_ISBLK, "block_device"),
    ):
        if test(mode):
            return label
    return "other"


def _components(host_path: str) -> list[str]:
    return [part for part in host_path.split("/") if part and part != "."]


def _unavailable(exc: OSError, host_path: str, name: str, dir_fd: int) -> Unavailable:
    """Turn an ``openat`` failure on ``name`` (in ``dir_fd``) into the reason it failed."""
    if exc.errno == errno.ENOENT:
        return Unavailable("missing", f"{host_path}: does not exist")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        try:
            target = os.readlink(name, dir_fd=dir_fd)
        except OSError:
            return Unavailable("not_regular", f"{host_path}: a part of it is not a folder")
        return Unavailable("symlink", f"{host_path}: {name} is a symbolic link to {target!r}")
    return Unavailable("unreadable", f"{host_path}: {exc.strerror or exc}")


def _listed(problem: Unavailable) -> Unavailable:
    """A problem with an entry a folder listing just showed: missing now means vanished."""
    if problem.reason == "missing":
        return Unavailable("vanished", problem.detail.replace("does not exist", "vanished"))
    return problem


class Tree:
    """The file system below ``root``, addressed by absolute host paths, links never followed."""

    def __init__(self, root: str) -> None:
        """Open ``root`` (itself trusted: it may be or pass through a link)."""
        self.root = root
        self._fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        """Release the root folder."""
        os.close(self._fd)

    def open_dir(self, host_path: str) -> int:
        """A descriptor of the folder at ``host_path``; the caller closes it.

        Raises:
            Unavailable: a component is missing, a link, not a folder, or unreadable.
        """
        fd = os.dup(self._fd)
        try:
            for name in _components(host_path):
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise _unavailable(exc, host_path, name, fd) from exc
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def lstat(self, host_path: str) -> os.stat_result:
        """The ``lstat`` of ``host_path`` (its folders are opened without following links).

        Raises:
            Unavailable: the path or one of its folders is missing, a link, or unreadable.
        """
        parent, name = os.path.split(host_path.rstrip("/") or "/")
        if not name:
            return os.fstat(self._fd)
        fd = self.open_dir(parent)
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError as exc:
            raise _unavailable(exc, host_path, name, fd) from exc
        finally:
            os.close(fd)

    def readlink(self, host_path: str) -> str:
        """The target of the link at ``host_path`` (not resolved), or ``?`` if unreadable."""
        parent, name = os.path.split(host_path)
        try:
            fd = self.open_dir(parent)
        except Unavailable:
            return "?"
        try:
            return os.readlink(name, dir_fd=fd)
        except OSError:
            return "?"
        finally:
            os.close(fd)

    def walk(
        self, host_path: str, max_depth: int, skip_dirs: frozenset[tuple[int, int]] = frozenset()
    ) -> Walk:
        """Every entry below the folder ``host_path`` with its ``lstat``, depth first, sorted.

        Folders are yielded, then entered when they are real folders (never through a link),
        up to ``max_depth`` levels, except those whose ``(st_dev, st_ino)`` is in
        ``skip_dirs``. A folder that cannot be listed yields an Unavailable in place of a stat.

        Raises:
            Unavailable: ``host_path`` itself cannot be opened as a folder (raised at once, not
                while iterating).
        """
        fd = self.open_dir(host_path)
        return self._walk(fd, host_path.rstrip("/") or "/", max_depth, skip_dirs)

    def _walk(
        self, fd: int, prefix: str, depth: int, skip_dirs: frozenset[tuple[int, int]]
    ) -> Walk:
        try:
            try:
                names = sorted(os.listdir(fd))
            except OSError as exc:
                yield prefix, Unavailable("unreadable", f"{prefix}: {exc.strerror or exc}")
                return
            for name in names:
                path = os.path.join(prefix, name)
                try:
                    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError as exc:
                    yield path, _listed(_unavailable(exc, path, name, fd))
                    continue
                yield path, info
                if not stat.S_ISDIR(info.st_mode) or depth <= 1:
                    continue
                if (info.st_dev, info.st_ino) in skip_dirs:
                    continue
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    yield path, _listed(_unavailable(exc, path, name, fd))
                    continue
                yield from self._walk(child, path, depth - 1, skip_dirs)
        finally:
            os.close(fd)

    def read(
        self, host_path: str, limit: int, work_dir: str, expected: os.stat_result | None = None
    ) -> tuple[IO[bytes], int, str, os.stat_result]:
        """Copy the regular file at ``host_path``, up to ``limit`` bytes, into a temporary file.

        Args:
            host_path: Absolute path on the host.
            limit: The most bytes to take; a larger file (or one that grows past it while read)
                is refused.
            work_dir: Where a copy too large for memory is written.
            expected: The ``lstat`` seen when the file was listed; if the file opened is another
                one, it is reported as vanished.

        Returns:
            The copy (positioned at 0; the caller closes it), its size, its sha256 and the
            ``fstat`` of the file that was read.

        Raises:
            Unavailable: missing, vanished, a link, not a regular file, unreadable, too big.
        """
        info = expected if expected is not None else self.lstat(host_path)
        if not stat.S_ISREG(info.st_mode):
            if stat.S_ISLNK(info.st_mode):
                target = self.readlink(host_path)
                raise Unavailable("symlink", f"{host_path}: a symbolic link to {target!r}")
            raise Unavailable(
                "not_regular", f"{host_path}: a {kind_of(info.st_mode)}, not a regular file"
            )
        if info.st_size > limit:
            raise Unavailable("too_big", f"{host_path}: {info.st_size} bytes, over {limit}")

        try:
            fd = self._open_file(host_path)
        except Unavailable as problem:
            if problem.reason == "missing" and expected is not None:
                raise Unavailable("vanished", f"{host_path}: gone before it was read") from None
            raise
        with os.fdopen(fd, "rb") as handle:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (
                info.st_dev,
                info.st_ino,
            ):
                raise Unavailable("vanished", f"{host_path}: replaced while it was collected")
            copy = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, dir=work_dir)
            try:
                digest = hashlib.sha256()
                size = 0
                while chunk := handle.read(min(READ_CHUNK, limit + 1 - size)):
                    size += len(chunk)
                    if size > limit:
                        raise Unavailable(
                            "too_big", f"{host_path}: grew past {limit} bytes while it was read"
                        )
                    digest.update(chunk)
                    copy.write(chunk)
            except OSError as exc:
                copy.close()
                raise Unavailable("unreadable", f"{host_path}: {exc.strerror or exc}") from exc
            except BaseException:
                copy.close()
                raise
        copy.seek(0)
        return copy, size, digest.hexdigest(), opened

    def _open_file(self, host_path: str) -> int:
        parent, name = os.path.split(host_path)
        dir_fd = self.open_dir(parent)
        try:
            try:
                return os.open(name, _FILE_FLAGS | os.O_NOATIME, dir_fd=dir_fd)
            except PermissionError:
                # O_NOATIME needs the file's owner or CAP_FOWNER; read without it.
                return os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            raise _unavailable(exc, host_path, name, dir_fd) from exc
        finally:
            os.close(dir_fd)
