"""Evidence files collected from endpoints, with their chain of custody.

Metadata lives in its own SQLite file (``evidence.sqlite`` in the server data folder); the bytes
live in ``<data_dir>/evidence/<tenant>/<id>``. An upload arrives in numbered chunks under
``<data_dir>/evidence/<tenant>/uploads/<upload_id>/``; on finish the chunks are joined, the sha256
of what arrived is compared with the one the agent computed, and only a match becomes evidence.
Every row carries its tenant. The custody table records who asked (task id and requester), which
agent sent it, when it was collected and received, and every later access.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from vigil.errors import VigilError
from vigil.schema.ecs import iso_epoch

log = logging.getLogger(__name__)

FILE_NAME = "evidence.sqlite"
FOLDER = "evidence"
# An upload that has not finished a day after it began is abandoned and dropped.
UPLOAD_TTL_S = 24 * 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, agent_id TEXT NOT NULL, task_id TEXT,
    requested_by TEXT, path TEXT, declared_size INTEGER, received INTEGER DEFAULT 0,
    created REAL);
CREATE TABLE IF NOT EXISTS evidence (
    id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, agent_id TEXT NOT NULL, task_id TEXT,
    requested_by TEXT, original_path TEXT, size INTEGER, sha256 TEXT, collected_at TEXT,
    received_at REAL, metadata TEXT);
CREATE INDEX IF NOT EXISTS evidence_by_tenant ON evidence (tenant_id, received_at);
CREATE TABLE IF NOT EXISTS custody (
    id INTEGER PRIMARY KEY AUTOINCREMENT, tenant_id TEXT NOT NULL, evidence_id TEXT NOT NULL,
    at REAL, actor TEXT, action TEXT, details TEXT);
CREATE INDEX IF NOT EXISTS custody_by_evidence ON custody (evidence_id, id);
"""


class EvidenceError(VigilError):
    """An upload was refused; the message says why and what to do."""


class EvidenceStore:
    """Evidence metadata, content and custody of one server, safe to use from several threads."""

    def __init__(self, path: Path, root: Path) -> None:
        """Open (and create if needed) the database at ``path``; content goes under ``root``."""
        self.path = path
        self.root = root
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    @classmethod
    def open(cls, data_dir: Path) -> EvidenceStore:
        """The store of a server whose data lives in ``data_dir``."""
        data_dir.mkdir(parents=True, exist_ok=True)
        root = data_dir / FOLDER
        root.mkdir(mode=0o700, exist_ok=True)
        return cls(data_dir / FILE_NAME, root)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        rows = self._all(sql, args)
        return rows[0] if rows else None

    def _upload_dir(self, tenant_id: str, upload_id: str) -> Path:
        return self.root / tenant_id / "uploads" / upload_id

    def content_path(self, tenant_id: str, evidence_id: str) -> Path:
        """Where the bytes of one piece of evidence are kept."""
        return self.root / tenant_id / evidence_id

    # Uploads.

    def start_upload(
        self,
        tenant_id: str,
        agent_id: str,
        path: str,
        declared_size: int,
        task_id: str | None,
        requested_by: str | None,
    ) -> str:
        """Open an upload for ``agent_id`` (dropping abandoned ones first); return its id."""
        self.expire_uploads(time.time() - UPLOAD_TTL_S)
        upload_id = uuid.uuid4().hex
        self._upload_dir(tenant_id, upload_id).mkdir(mode=0o700, parents=True)
        with self._lock:
            self._db.execute(
                "INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
                (
                    upload_id,
                    tenant_id,
                    agent_id,
                    task_id,
                    requested_by,
                    path,
                    declared_size,
                    time.time(),
                ),
            )
        return upload_id

    def expire_uploads(self, started_before: float) -> int:
        """Drop every upload begun before ``started_before``; return how many."""
        stale = self._all("SELECT * FROM uploads WHERE created < ?", (started_before,))
        for upload in stale:
            log.warning("dropped upload %s of %s: never finished", upload["id"], upload["path"])
            self.abort_upload(upload)
        return len(stale)

    def upload(self, agent_id: str, upload_id: str) -> dict[str, Any] | None:
        """The open upload ``upload_id`` of ``agent_id``, or None."""
        return self._one(
            "SELECT * FROM uploads WHERE id = ? AND agent_id = ?", (upload_id, agent_id)
        )

    def add_chunk(self, upload: dict[str, Any], index: int, data: bytes, cap: int) -> int:
        """Store chunk ``index`` of an upload (a resent chunk replaces itself); return the total.

        Raises:
            EvidenceError: the upload would pass ``cap`` bytes.
        """
        folder = self._upload_dir(upload["tenant_id"], upload["id"])
        chunk = folder / f"{index:08d}"
        previous = chunk.stat().st_size if chunk.exists() else 0
        total = int(upload["received"]) - previous + len(data)
        if total > cap:
            raise EvidenceError(
                f"upload {upload['id']} passed the cap of {cap} bytes; collect a smaller file"
            )
        chunk.write_bytes(data)
        with self._lock:
            self._db.execute("UPDATE uploads SET received = ? WHERE id = ?", (total, upload["id"]))
        upload["received"] = total
        return total

    def abort_upload(self, upload: dict[str, Any]) -> None:
        """Drop an upload and whatever arrived of it."""
        shutil.rmtree(self._upload_dir(upload["tenant_id"], upload["id"]), ignore_errors=True)
        with self._lock:
            self._db.execute("DELETE FROM uploads WHERE id = ?", (upload["id"],))

    def finish_upload(
        self,
        upload: dict[str, Any],
        chunks: int,
        sha256: str,
        size: int,
        collected_at: str,
        metadata: dict[str, Any],
    ) -> dict[str, Any]:
        """Join the chunks, check size and sha256, and keep them as evidence; return its record.

        The upload is dropped whatever the outcome: a refused upload is never stored.

        Raises:
            EvidenceError: a chunk is missing, or the size or sha256 of what arrived differ from
                what the agent sent.
        """
        tenant_id = upload["tenant_id"]
        folder = self._upload_dir(tenant_id, upload["id"])
        evidence_id = uuid.uuid4().hex
        target = self.content_path(tenant_id, evidence_id)
        digest = hashlib.sha256()
        received = 0
        try:
            with open(target, "wb") as writer:
                for index in range(chunks):
                    part = folder / f"{index:08d}"
                    if not part.exists():
                        raise EvidenceError(
                            f"upload {upload['id']}: chunk {index} of {chunks} never arrived; "
                            "collect the file again"
                        )
                    data = part.read_bytes()
                    digest.update(data)
                    received += len(data)
                    writer.write(data)
            if received != size:
                raise EvidenceError(
                    f"upload {upload['id']}: received {received} bytes but the agent sent "
                    f"{size}; nothing was stored, collect the file again"
                )
            if digest.hexdigest() != sha256.lower():
                raise EvidenceError(
                    f"upload {upload['id']}: the received bytes have sha256 {digest.hexdigest()}, "
                    f"the agent computed {sha256}; the file was corrupted or changed in transit, "
                    "nothing was stored; collect it again"
                )
        except BaseException:
            target.unlink(missing_ok=True)
            self.abort_upload(upload)
            raise
        target.chmod(0o400)
        self.abort_upload(upload)

        received_at = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO evidence VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    evidence_id,
                    tenant_id,
                    upload["agent_id"],
                    upload["task_id"],
                    upload["requested_by"],
                    upload["path"],
                    size,
                    digest.hexdigest(),
                    collected_at,
                    received_at,
                    json.dumps(metadata),
                ),
            )
        self.log_access(
            tenant_id,
            evidence_id,
            f"agent:{upload['agent_id']}",
            "received",
            {
                "task_id": upload["task_id"],
                "requested_by": upload["requested_by"],
                "sha256": digest.hexdigest(),
                "size": size,
            },
        )
        log.info(
            "stored evidence %s (%s from agent %s, %d bytes)",
            evidence_id,
            upload["path"],
            upload["agent_id"],
            size,
        )
        record = self.evidence(tenant_id, evidence_id)
        assert record is not None
        return record

    # Evidence and custody.

    def log_access(
        self, tenant_id: str, evidence_id: str, actor: str, action: str, details: dict[str, Any]
    ) -> None:
        """Add one line to the chain of custody of a piece of evidence."""
        with self._lock:
            self._db.execute(
                "INSERT INTO custody (tenant_id, evidence_id, at, actor, action, details)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (tenant_id, evidence_id, time.time(), actor, action, json.dumps(details)),
            )

    def evidence(self, tenant_id: str, evidence_id: str) -> dict[str, Any] | None:
        """One piece of evidence of ``tenant_id`` with its chain of custody, or None."""
        row = self._one(
            "SELECT * FROM evidence WHERE tenant_id = ? AND id = ?", (tenant_id, evidence_id)
        )
        if row is None:
            return None
        record = _record(row)
        record["custody"] = [
            {
                "at": iso_epoch(c["at"]),
                "actor": c["actor"],
                "action": c["action"],
                "details": json.loads(c["details"]),
            }
            for c in self._all(
                "SELECT * FROM custody WHERE tenant_id = ? AND evidence_id = ? ORDER BY id",
                (tenant_id, evidence_id),
            )
        ]
        return record

    def newest(self, tenant_id: str, limit: int = 200) -> list[dict[str, Any]]:
        """The newest evidence of ``tenant_id``, without custody."""
        rows = self._all(
            "SELECT * FROM evidence WHERE tenant_id = ? ORDER BY received_at DESC LIMIT ?",
            (tenant_id, limit),
        )
        return [_record(r) for r in rows]


def _record(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "agent_id": row["agent_id"],
        "task_id": row["task_id"],
        "requested_by": row["requested_by"],
        "original_path": row["original_path"],
        "size": row["size"],
        "sha256": row["sha256"],
        "collected_at": row["collected_at"],
        "received_at": iso_epoch(row["received_at"]),
        "metadata": json.loads(row["metadata"] or "{}"),
    }
