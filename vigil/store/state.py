"""Server state in SQLite: tenants, agents, tokens, alerts, tasks, policies, playbooks, audit.

Every row carries its tenant. The embedded mode makes one tenant, ``default``; nothing here
assumes there is only one. All access goes through this class, so a PostgreSQL backend can
replace it without touching the API.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vigil.schema.ecs import iso_epoch

DEFAULT_TENANT = "default"
# The parts every alert has; anything else an alert carries is stored with it as details.
ALERT_KEYS = frozenset(
    {"id", "@timestamp", "rule", "attack", "host", "entity_id", "event", "status"}
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (id TEXT PRIMARY KEY, name TEXT NOT NULL, created REAL);
CREATE TABLE IF NOT EXISTS api_tokens (
    token_hash TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, name TEXT NOT NULL,
    role TEXT NOT NULL, created REAL);
CREATE TABLE IF NOT EXISTS enroll_tokens (
    token_hash TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, created REAL, expires REAL,
    uses_left INTEGER);
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, host_id TEXT, hostname TEXT, os TEXT,
    version TEXT, enrolled REAL, last_seen REAL, health TEXT, isolated INTEGER DEFAULT 0,
    silent INTEGER DEFAULT 0, tags TEXT DEFAULT '[]');
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, created REAL, timestamp TEXT,
    rule TEXT, attack TEXT, host_id TEXT, host_name TEXT, entity_id TEXT, event TEXT,
    status TEXT DEFAULT 'new', details TEXT);
CREATE INDEX IF NOT EXISTS alerts_by_tenant ON alerts (tenant_id, created);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, agent_id TEXT NOT NULL, action TEXT,
    params TEXT, status TEXT, requested_by TEXT, reason TEXT, created REAL, updated REAL,
    expires REAL, body TEXT, signature TEXT, result TEXT, message TEXT, decided_by TEXT,
    decision_reason TEXT);
CREATE INDEX IF NOT EXISTS tasks_by_agent ON tasks (agent_id, status);
CREATE INDEX IF NOT EXISTS tasks_by_tenant ON tasks (tenant_id, action, created);
CREATE TABLE IF NOT EXISTS response_policy (
    tenant_id TEXT PRIMARY KEY, policy TEXT NOT NULL, updated REAL, updated_by TEXT);
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT, tenant_id TEXT NOT NULL, at REAL, actor TEXT,
    action TEXT, target TEXT, params TEXT, outcome TEXT);
CREATE TABLE IF NOT EXISTS playbooks (
    tenant_id TEXT NOT NULL, name TEXT NOT NULL, definition TEXT NOT NULL, source TEXT,
    created REAL, updated REAL, PRIMARY KEY (tenant_id, name));
CREATE TABLE IF NOT EXISTS playbook_runs (
    id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, at REAL, playbook TEXT, mode TEXT,
    alert_id TEXT, rule_title TEXT, host_id TEXT, host_name TEXT, status TEXT, actions TEXT,
    message TEXT, counted INTEGER);
CREATE INDEX IF NOT EXISTS playbook_runs_by_host
    ON playbook_runs (tenant_id, playbook, host_id, mode, counted, at);
CREATE INDEX IF NOT EXISTS playbook_runs_by_time ON playbook_runs (tenant_id, at);
"""


# An enrollment token is named by this many hex digits of its hash: enough to tell tokens apart,
# useless for guessing the secret.
ENROLL_TOKEN_ID_LENGTH = 12


def token_hash(token: str) -> str:
    """Tokens are stored only as their SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()


def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
    return dict(row) if row is not None else None


class StateStore:
    """Thread-safe access to the state database of one data directory."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._add_missing_columns()
        self._lock = threading.Lock()
        self._ensure_tenant(DEFAULT_TENANT, "Default")

    def close(self) -> None:
        self._db.close()

    def _add_missing_columns(self) -> None:
        """Columns added since a database was made, so older data directories keep working."""
        added = {
            "agents": {"silent": "INTEGER DEFAULT 0", "tags": "TEXT DEFAULT '[]'"},
            "alerts": {"details": "TEXT"},
            "tasks": {"decided_by": "TEXT", "decision_reason": "TEXT"},
        }
        for table, wanted in added.items():
            columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for column, kind in wanted.items():
                if column not in columns:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        with self._lock:
            return _row(self._db.execute(sql, args).fetchone())

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    def _ensure_tenant(self, tenant_id: str, name: str) -> None:
        self._exec(
            "INSERT OR IGNORE INTO tenants (id, name, created) VALUES (?, ?, ?)",
            (tenant_id, name, time.time()),
        )

    def tenant_ids(self) -> list[str]:
        return [row["id"] for row in self._all("SELECT id FROM tenants ORDER BY id")]

    # Tokens.

    def create_api_token(self, tenant_id: str, name: str, role: str = "admin") -> str:
        token = "vgt_" + secrets.token_urlsafe(32)
        self._exec(
            "INSERT INTO api_tokens VALUES (?, ?, ?, ?, ?)",
            (token_hash(token), tenant_id, name, role, time.time()),
        )
        return token

    def api_token(self, token: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM api_tokens WHERE token_hash = ?", (token_hash(token),))

    def api_tokens(self, tenant_id: str) -> list[dict[str, Any]]:
        """Name, role and creation time of a tenant's tokens (the tokens themselves are gone)."""
        rows = self._all(
            "SELECT name, role, created FROM api_tokens WHERE tenant_id = ? ORDER BY created",
            (tenant_id,),
        )
        for row in rows:
            row["created"] = iso_epoch(row["created"])
        return rows

    def revoke_api_tokens(self, tenant_id: str, name: str) -> int:
        """Delete every token of that name in the tenant; return how many there were."""
        cursor = self._exec(
            "DELETE FROM api_tokens WHERE tenant_id = ? AND name = ?", (tenant_id, name)
        )
        return cursor.rowcount

    def create_enroll_secret(self, tenant_id: str, ttl: float, uses: int) -> str:
        secret = secrets.token_urlsafe(24)
        now = time.time()
        self._exec(
            "INSERT INTO enroll_tokens VALUES (?, ?, ?, ?, ?)",
            (token_hash(secret), tenant_id, now, now + ttl, uses),
        )
        return secret

    def enroll_tokens(self, tenant_id: str) -> list[dict[str, Any]]:
        """The tenant's enrollment tokens, by id (the start of their hash; the secret is gone)."""
        rows = self._all(
            "SELECT token_hash, created, expires, uses_left FROM enroll_tokens "
            "WHERE tenant_id = ? ORDER BY created",
            (tenant_id,),
        )
        now = time.time()
        return [
            {
                "id": row["token_hash"][:ENROLL_TOKEN_ID_LENGTH],
                "created": iso_epoch(row["created"]),
                "expires": iso_epoch(row["expires"]),
                "uses_left": row["uses_left"],
                "usable": row["expires"] >= now and row["uses_left"] > 0,
            }
            for row in rows
        ]

    def revoke_enroll_token(self, tenant_id: str, token_id: str) -> int:
        """Delete the tenant's enrollment token with this id; returns how many went (0 or 1)."""
        if len(token_id) != ENROLL_TOKEN_ID_LENGTH or not all(
            c in "0123456789abcdef" for c in token_id
        ):
            return 0
        cursor = self._exec(
            "DELETE FROM enroll_tokens WHERE tenant_id = ? AND substr(token_hash, 1, ?) = ?",
            (tenant_id, ENROLL_TOKEN_ID_LENGTH, token_id),
        )
        return cursor.rowcount

    def redeem_enroll_secret(self, secret: str) -> str | None:
        """Use up one enrollment of a secret; return its tenant, or None when it is not valid."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM enroll_tokens WHERE token_hash = ?", (token_hash(secret),)
            ).fetchone()
            if row is None or row["expires"] < time.time() or row["uses_left"] < 1:
                return None
            self._db.execute(
                "UPDATE enroll_tokens SET uses_left = uses_left - 1 WHERE token_hash = ?",
                (row["token_hash"],),
            )
            return str(row["tenant_id"])

    # Agents.

    def add_agent(self, tenant_id: str, host_id: str, hostname: str, os: str, version: str) -> str:
        agent_id = str(uuid.uuid4())
        now = time.time()
        self._exec(
            "INSERT INTO agents (id, tenant_id, host_id, hostname, os, version, enrolled,"
            " last_seen, health) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (agent_id, tenant_id, host_id, hostname, os, version, now, now, "{}"),
        )
        return agent_id

    def agent(self, agent_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM agents WHERE id = ?", (agent_id,))

    def remove_agent(self, agent_id: str) -> bool:
        """Forget an enrolled agent: its certificate is refused from now on; telemetry stays."""
        cursor = self._exec("DELETE FROM agents WHERE id = ?", (agent_id,))
        return cursor.rowcount > 0

    def agents(self, tenant_id: str) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM agents WHERE tenant_id = ? ORDER BY enrolled", (tenant_id,))

    def record_heartbeat(self, agent_id: str, health: dict[str, Any], isolated: bool) -> None:
        self._exec(
            "UPDATE agents SET last_seen = ?, health = ?, isolated = ?, silent = 0 WHERE id = ?",
            (time.time(), json.dumps(health), int(isolated), agent_id),
        )

    def newly_silent_agents(self, seen_before: float) -> list[dict[str, Any]]:
        """Agents last heard of before ``seen_before`` and not yet flagged; flags them."""
        with self._lock:
            rows = [
                dict(r)
                for r in self._db.execute(
                    "SELECT * FROM agents WHERE silent = 0 AND last_seen < ?", (seen_before,)
                ).fetchall()
            ]
            self._db.executemany(
                "UPDATE agents SET silent = 1 WHERE id = ?", [(r["id"],) for r in rows]
            )
        return rows

    def touch_agent(self, agent_id: str) -> None:
        self._exec("UPDATE agents SET last_seen = ? WHERE id = ?", (time.time(), agent_id))

    def set_isolated(self, agent_id: str, isolated: bool) -> None:
        self._exec("UPDATE agents SET isolated = ? WHERE id = ?", (int(isolated), agent_id))

    def change_tags(
        self, agent_id: str, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> list[str]:
        """Add and remove tags of a host in one step; return its tags, sorted."""
        with self._lock:
            row = self._db.execute("SELECT tags FROM agents WHERE id = ?", (agent_id,)).fetchone()
            tags = (set(json.loads(row["tags"] or "[]")) if row else set()) | set(add)
            tags -= set(remove)
            self._db.execute(
                "UPDATE agents SET tags = ? WHERE id = ?", (json.dumps(sorted(tags)), agent_id)
            )
        return sorted(tags)

    # Alerts.

    def add_alert(self, tenant_id: str, alert: dict[str, Any]) -> None:
        """Store an alert; keys beyond the common ones (``intel``...) are kept as they are."""
        details = {k: v for k, v in alert.items() if k not in ALERT_KEYS}
        self._exec(
            "INSERT INTO alerts (id, tenant_id, created, timestamp, rule, attack, host_id,"
            " host_name, entity_id, event, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                alert["id"],
                tenant_id,
                time.time(),
                alert["@timestamp"],
                json.dumps(alert["rule"]),
                json.dumps(alert["attack"]),
                alert["host"]["id"],
                alert["host"]["name"],
                alert.get("entity_id"),
                json.dumps(alert["event"], default=str),
                json.dumps(details, default=str) if details else None,
            ),
        )

    def alerts(
        self,
        tenant_id: str,
        limit: int = 500,
        status: str | None = None,
        levels: Sequence[str] | None = None,
        host_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Newest alerts first, optionally only of one status, some levels or one host."""
        where, args = ["tenant_id = ?"], [tenant_id]
        if status:
            where.append("status = ?")
            args.append(status)
        if levels:
            where.append(f"json_extract(rule, '$.level') IN ({', '.join('?' for _ in levels)})")
            args.extend(levels)
        if host_id:
            where.append("host_id = ?")
            args.append(host_id)
        rows = self._all(
            f"SELECT * FROM alerts WHERE {' AND '.join(where)} ORDER BY created DESC LIMIT ?",
            (*args, limit),
        )
        return [_alert(r) for r in rows]

    def set_alert_status(self, tenant_id: str, alert_id: str, status: str) -> bool:
        cursor = self._exec(
            "UPDATE alerts SET status = ? WHERE tenant_id = ? AND id = ?",
            (status, tenant_id, alert_id),
        )
        return cursor.rowcount == 1

    def alert(self, tenant_id: str, alert_id: str) -> dict[str, Any] | None:
        row = self._one(
            "SELECT * FROM alerts WHERE tenant_id = ? AND id = ?", (tenant_id, alert_id)
        )
        return _alert(row) if row else None

    # Tasks.

    def add_task(self, task: dict[str, Any], status: str = "queued") -> None:
        """Store a task; one ``pending_approval`` has no body or signature yet."""
        self._exec(
            "INSERT INTO tasks (id, tenant_id, agent_id, action, params, status, requested_by,"
            " reason, created, updated, expires, body, signature, message) VALUES"
            " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                task["id"],
                task["tenant_id"],
                task["agent_id"],
                task["action"],
                json.dumps(task["params"]),
                status,
                task["requested_by"],
                task["reason"],
                task["created"],
                task["created"],
                task["expires"],
                task["body"],
                task["signature"],
                task.get("message", ""),
            ),
        )

    def pending_tasks(self, agent_id: str) -> list[dict[str, Any]]:
        """Queued tasks for an agent that have not expired (``expire_tasks`` marks those)."""
        return self._all(
            "SELECT * FROM tasks WHERE agent_id = ? AND status = 'queued' AND expires >= ?"
            " ORDER BY created",
            (agent_id, time.time()),
        )

    def set_task_status(
        self,
        task_id: str,
        status: str,
        result: dict[str, Any] | None = None,
        message: str = "",
        only_from: Sequence[str] | None = None,
    ) -> bool:
        """Change a task's status (only from one of ``only_from``, when given); True if it did."""
        where, args = "id = ?", [task_id]
        if only_from is not None:
            where += f" AND status IN ({', '.join('?' for _ in only_from)})"
            args.extend(only_from)
        cursor = self._exec(
            "UPDATE tasks SET status = ?, updated = ?, result = COALESCE(?, result),"
            f" message = ? WHERE {where}",
            (
                status,
                time.time(),
                json.dumps(result) if result is not None else None,
                message,
                *args,
            ),
        )
        return cursor.rowcount == 1

    def decide_task(
        self,
        task_id: str,
        status: str,
        decided_by: str,
        reason: str,
        message: str = "",
        signed: tuple[str, str] | None = None,
    ) -> bool:
        """Approve (with the signed body) or deny a task still pending approval; True if it was."""
        body, signature = signed or (None, None)
        cursor = self._exec(
            "UPDATE tasks SET status = ?, updated = ?, decided_by = ?, decision_reason = ?,"
            " message = ?, body = COALESCE(?, body), signature = COALESCE(?, signature)"
            " WHERE id = ? AND status = 'pending_approval'",
            (status, time.time(), decided_by, reason, message, body, signature, task_id),
        )
        return cursor.rowcount == 1

    def task_row(self, tenant_id: str, task_id: str) -> dict[str, Any] | None:
        """A task as stored, with its raw times and parameters."""
        return self._one("SELECT * FROM tasks WHERE tenant_id = ? AND id = ?", (tenant_id, task_id))

    def expire_tasks(self, tenant_id: str | None = None) -> list[dict[str, Any]]:
        """Mark tasks past their expiry that no agent answered as ``expired``; return them."""
        now = time.time()
        where = "status IN ('queued', 'pending_approval', 'delivered') AND expires < ?"
        args: tuple[Any, ...] = (now,)
        if tenant_id is not None:
            where += " AND tenant_id = ?"
            args = (now, tenant_id)
        with self._lock:
            rows = [
                dict(r)
                for r in self._db.execute(f"SELECT * FROM tasks WHERE {where}", args).fetchall()
            ]
            self._db.executemany(
                "UPDATE tasks SET status = 'expired', updated = ? WHERE id = ? AND status = ?",
                [(now, r["id"], r["status"]) for r in rows],
            )
        return rows

    def hosts_with_tasks_since(
        self, tenant_id: str, action: str, since: float, statuses: Sequence[str]
    ) -> dict[str, float]:
        """Hosts with a task of that action created since ``since`` in one of ``statuses``.

        Maps each host to the creation time of its newest such task.
        """
        rows = self._all(
            "SELECT agent_id, MAX(created) AS newest FROM tasks WHERE tenant_id = ?"
            f" AND action = ? AND created >= ? AND status IN ({', '.join('?' for _ in statuses)})"
            " AND COALESCE(json_extract(params, '$.dry_run'), 0) != 1"  # dry runs change nothing
            " GROUP BY agent_id",
            (tenant_id, action, since, *statuses),
        )
        return {r["agent_id"]: float(r["newest"]) for r in rows}

    # Response policy.

    def response_policy(self, tenant_id: str) -> dict[str, Any] | None:
        """The tenant's stored response policy, or None when it never set one."""
        row = self._one("SELECT * FROM response_policy WHERE tenant_id = ?", (tenant_id,))
        if row is None:
            return None
        policy: dict[str, Any] = json.loads(row["policy"])
        policy["updated"] = iso_epoch(row["updated"])
        policy["updated_by"] = row["updated_by"]
        return policy

    def set_response_policy(self, tenant_id: str, policy: dict[str, Any], actor: str) -> None:
        self._exec(
            "INSERT OR REPLACE INTO response_policy VALUES (?, ?, ?, ?)",
            (tenant_id, json.dumps(policy), time.time(), actor),
        )

    def task(self, tenant_id: str, task_id: str) -> dict[str, Any] | None:
        row = self._one("SELECT * FROM tasks WHERE tenant_id = ? AND id = ?", (tenant_id, task_id))
        return _task(row) if row else None

    def task_for_agent(self, agent_id: str, task_id: str) -> dict[str, Any] | None:
        row = self._one("SELECT * FROM tasks WHERE agent_id = ? AND id = ?", (agent_id, task_id))
        return _task(row) if row else None

    def tasks(self, tenant_id: str, limit: int = 200) -> list[dict[str, Any]]:
        rows = self._all(
            "SELECT * FROM tasks WHERE tenant_id = ? ORDER BY created DESC LIMIT ?",
            (tenant_id, limit),
        )
        return [_task(r) for r in rows]

    # Playbooks and what they did.

    def put_playbook(
        self, tenant_id: str, name: str, definition: dict[str, Any], source: str
    ) -> bool:
        """Create or replace a tenant's playbook; True when it is new."""
        now = time.time()
        with self._lock:
            cursor = self._db.execute(
                "UPDATE playbooks SET definition = ?, source = ?, updated = ?"
                " WHERE tenant_id = ? AND name = ?",
                (json.dumps(definition), source, now, tenant_id, name),
            )
            if cursor.rowcount == 1:
                return False
            self._db.execute(
                "INSERT INTO playbooks VALUES (?, ?, ?, ?, ?, ?)",
                (tenant_id, name, json.dumps(definition), source, now, now),
            )
            return True

    def playbooks(self, tenant_id: str) -> list[dict[str, Any]]:
        rows = self._all("SELECT * FROM playbooks WHERE tenant_id = ? ORDER BY name", (tenant_id,))
        return [_playbook(r) for r in rows]

    def playbook(self, tenant_id: str, name: str) -> dict[str, Any] | None:
        row = self._one(
            "SELECT * FROM playbooks WHERE tenant_id = ? AND name = ?", (tenant_id, name)
        )
        return _playbook(row) if row else None

    def delete_playbook(self, tenant_id: str, name: str) -> bool:
        cursor = self._exec(
            "DELETE FROM playbooks WHERE tenant_id = ? AND name = ?", (tenant_id, name)
        )
        return cursor.rowcount == 1

    def claim_playbook_run(
        self, run: dict[str, Any], max_runs: int, window: float, limited_message: str
    ) -> tuple[str, bool]:
        """Record the start of a playbook run unless its per-host limit is reached.

        Counting and recording happen under one lock, so two batches of one host cannot both
        take the last run. Runs count against the limit of their own mode only, so the runs of
        a dry-run trial do not hold back the same playbook once it enforces. Runs refused by
        the limit are kept but not counted, and the count reads only the index.

        Args:
            run: ``tenant_id``, ``playbook``, ``mode``, ``alert_id``, ``rule_title``,
                ``host_id`` and ``host_name`` of the run.
            max_runs: How many runs of this playbook, mode and host ``window`` may hold.
            window: Seconds to look back.
            limited_message: What to record as the outcome when the limit is reached.

        Returns:
            The run id, and whether the run may go on: when not, it is already recorded as
            ``rate_limited``; otherwise it is ``running`` until :meth:`finish_playbook_run`.
        """
        run_id = str(uuid.uuid4())
        now = time.time()
        with self._lock:
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM playbook_runs WHERE tenant_id = ? AND playbook = ?"
                " AND host_id = ? AND mode = ? AND counted = 1 AND at > ?",
                (run["tenant_id"], run["playbook"], run["host_id"], run["mode"], now - window),
            ).fetchone()
            allowed = count < max_runs
            self._db.execute(
                "INSERT INTO playbook_runs (id, tenant_id, at, playbook, mode, alert_id,"
                " rule_title, host_id, host_name, status, actions, message, counted)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '[]', ?, ?)",
                (
                    run_id,
                    run["tenant_id"],
                    now,
                    run["playbook"],
                    run["mode"],
                    run["alert_id"],
                    run["rule_title"],
                    run["host_id"],
                    run["host_name"],
                    "running" if allowed else "rate_limited",
                    "" if allowed else limited_message,
                    int(allowed),
                ),
            )
        return run_id, allowed

    def finish_playbook_run(
        self, run_id: str, status: str, actions: list[dict[str, Any]], message: str
    ) -> None:
        self._exec(
            "UPDATE playbook_runs SET status = ?, actions = ?, message = ? WHERE id = ?",
            (status, json.dumps(actions, default=str), message, run_id),
        )

    def playbook_runs(
        self, tenant_id: str, playbook: str | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        """Newest runs first, of every playbook or of one."""
        where, args = "tenant_id = ?", [tenant_id]
        if playbook:
            where += " AND playbook = ?"
            args.append(playbook)
        rows = self._all(
            f"SELECT * FROM playbook_runs WHERE {where} ORDER BY at DESC LIMIT ?", (*args, limit)
        )
        for row in rows:
            row.pop("tenant_id")
            row.pop("counted")
            row["at"] = iso_epoch(row["at"])
            row["actions"] = json.loads(row["actions"] or "[]")
        return rows

    # Audit trail.

    def audit(
        self,
        tenant_id: str,
        actor: str,
        action: str,
        target: str,
        params: dict[str, Any],
        outcome: str,
    ) -> None:
        self._exec(
            "INSERT INTO audit_log (tenant_id, at, actor, action, target, params, outcome)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (tenant_id, time.time(), actor, action, target, json.dumps(params), outcome),
        )

    def audit_log(self, tenant_id: str, limit: int = 500) -> list[dict[str, Any]]:
        rows = self._all(
            "SELECT * FROM audit_log WHERE tenant_id = ? ORDER BY id DESC LIMIT ?",
            (tenant_id, limit),
        )
        for row in rows:
            row["params"] = json.loads(row["params"])
            row["at"] = iso_epoch(row["at"])
        return rows


def _alert(row: dict[str, Any]) -> dict[str, Any]:
    alert = {
        "id": row["id"],
        "@timestamp": row["timestamp"],
        "rule": json.loads(row["rule"]),
        "attack": json.loads(row["attack"]),
        "host": {"id": row["host_id"], "name": row["host_name"]},
        "status": row["status"],
        "event": json.loads(row["event"]),
    }
    if row.get("details"):
        alert.update(json.loads(row["details"]))
    return alert


def _playbook(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": row["name"],
        "definition": json.loads(row["definition"]),
        "source": row["source"],
        "created": iso_epoch(row["created"]),
        "updated": iso_epoch(row["updated"]),
    }


def _task(row: dict[str, Any]) -> dict[str, Any]:
    task = {
        k: row[k]
        for k in (
            "id",
            "agent_id",
            "action",
            "status",
            "requested_by",
            "reason",
            "message",
            "decided_by",
            "decision_reason",
        )
    }
    for moment in ("created", "updated", "expires"):
        task[moment] = iso_epoch(row[moment])
    task["params"] = json.loads(row["params"])
    task["result"] = json.loads(row["result"]) if row["result"] else None
    return task
