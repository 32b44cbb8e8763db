"""Collect a file from the endpoint as evidence: read it in chunks and upload it to the server.

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

from vigil.agent.respond.base import Action
from vigil.agent.respond.errors import ResponseError
from vigil.agent.respond.quarantine import CHUNK, regular_file
from vigil.schema.ecs import utc_now_iso

log = logging.getLogger(__name__)

# The server refuses anything larger; a task may ask for a lower cap, never a higher one.
MAX_BYTES = 100 * 1024 * 1024


def _max_bytes(params: dict[str, Any]) -> int:
    cap = params.get("max_bytes", MAX_BYTES)
    if not isinstance(cap, int) or isinstance(cap, bool) or cap <= 0:
        raise ResponseError(f"collect: 'max_bytes' must be a positive integer, got {cap!r}")
    if cap > MAX_BYTES:
        raise ResponseError(
            f"collect: 'max_bytes' {cap} is over the limit of {MAX_BYTES} bytes (100 MiB); "
            "ask for 100 MiB or less"
        )
    return cap


class CollectAction(Action):
    """Upload a regular file to the server as evidence, with its sha256 and metadata.

    Params:
        path: Absolute path of a regular file.
        max_bytes: Refuse files larger than this (default and maximum 100 MiB).
        task_id: The task that asked, recorded in the chain of custody (optional).

    Returns ``{"evidence_id": str, "sha256": str, "size": int}``.
    """

    name = "collect"
    permission = "response.collect"
    destructive = False
    long_running = True

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """Check the file and the cap, then upload it chunk by chunk and finish with its sha256."""
        path, info = regular_file(params.get("path"), "collect", self.context.state_dir)
        cap = _max_bytes(params)
        task_id = params.get("task_id")
        if info.st_size > cap:
            raise ResponseError(
                f"collect: {path} is {info.st_size} bytes, over the cap of {cap}; nothing was "
                "sent; raise 'max_bytes' (up to 100 MiB) or collect a smaller file"
            )
        link = self.context.link
        if link is None:
            raise ResponseError(
                "collect: this agent was started without a connection to the server for "
                "uploads; upgrade the agent"
            )

        upload_id = self._call(
            link, "/evidence", {"path": str(path), "size": info.st_size, "task_id": task_id}
        )["upload_id"]
        try:
            digest, size, chunks = self._send(link, upload_id, str(path), cap)
        except BaseException:
            try:
                link.post(f"/evidence/{upload_id}/abort", {})
            except httpx.HTTPError:
                log.debug("could not abort upload %s", upload_id, exc_info=True)
            raise
        record = self._call(
            link,
            f"/evidence/{upload_id}/finish",
            {
                "chunks": chunks,
                "size": size,
                "sha256": digest,
                "collected_at": utc_now_iso(),
                "metadata": {
                    "mode": stat.S_IMODE(info.st_mode),
                    "uid": info.st_uid,
                    "gid": info.st_gid,
                    "mtime_ns": info.st_mtime_ns,
                    "agent_id": self.context.agent_id,
                },
            },
        )
        log.info("collected %s as evidence %s (%d bytes)", path, record["id"], size)
        return {"evidence_id": record["id"], "sha256": digest, "size": size}

    def _send(self, link: Any, upload_id: str, path: str, cap: int) -> tuple[str, int, int]:
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
                        f"collect: {path} grew past the cap of {cap} bytes while it was read; "
                        "nothing was stored"
                    )
                digest.update(chunk)
                self._call(
                    link,
                    f"/evidence/{upload_id}/chunks/{index}",
                    {
                        "data": base64.b64encode(chunk).decode("ascii"),
                        "sha256": hashlib.sha256(chunk).hexdigest(),
                    },
                )
                index += 1
        return digest.hexdigest(), size, index

    @staticmethod
    def _call(link: Any, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST to an agent endpoint; turn any failure into a ResponseError naming the reason."""
        try:
            response = link.post(path, payload)
        except httpx.HTTPError as exc:
            raise ResponseError(
                f"collect: the server could not be reached ({exc}); nothing was stored, "
                "collect again when the host is connected"
            ) from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ResponseError(f"collect: the server refused the upload: {detail}")
        body: dict[str, Any] = response.json()
        return body
