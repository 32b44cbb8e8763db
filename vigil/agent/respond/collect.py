"""Collect a file from the endpoint as evidence: read it in chunks and upload it to the server.

``upload_evidence`` is the one upload path: ``collect_triage`` sends its archive through it too.
The agent opens an upload, sends the file in 1 MiB chunks (each with its own sha256), then
finishes with the sha256 and size of everything it read; the server keeps the file only when
what it received hashes to the same value, and records the chain of custody.
See ``vigil.server.evidence_api`` for the endpoints.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import stat
from typing import Any

import httpx

from vigil.agent.respond.base import Action, ActionContext
from vigil.agent.respond.errors import ResponseError
from vigil.agent.respond.quarantine import CHUNK, regular_file
from vigil.schema.ecs import utc_now_iso

log = logging.getLogger(__name__)

# The server refuses anything larger; a task may ask for a lower cap, never a higher one.
MAX_BYTES = 100 * 1024 * 1024


def max_bytes(params: dict[str, Any], action: str) -> int:
    """The task's ``max_bytes`` (default and at most :data:`MAX_BYTES`)."""
    cap = params.get("max_bytes", MAX_BYTES)
    if not isinstance(cap, int) or isinstance(cap, bool) or cap <= 0:
        raise ResponseError(f"{action}: 'max_bytes' must be a positive integer, got {cap!r}")
    if cap > MAX_BYTES:
        raise ResponseError(
            f"{action}: 'max_bytes' {cap} is over the limit of {MAX_BYTES} bytes (100 MiB); "
            "ask for 100 MiB or less"
        )
    return cap


def upload_evidence(
    link: Any,
    action: str,
    path: str,
    size: int,
    cap: int,
    task_id: str | None,
    metadata: dict[str, Any],
    source: str | None = None,
) -> dict[str, Any]:
    """Upload the file at ``path`` as evidence in 1 MiB chunks; return the server's record.

    Args:
        link: The agent's connection to the server (``ServerLink``).
        action: The action's name, used in messages.
        path: What to read; it is opened without following a final symbolic link.
        size: The size the agent expects to send (the server refuses more than its cap).
        cap: Fail if the file grows past this many bytes while it is read.
        task_id: The task that asked, recorded in the chain of custody.
        metadata: Kept with the evidence record (mode, owner, what kind of evidence...).
        source: What the evidence is called in its record (default: ``path``).

    Raises:
        ResponseError: the server could not be reached or refused the upload; whatever was
            sent is dropped on both sides.
    """
    upload_id = _call(
        link, action, "/evidence", {"path": source or path, "size": size, "task_id": task_id}
    )["upload_id"]
    try:
        digest, sent, chunks = _send(link, action, upload_id, path, cap)
    except BaseException:
        try:
            link.post(f"/evidence/{upload_id}/abort", {})
        except httpx.HTTPError:
            log.debug("could not abort upload %s", upload_id, exc_info=True)
        raise
    return _call(
        link,
        action,
        f"/evidence/{upload_id}/finish",
        {
            "chunks": chunks,
            "size": sent,
            "sha256": digest,
            "collected_at": utc_now_iso(),
            "metadata": metadata,
        },
    )


def _send(link: Any, action: str, upload_id: str, path: str, cap: int) -> tuple[str, int, int]:
    """Send the file in chunks; return its sha256, size and number of chunks."""
    digest = hashlib.sha256()
    size = 0
    index = 0
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        while chunk := handle.read(CHUNK):
            size += len(chunk)
            if size > cap:
                raise ResponseError(
                    f"{action}: {path} grew past the cap of {cap} bytes while it was read; "
                    "nothing was stored"
                )
            digest.update(chunk)
            _call(
                link,
                action,
                f"/evidence/{upload_id}/chunks/{index}",
                {
                    "data": base64.b64encode(chunk).decode("ascii"),
                    "sha256": hashlib.sha256(chunk).hexdigest(),
                },
            )
            index += 1
    return digest.hexdigest(), size, index


def _call(link: Any, action: str, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    """POST to an agent endpoint; turn any failure into a ResponseError naming the reason."""
    try:
        response = link.post(path, payload)
    except httpx.HTTPError as exc:
        raise ResponseError(
            f"{action}: the server could not be reached ({exc}); nothing was stored, "
            "collect again when the host is connected"
        ) from exc
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise ResponseError(f"{action}: the server refused the upload: {detail}")
    body: dict[str, Any] = response.json()
    return body


def server_link(context: ActionContext, action: str) -> Any:
    """The context's connection to the server, or a ResponseError saying it has none."""
    if context.link is None:
        raise ResponseError(
            f"{action}: this agent was started without a connection to the server for "
            "uploads; upgrade the agent"
        )
    return context.link


class CollectAction(Action):
    """Upload a regular file to the server as evidence, with its sha256 and metadata.

    Params:
        path: Absolute path of a regular file.
        max_bytes: Refuse files larger than this (default and maximum 100 MiB).
        task_id: The task that asked, recorded in the chain of custody (set by the agent).

    Returns ``{"evidence_id": str, "sha256": str, "size": int}``.
    """

    name = "collect"
    permission = "response.collect"
    destructive = False
    uploads_evidence = True
    long_running = True

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """Check the file and the cap, then upload it chunk by chunk and finish with its sha256."""
        path, info = regular_file(params.get("path"), "collect", self.context.state_dir)
        cap = max_bytes(params, "collect")
        task_id = params.get("task_id")
        if info.st_size > cap:
            raise ResponseError(
                f"collect: {path} is {info.st_size} bytes, over the cap of {cap}; nothing was "
                "sent; raise 'max_bytes' (up to 100 MiB) or collect a smaller file"
            )
        link = server_link(self.context, "collect")

        metadata = {
            "mode": stat.S_IMODE(info.st_mode),
            "uid": info.st_uid,
            "gid": info.st_gid,
            "mtime_ns": info.st_mtime_ns,
            "agent_id": self.context.agent_id,
        }
        record = upload_evidence(link, "collect", str(path), info.st_size, cap, task_id, metadata)
        log.info("collected %s as evidence %s (%d bytes)", path, record["id"], record["size"])
        return {"evidence_id": record["id"], "sha256": record["sha256"], "size": record["size"]}
