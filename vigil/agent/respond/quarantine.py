"""Quarantine a file into the agent's vault, and restore it exactly as it was.

The file is moved (a rename on the same filesystem, else copy, fsync and unlink) into
``<state_dir>/quarantine/<id>/content`` and its permissions are stripped (mode 000), so nothing
can run or open it except root. A JSON manifest beside it keeps what restore needs: the original
path, sha256, size, mode, owner, group, atime and mtime. The manifest is written before the move,
so a crash in between leaves a record of where the file came from.

Restore puts the bytes back at the original path with the same mode, owner and times, after it
checked the sha256, and never over something that now exists there.

Reference: stat(2), rename(2) (``EXDEV`` across filesystems), link(2) (fails on an existing name).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import uuid
from pathlib import Path
from typing import Any

from vigil.agent.respond.base import Action
from vigil.agent.respond.errors import ResponseError
from vigil.schema.ecs import utc_now_iso

log = logging.getLogger(__name__)

VAULT = "quarantine"
CONTENT = "content"
MANIFEST = "manifest.json"
CHUNK = 1024 * 1024
_ID = re.compile(r"^[0-9a-f]{32}$")


def sha256_of(path: Path) -> str:
    """Return the hex sha256 of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def vault_dir(state_dir: str) -> Path:
    """The folder that holds every quarantined file of an agent."""
    return Path(state_dir) / VAULT


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically (write a temporary file, fsync, rename)."""
    temporary = folder / (MANIFEST + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, folder / MANIFEST)
    _fsync_dir(folder)


def _copy_exclusive(source: Path, target: Path, checked: os.stat_result | None = None) -> str:
    """Copy ``source`` to a new file ``target`` (never over an existing one); return its sha256.

    Raises:
        FileExistsError: something exists at ``target``.
        ResponseError: ``source`` is no longer the file ``checked`` described.
    """
    digest = hashlib.sha256()
    reader = os.fdopen(os.open(source, os.O_RDONLY | os.O_NOFOLLOW), "rb")
    opened = os.fstat(reader.fileno())
    if checked is not None and (opened.st_dev, opened.st_ino) != (checked.st_dev, checked.st_ino):
        reader.close()
        raise ResponseError(
            f"{source} was replaced while it was being moved; it was left in place, check it "
            "and try again"
        )
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with reader, os.fdopen(fd, "wb", closefd=False) as writer:
            while chunk := reader.read(CHUNK):
                digest.update(chunk)
                writer.write(chunk)
            writer.flush()
            os.fsync(fd)
    finally:
        os.close(fd)
    return digest.hexdigest()


def regular_file(raw: Any, action: str, state_dir: str) -> tuple[Path, os.stat_result]:
    """Check ``raw`` names a regular file outside the agent's state folder; return it and lstat.

    Raises:
        ResponseError: the path is missing, not absolute, a link, a folder, a special file, or
            belongs to the agent.
    """
    if not isinstance(raw, str) or not raw:
        raise ResponseError(f"{action}: 'path' must be the absolute path of a file")
    path = Path(raw)
    if not path.is_absolute():
        raise ResponseError(f"{action}: 'path' must be absolute, got {raw!r}; nothing was done")
    try:
        info = os.lstat(path)
    except FileNotFoundError as exc:
        raise ResponseError(f"{action}: {raw} does not exist; nothing was done") from exc
    except OSError as exc:
        raise ResponseError(
            f"{action}: cannot read {raw}: {exc.strerror}; nothing was done"
        ) from exc
    if stat.S_ISLNK(info.st_mode):
        raise ResponseError(
            f"{action}: {raw} is a symbolic link to {os.readlink(path)!r}; links are refused, "
            "name the file it points to instead; nothing was done"
        )
    if stat.S_ISDIR(info.st_mode):
        raise ResponseError(
            f"{action}: {raw} is a directory; only regular files are accepted, name each file; "
            "nothing was done"
        )
    if not stat.S_ISREG(info.st_mode):
        raise ResponseError(
            f"{action}: {raw} is not a regular file (device, pipe or socket); nothing was done"
        )
    own = os.path.realpath(state_dir)
    real = os.path.realpath(path)
    if real == own or real.startswith(own + os.sep):
        raise ResponseError(
            f"{action}: {raw} is in the agent's own state folder {own}; refused, the agent "
            "needs it; nothing was done"
        )
    return path, info


class QuarantineAction(Action):
    """Move a regular file into the agent's vault with mode 000, keeping what restore needs.

    Params:
        path: Absolute path of a regular file (links, folders, special files and the agent's own
            files are refused).

    Returns ``{"quarantine_id": str, "sha256": str, "path": str}``; give ``quarantine_id`` to
    ``restore`` to put the file back.
    """

    name = "quarantine"
    undo = "restore"
    permission = "response.quarantine"
    destructive = True

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """Record the file's metadata, move it into the vault, hash it and strip its mode."""
        path, info = regular_file(params.get("path"), "quarantine", self.context.state_dir)

        quarantine_id = uuid.uuid4().hex
        folder = vault_dir(self.context.state_dir) / quarantine_id
        folder.mkdir(mode=0o700, parents=True)
        os.chmod(folder.parent, 0o700)
        manifest: dict[str, Any] = {
            "quarantine_id": quarantine_id,
            "path": str(path),
            "size": info.st_size,
            "mode": stat.S_IMODE(info.st_mode),
            "uid": info.st_uid,
            "gid": info.st_gid,
            "atime_ns": info.st_atime_ns,
            "mtime_ns": info.st_mtime_ns,
            "nlink": info.st_nlink,
            "sha256": None,
            "quarantined_at": utc_now_iso(),
            "agent_id": self.context.agent_id,
        }
        _write_manifest(folder, manifest)

        content = folder / CONTENT
        try:
            digest, moved_by = self._move(path, content, info)
        except ResponseError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise ResponseError(
                f"quarantine: could not move {path}: {exc.strerror or exc}; the file is still in "
                "place; run the agent as root if it is a permission problem"
            ) from exc
        os.chmod(content, 0)
        manifest["sha256"] = digest
        manifest["moved_by"] = moved_by
        _write_manifest(folder, manifest)

        log.info("quarantined %s as %s (sha256 %s)", path, quarantine_id, digest)
        if info.st_nlink > 1:
            log.warning(
                "%s had %d hard links; the other names still reach the bytes",
                path,
                info.st_nlink - 1,
            )
        return {"quarantine_id": quarantine_id, "sha256": digest, "path": str(path)}

    @staticmethod
    def _move(path: Path, content: Path, checked: os.stat_result) -> tuple[str, str]:
        """Move ``path`` to ``content``; return the sha256 of what is now vaulted and how.

        Raises:
            ResponseError: the path was swapped for another file after it was checked; what was
                moved is put back.
        """
        try:
            os.rename(path, content)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        else:
            moved = os.lstat(content)
            if (moved.st_dev, moved.st_ino) != (checked.st_dev, checked.st_ino):
                os.rename(content, path)
                raise ResponseError(
                    f"quarantine: {path} was replaced while it was being quarantined; it was "
                    "left in place, check it and quarantine again"
                )
            _fsync_dir(content.parent)
            _fsync_dir(path.parent)
            return sha256_of(content), "rename"
        digest = _copy_exclusive(path, content, checked)
        os.unlink(path)
        _fsync_dir(path.parent)
        return digest, "copy"


class RestoreAction(Action):
    """Put a quarantined file back at its original path with its mode, owner and times.

    Params:
        quarantine_id: The id ``quarantine`` returned.

    Returns ``{"quarantine_id": str, "sha256": str, "path": str}``. Refused when something now
    exists at the original path or when the vaulted bytes no longer match the recorded sha256.
    """

    name = "restore"
    permission = "response.quarantine"
    destructive = False

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """Check the vaulted bytes, put them back exactly, then drop them from the vault."""
        quarantine_id = params.get("quarantine_id")
        if not isinstance(quarantine_id, str) or not _ID.match(quarantine_id):
            raise ResponseError(
                f"restore: 'quarantine_id' must be the id quarantine returned, got "
                f"{quarantine_id!r}"
            )
        folder = vault_dir(self.context.state_dir) / quarantine_id
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ResponseError(
                f"restore: nothing is quarantined as {quarantine_id} on this host"
            ) from exc
        content = folder / CONTENT
        target = Path(manifest["path"])
        if not content.exists() or manifest.get("sha256") is None:
            raise ResponseError(
                f"restore: quarantine {quarantine_id} of {target} never completed; the file was "
                "not moved, check it is still at its path"
            )
        if os.path.lexists(target):
            raise ResponseError(
                f"restore: something now exists at {target}; move or remove it first, then "
                "restore again; nothing was restored"
            )
        if not target.parent.is_dir():
            raise ResponseError(
                f"restore: the folder {target.parent} no longer exists; create it, then restore "
                "again; nothing was restored"
            )
        digest = sha256_of(content)
        if digest != manifest["sha256"]:
            raise ResponseError(
                f"restore: the vaulted copy of {target} has sha256 {digest}, not the recorded "
                f"{manifest['sha256']}; it was changed in the vault, nothing was restored"
            )

        try:
            self._put_back(content, target, manifest["sha256"])
        except FileExistsError as exc:
            raise ResponseError(
                f"restore: something was created at {target} during the restore; move it away "
                "and restore again; the file is still in the vault"
            ) from exc
        # chown first: it clears set-user-id bits that chmod then puts back.
        os.chown(target, manifest["uid"], manifest["gid"], follow_symlinks=False)
        os.chmod(target, manifest["mode"])
        os.utime(target, ns=(manifest["atime_ns"], manifest["mtime_ns"]))
        shutil.rmtree(folder)

        log.info("restored %s from quarantine %s", target, quarantine_id)
        return {"quarantine_id": quarantine_id, "sha256": digest, "path": str(target)}

    @staticmethod
    def _put_back(content: Path, target: Path, expected: str) -> None:
        """Give ``content`` the name ``target`` without replacing anything that appears there.

        Raises:
            FileExistsError: something exists at ``target``.
            ResponseError: a cross-filesystem copy came out with another sha256.
        """
        try:
            # link(2) fails on an existing name, where rename(2) would replace it.
            os.link(content, target)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
        else:
            os.unlink(content)
            _fsync_dir(target.parent)
            return
        os.chmod(content, 0o600)
        digest = _copy_exclusive(content, target)
        if digest != expected:
            os.unlink(target)
            raise ResponseError(
                f"restore: the copy to {target} came out with sha256 {digest}, not {expected}; "
                "it was removed and the file is still in the vault"
            )
        _fsync_dir(target.parent)


class ListQuarantineAction(Action):
    """What the vault holds: each quarantined file with its id, original path and sha256.

    Returns ``{"quarantined": [...], "total": int}``, oldest first; each entry is the file's
    manifest (``quarantine_id``, ``path``, ``sha256``, ``size``, ``mode``, ``uid``, ``gid``,
    ``quarantined_at``...) plus ``complete``: False when the quarantine never finished (the
    file was not moved).
    """

    name = "list_quarantine"
    permission = "response.live"
    destructive = False

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """Read every manifest of the vault."""
        vault = vault_dir(self.context.state_dir)
        entries = []
        for folder in sorted(vault.iterdir()) if vault.is_dir() else []:
            if not _ID.match(folder.name):
                continue
            try:
                manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                log.warning("quarantine %s has no readable manifest: %s", folder.name, exc)
                manifest = {"quarantine_id": folder.name, "path": None, "sha256": None}
            manifest["complete"] = (
                manifest.get("sha256") is not None and (folder / CONTENT).exists()
            )
            entries.append(manifest)
        entries.sort(key=lambda entry: str(entry.get("quarantined_at") or ""))
        return {"quarantined": entries, "total": len(entries)}
