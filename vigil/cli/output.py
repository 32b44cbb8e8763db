"""Plain-text output of analyst commands, for people at a terminal."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

CELL = 80


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width table; a cell longer than 80 characters is cut and ends in '…'."""
    cells = [
        [
            s if len(s := str(c if c is not None else "")) <= CELL else s[: CELL - 1] + "…"
            for c in row
        ]
        for row in rows
    ]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _hosts(result: list[dict[str, Any]]) -> str:
    return table(
        ["ID", "NAME", "ISOLATED", "TAGS", "LAST SEEN"],
        [
            [h["id"], h["name"], h["isolated"], ",".join(h.get("tags", [])), h["last_seen"]]
            for h in result
        ],
    )


def _host_tags(result: dict[str, Any]) -> str:
    return f"{result['name']} ({result['id']}): tags {', '.join(result['tags']) or 'none'}"


def _alerts(result: list[dict[str, Any]]) -> str:
    return table(
        ["ID", "TIME", "STATUS", "LEVEL", "RULE", "ATT&CK", "HOST"],
        [
            [
                a["id"],
                a["@timestamp"],
                a["status"],
                a["rule"]["level"],
                a["rule"]["title"],
                ",".join(a["attack"]),
                a["host"]["name"],
            ]
            for a in result
        ],
    )


def _alert(result: dict[str, Any]) -> str:
    event = result["event"]
    process = event.get("process", {})
    user = event.get("user", {})
    lines = [
        f"{result['rule']['title']} ({result['rule']['level']})",
        f"  alert:    {result['id']} ({result['status']})",
        f"  time:     {result['@timestamp']}",
        f"  host:     {result['host']['name']} ({result['host']['id']})",
        "  ATT&CK:   "
        + "; ".join(
            f"{d['id']} {d['name'] or ''} ({', '.join(t['name'] or t['id'] for t in d['tactics'])})"
            for d in result.get("attack_details", [])
        ),
        f"  rule:     {result['rule']['id']}",
    ]
    lines += _what_happened(event)
    for hit in result.get("intel") or []:
        lines.append(
            f"  intel:    {hit['field']} = {hit['observed']} matches {hit['type']} "
            f"{hit['value']} from {hit['source']} (confidence {hit['confidence']})"
        )
    if process:
        lines += [
            f"  process:  {process.get('command_line') or process.get('executable')}",
            f"  entity:   {process.get('entity_id')} (pid {process.get('pid')})",
            f"  user:     {user.get('name')} ({user.get('id')})",
            f"  cwd:      {process.get('working_directory')}",
        ]
    # An alert about no process (a host that went silent) has no tree worth drawing.
    tree = [node for node in result.get("process_tree") or [] if node.get("pid") is not None]
    if tree:
        lines.append("Process tree (oldest known ancestor first):")
        for depth, node in enumerate(tree):
            text = node["command_line"] or node["executable"]
            lines.append(f"{'  ' * depth}└ [{node['pid']}] {text}  ({node['entity_id']})")
    return "\n".join(lines)


def _what_happened(event: dict[str, Any]) -> list[str]:
    """The event in a line or two: its kind, and the file, connection or query it was about."""
    kind = event.get("event", {})
    categories = ",".join(kind.get("category") or [])
    lines = [f"  event:    {categories or '-'} {kind.get('action') or ''}".rstrip()]
    file = event.get("file") or {}
    if file.get("path"):
        lines.append(f"  file:     {file['path']}")
    source, destination = event.get("source") or {}, event.get("destination") or {}
    if destination.get("ip"):
        lines.append(
            f"  network:  {source.get('ip', '?')}:{source.get('port', '?')} -> "
            f"{destination['ip']}:{destination.get('port', '?')}"
        )
    question = (event.get("dns") or {}).get("question") or {}
    if question.get("name"):
        lines.append(f"  dns:      {question['name']}")
    visibility = (event.get("vigil") or {}).get("visibility") or {}
    if visibility:
        facts = ", ".join(f"{key} {value}" for key, value in visibility.items())
        lines.append(f"  seen:     {facts}")
    return lines


def _hunt(result: dict[str, Any]) -> str:
    text = table(result["columns"], [[row[c] for c in result["columns"]] for row in result["rows"]])
    if result["truncated"]:
        text += "\n(more rows than shown: narrow the query)"
    return text


def _tasks(result: list[dict[str, Any]]) -> str:
    return table(
        ["ID", "CREATED", "ACTION", "HOST", "STATUS", "BY", "REASON"],
        [
            [
                t["id"],
                t["created"],
                t["action"],
                t["agent_id"],
                t["status"],
                t["requested_by"],
                t["reason"],
            ]
            for t in result
        ],
    )


def task_text(result: dict[str, Any]) -> str:
    """A task as a person reads it: state, who asked and why, and its result."""
    if result.get("dry_run"):
        return _dry_run(result)
    message = f" ({result['message']})" if result["message"] else ""
    lines = [
        f"task {result['id']}: {result['action']} on {result['agent_id']}",
        f"  status:   {result['status']}{message}",
        f"  asked by: {result['requested_by']} at {result['created']}: {result['reason'] or '-'}",
    ]
    if result.get("decided_by"):
        lines.append(f"  decided:  by {result['decided_by']}: {result['decision_reason'] or '-'}")
    lines.append(f"  params:   {json.dumps(result['params'])}")
    if result["action"] == "isolate" and result.get("result"):
        lines += _isolation(result["result"])
    as_table = _RESULT_TABLES.get(result["action"])
    if as_table is not None and result.get("result"):
        lines.append(as_table(result["result"]))
    elif result.get("result"):
        lines.append(f"  result:   {json.dumps(result['result'])}")
    return "\n".join(lines)


def _shown(rows: list[Any], total: int, what: str) -> str:
    return f"  {what}: {len(rows)} of {total} shown (--json for every field)"


def _live_processes(result: dict[str, Any]) -> str:
    rows = result["processes"]
    listing = table(
        ["PID", "PPID", "USER", "NAME", "COMMAND LINE"],
        [[p["pid"], p["ppid"], p["user"], p["name"], p["cmdline"]] for p in rows],
    )
    return _shown(rows, result["total"], "processes") + "\n" + listing


def _endpoint(address: dict[str, Any] | None) -> str:
    if not address:
        return "-"
    if "path" in address:
        return str(address["path"]) or "-"
    return _host_port(str(address["ip"]), address["port"])


def _live_connections(result: dict[str, Any]) -> str:
    rows = result["connections"]
    listing = table(
        ["FAMILY", "TYPE", "LOCAL", "REMOTE", "STATUS", "PID"],
        [
            [c["family"], c["type"], _endpoint(c["local"]), _endpoint(c["remote"]), c["status"],
             c["pid"]]
            for c in rows
        ],
    )  # fmt: skip
    return _shown(rows, result["total"], "connections") + "\n" + listing


def _vault(result: dict[str, Any]) -> str:
    rows = result["quarantined"]
    listing = table(
        ["QUARANTINE ID", "PATH", "SHA256", "SIZE", "QUARANTINED AT", "COMPLETE"],
        [
            [q["quarantine_id"], q["path"], q["sha256"], q.get("size"), q.get("quarantined_at"),
             "yes" if q["complete"] else "no"]
            for q in rows
        ],
    )  # fmt: skip
    return _shown(rows, result["total"], "quarantined files") + "\n" + listing


# Actions whose result reads best as a table at a terminal.
_RESULT_TABLES: dict[str, Callable[[dict[str, Any]], str]] = {
    "live_processes": _live_processes,
    "live_connections": _live_connections,
    "list_quarantine": _vault,
}


def _dry_run(result: dict[str, Any]) -> str:
    verdict = result["verdict"]
    lines = [
        f"dry run: {result['action']} on {result['host']} ({result['agent_id']}) would "
        f"{result['would']}; nothing was queued",
        f"  params:   {json.dumps(result['params'])}",
        f"  reason:   {result['reason'] or '-'}",
    ]
    if verdict["guardrail"]:
        lines.append(f"  guardrail {verdict['guardrail']}: {verdict['message']}")
    return "\n".join(lines)


def _policy(result: dict[str, Any]) -> str:
    allowed = result["allowed_actions"]
    lines = [
        f"response policy of tenant {result['tenant_id']}"
        + (
            f" (changed by {result['updated_by']} at {result['updated']})"
            if result["updated"]
            else " (defaults)"
        ),
        f"  allowed actions:     {'all' if allowed is None else ', '.join(allowed) or 'none'}",
        f"  run_command:         {'on' if result['run_command'] else 'off'}",
        f"  isolate cap:         {result['isolate_cap_per_hour']} hosts per rolling hour",
        "  critical approval:   "
        + (
            "on (destructive actions on critical hosts need a second analyst)"
            if result["critical_needs_approval"]
            else "off"
        ),
        f"  in effect:           {', '.join(result['effective_actions']) or 'none'}",
    ]
    return "\n".join(lines)


def _tokens(result: list[dict[str, Any]]) -> str:
    return table(
        ["NAME", "ROLE", "CREATED"], [[t["name"], t["role"], t["created"]] for t in result]
    )


def _conditions(conditions: dict[str, Any]) -> str:
    return "; ".join(
        f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in conditions.items()
        if v not in (None, [])
    )


def _playbooks(result: list[dict[str, Any]]) -> str:
    return table(
        ["NAME", "ENABLED", "MODE", "CONDITIONS", "ACTIONS", "MAX/HOST/H"],
        [
            [
                p["name"],
                p["enabled"],
                p["mode"],
                _conditions(p["conditions"]),
                ",".join(a["action"] for a in p["actions"]),
                p["max_runs_per_host_per_hour"],
            ]
            for p in result
        ],
    )


def _playbook(result: dict[str, Any]) -> str:
    state = "enabled" if result["enabled"] else "disabled"
    header = f"playbook {result['name']} ({result['mode']}, {state}), updated {result['updated']}"
    return header + "\n" + str(result["source"]).rstrip()


def _playbook_runs(result: list[dict[str, Any]]) -> str:
    return table(
        ["TIME", "PLAYBOOK", "MODE", "STATUS", "HOST", "ALERT", "WHAT"],
        [
            [
                r["at"],
                r["playbook"],
                r["mode"],
                r["status"],
                r["host_name"],
                r["alert_id"],
                r["message"],
            ]
            for r in result
        ],
    )


def _actions(result: list[dict[str, Any]]) -> str:
    return table(
        ["ACTION", "PERMISSION", "DESTRUCTIVE", "UNDO", "WHAT"],
        [
            [a["name"], a["permission"], a["destructive"], a["undo"] or "-", a["summary"]]
            for a in result
        ],
    )


def _host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _connection(c: dict[str, Any]) -> str:
    owner = f"{c['process'] or '?'} (pid {c['pid']})" if c["pid"] else "owner unknown"
    kept = f"  [{c['kept_by']}]" if c.get("kept_by") else ""
    return (
        f"    {c['transport']} {_host_port(c['local_ip'], c['local_port'])} -> "
        f"{_host_port(c['remote_ip'], c['remote_port'])} {c['status']}  {owner}{kept}"
    )


def _attempt(probe: dict[str, Any]) -> str:
    text = f"{probe['address']} port {probe['port']}: {probe['outcome']} ({probe['detail']})"
    if probe.get("dropped_by_isolation"):
        text += ", dropped by the isolation table"
    return text


def _isolation(result: dict[str, Any]) -> list[str]:
    """An isolate result for a person: what a dry run would cut and keep, or the proof."""
    lines: list[str] = []
    if result.get("dry_run"):
        plan = result["would_apply"]
        lines.append(
            f"  dry run:  nothing applied; would allow server {', '.join(plan['server'])} "
            f"port {plan['port']}, allow {', '.join(plan['allow']) or 'nothing else'}"
        )
        lines.append(f"  would cut {len(result['cut'])} connections:")
        lines += [_connection(c) for c in result["cut"]]
        lines.append(
            f"  would keep {len(result['kept'])} (and {result['loopback_connections']} on "
            "loopback):"
        )
        lines += [_connection(c) for c in result["kept"]]
        return lines
    proof = result.get("proof") or {}
    if "server" in proof:
        lines.append(f"  server:   {_attempt(proof['server'])}")
    if proof.get("blocked"):
        lines.append(f"  blocked:  {_attempt(proof['blocked'])} [{proof['blocked']['source']}]")
    elif proof.get("note"):
        lines.append(f"  blocked:  {proof['note']}")
    if "connections_cut" in result:
        lines.append(f"  cut {result['connections_cut_total']} connections:")
        lines += [_connection(c) for c in result["connections_cut"]]
    return lines


def _evidence(result: list[dict[str, Any]]) -> str:
    return table(
        ["ID", "HOST", "PATH", "SIZE", "SHA256", "COLLECTED", "BY"],
        [
            [
                e["id"],
                e["agent_id"],
                e["original_path"],
                e["size"],
                str(e["sha256"])[:16] + "...",
                e["collected_at"],
                e["requested_by"],
            ]
            for e in result
        ],
    )


def _audit(result: list[dict[str, Any]]) -> str:
    return table(
        ["AT", "ACTOR", "ACTION", "TARGET", "OUTCOME", "PARAMS"],
        [
            [a["at"], a["actor"], a["action"], a["target"], a["outcome"], json.dumps(a["params"])]
            for a in result
        ],
    )


def _intel(result: dict[str, Any]) -> str:
    counts = sorted(result["counts"].items())
    text = table(["TYPE", "INDICATORS"], counts) if counts else "no indicators stored"
    sources = sorted(result.get("sources", {}).items())
    if sources:
        text += "\n\n" + table(["FEED", "INDICATORS"], sources)
    allow = result["allow"]
    if allow:
        rows = [[a["type"], a["value"], a["reason"]] for a in allow]
        text += "\n\nallow-list:\n" + table(["TYPE", "VALUE", "REASON"], rows)
    return text


RENDERERS: dict[tuple[str, str | None], Callable[[Any], str]] = {
    ("intel", "list"): _intel,
    ("intel", "disallow"): lambda r: f"{r['removed']} is off the allow-list: it alerts again",
    ("intel", "remove"): lambda r: f"removed {r['removed']} indicators of feed {r['source']}",
    ("audit", None): _audit,
    ("evidence", "list"): _evidence,
    ("evidence", "get"): lambda r: (
        f"saved {r['saved_bytes']} bytes to {r['saved_to']}: {r['original_path']} from "
        f"{r['agent_id']}, sha256 {r['sha256']} (checked)"
    ),
    ("actions", None): _actions,
    ("status", None): lambda r: f"server ready: {r['rules']} rules loaded",
    ("enroll-token", "create"): lambda r: str(r["token"]),
    ("enroll-token", "list"): lambda r: table(
        ["ID", "CREATED", "EXPIRES", "USES LEFT", "USABLE"],
        [[t["id"], t["created"], t["expires"], t["uses_left"], t["usable"]] for t in r],
    ),
    ("enroll-token", "revoke"): lambda r: f"enrollment token {r['revoked']} revoked",
    ("hosts", "list"): _hosts,
    ("hosts", "remove"): lambda r: (
        f"host {r['removed']} ({r['name']}) removed: its agent is refused from now on; its "
        "telemetry and alerts stay"
    ),
    ("hosts", "tag"): _host_tags,
    ("hosts", "untag"): _host_tags,
    ("hosts", "isolate"): task_text,
    ("hosts", "release"): task_text,
    ("alerts", "list"): _alerts,
    ("alerts", "show"): _alert,
    ("alerts", "set-status"): lambda r: f"alert {r['id']} is now {r['status']}",
    ("hunt", None): _hunt,
    ("kill", None): task_text,
    ("respond", None): task_text,
    ("intel", "import"): lambda r: (
        f"{r['source']}: {', '.join(f'{k} {v}' for k, v in r['counts'].items())}; "
        f"{r['retro_hunt_alerts']} alerts from past telemetry"
    ),
    ("playbooks", "list"): _playbooks,
    ("playbooks", "show"): _playbook,
    ("playbooks", "add"): lambda r: (
        f"playbook {r['name']} {'added' if r['created_now'] else 'replaced'}"
        f" ({r['mode']}, {'enabled' if r['enabled'] else 'disabled'})"
    ),
    ("playbooks", "remove"): lambda r: f"playbook {r['name']} removed",
    ("playbooks", "runs"): _playbook_runs,
    ("tasks", "list"): _tasks,
    ("tasks", "show"): task_text,
    ("tasks", "approve"): task_text,
    ("tasks", "deny"): task_text,
    ("policy", "show"): _policy,
    ("policy", "set"): _policy,
    ("tokens", "create"): lambda r: str(r["token"]),
    ("tokens", "list"): _tokens,
    ("tokens", "revoke"): lambda r: f"revoked {r['revoked']} token(s) named {r['name']}",
}


def render(args: argparse.Namespace, result: Any) -> None:
    """Print a command's result for a person (JSON for anything without a renderer)."""
    renderer = RENDERERS.get((args.command, getattr(args, "sub", None)))
    print(renderer(result) if renderer else json.dumps(result, indent=2, default=str))
