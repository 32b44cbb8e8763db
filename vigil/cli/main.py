"""The ``vigil`` command: run the server and agent, and work alerts, hosts and hunts.

Analyst commands are thin: each is one REST call, printed as a table or, with ``--json``, as the
API returned it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from vigil import logutil
from vigil.cli import output, playbooks, rules, scan
from vigil.cli.client import ApiClient, CliError
from vigil.errors import VigilError
from vigil.server.roles import ROLES

DEFAULT_DATA_DIR = "./vigil-data"
DEFAULT_AGENT_STATE = "/var/lib/vigil-agent"
ALERT_STATUSES = ("new", "acknowledged", "closed")
TASK_WAIT_SECONDS = 30.0


def _common() -> argparse.ArgumentParser:
    # Accepted before and after the subcommand; SUPPRESS keeps a later default from
    # overwriting an earlier value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        default=argparse.SUPPRESS,
        help="server data directory (default: $VIGIL_DATA_DIR or ./vigil-data)",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the API's JSON instead of a table",
    )
    return common


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="127.0.0.1:8443", help="HOST:PORT to serve HTTPS on")
    parser.add_argument(
        "--rules",
        action="append",
        default=[],
        metavar="DIR",
        help="a Sigma rule folder to load besides the built-in rules; repeatable",
    )
    rules.add_placeholders_option(parser)
    parser.add_argument(
        "--server-name",
        action="append",
        default=[],
        metavar="NAME",
        help="another name agents use to reach the server; repeatable",
    )


def _agent_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="agent policy (YAML): sensors, their options, the budget",
    )
    parser.add_argument(
        "--sensor", action="append", metavar="NAME", help="run only this sensor; repeatable"
    )
    parser.add_argument(
        "--quiet-path",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder whose file activity is not recorded; repeatable",
    )


def _wait_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="return once the task is queued instead of waiting for its outcome",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="show what would be done and what the guardrails say; audited, nothing is queued",
    )


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"want on or off, got {value!r}")
    return value == "on"


def _policy_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    policy = sub.add_parser("policy", parents=[common], help="the tenant's response guardrails")
    policy_sub = policy.add_subparsers(dest="sub", required=True)
    policy_sub.add_parser("show", parents=[common])
    policy_set = policy_sub.add_parser(
        "set", parents=[common], help="change some guardrails (admin); the others stay"
    )
    policy_set.add_argument(
        "--allow-actions",
        metavar="A,B,...|all",
        help="the actions the tenant allows (run_command also needs --run-command on)",
    )
    policy_set.add_argument(
        "--isolate-cap-per-hour", type=int, metavar="N", help="distinct hosts per rolling hour"
    )
    policy_set.add_argument("--run-command", type=_on_off, metavar="on|off")
    policy_set.add_argument(
        "--critical-approval",
        type=_on_off,
        metavar="on|off",
        help="destructive actions on hosts tagged critical need a second analyst",
    )


def _tokens_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    tokens = sub.add_parser("tokens", parents=[common], help="analysts' API tokens (admin)")
    tokens_sub = tokens.add_subparsers(dest="sub", required=True)
    create = tokens_sub.add_parser(
        "create", parents=[common], help="print a new token; it is shown only once"
    )
    create.add_argument("name", help="the analyst's name, unique in the tenant")
    create.add_argument("--role", default="analyst", choices=tuple(ROLES))
    tokens_sub.add_parser("list", parents=[common])
    revoke = tokens_sub.add_parser("revoke", parents=[common], help="revoke a name's tokens")
    revoke.add_argument("name")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="vigil", parents=[common], description="Vigil: detection and response for Linux hosts"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", parents=[common], help="run the server and an agent for this host")
    _server_options(up)
    _agent_options(up)
    server = sub.add_parser("server", parents=[common], help="run the server alone")
    _server_options(server)

    agent = sub.add_parser("agent", parents=[common], help="the endpoint agent")
    agent_sub = agent.add_subparsers(dest="sub", required=True)
    agent_run = agent_sub.add_parser("run", parents=[common], help="enroll if needed, then run")
    agent_run.add_argument("--server", help="server URL, e.g. https://10.0.0.1:8443")
    agent_run.add_argument("--enroll-token", help="token from 'vigil enroll-token create'")
    agent_run.add_argument("--ca-fingerprint", help="SHA-256 of the server CA (else the token's)")
    agent_run.add_argument("--state-dir", default=DEFAULT_AGENT_STATE)
    _agent_options(agent_run)

    token = sub.add_parser("enroll-token", parents=[common], help="agent enrollment tokens")
    token_sub = token.add_subparsers(dest="sub", required=True)
    create = token_sub.add_parser("create", parents=[common], help="print a new token")
    create.add_argument("--ttl", type=float, default=7 * 24 * 3600, help="lifetime in seconds")
    create.add_argument("--uses", type=int, default=100, help="how many agents may use it")
    token_sub.add_parser("list", parents=[common], help="the tenant's tokens (never their secret)")
    revoke = token_sub.add_parser("revoke", parents=[common], help="make a token unusable")
    revoke.add_argument("token_id", help="the id 'vigil enroll-token list' shows")

    sub.add_parser("status", parents=[common], help="exit 0 once the server is ready")

    hosts = sub.add_parser("hosts", parents=[common], help="enrolled hosts")
    hosts_sub = hosts.add_subparsers(dest="sub", required=True)
    hosts_sub.add_parser("list", parents=[common], help="hosts, their tags and last contact")
    for verb, text in (("tag", "add tags, e.g. critical"), ("untag", "remove tags")):
        tagging = hosts_sub.add_parser(verb, parents=[common], help=text)
        tagging.add_argument("host_id")
        tagging.add_argument("tags", nargs="+", metavar="TAG")
    isolate = hosts_sub.add_parser(
        "isolate", parents=[common], help="cut the host off the network but for the server"
    )
    isolate.add_argument("host_id")
    isolate.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    _wait_option(isolate)
    remove = hosts_sub.add_parser(
        "remove", parents=[common], help="unenroll a host (its telemetry and alerts stay)"
    )
    remove.add_argument("host_id")
    remove.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    release = hosts_sub.add_parser("release", parents=[common], help="undo isolate")
    release.add_argument("host_id")
    release.add_argument("--reason", default="")
    _wait_option(release)

    alerts = sub.add_parser("alerts", parents=[common], help="alerts raised by detection")
    alerts_sub = alerts.add_subparsers(dest="sub", required=True)
    alerts_list = alerts_sub.add_parser("list", parents=[common], help="alerts, newest first")
    alerts_list.add_argument("--status", choices=ALERT_STATUSES)
    alerts_list.add_argument(
        "--level",
        choices=("informational", "low", "medium", "high", "critical"),
        help="this level or higher",
    )
    alerts_list.add_argument("--host", help="host id")
    alerts_list.add_argument("--limit", type=int, default=500)
    show = alerts_sub.add_parser("show", parents=[common])
    show.add_argument("alert_id")
    set_status = alerts_sub.add_parser(
        "set-status", parents=[common], help="triage: acknowledge or close an alert"
    )
    set_status.add_argument("alert_id")
    set_status.add_argument("status", choices=ALERT_STATUSES)

    hunt = sub.add_parser("hunt", parents=[common], help="read-only SQL over telemetry")
    hunt.add_argument("--sql", required=True, help='e.g. SELECT "process.command_line" FROM events')

    kill = sub.add_parser("kill", parents=[common], help="kill a process on a host by entity id")
    kill.add_argument("host_id")
    kill.add_argument("entity_id")
    kill.add_argument("--tree", action="store_true", help="kill its descendants too")
    kill.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    _wait_option(kill)

    respond = sub.add_parser(
        "respond", parents=[common], help="run any response action on a host (see docs/response.md)"
    )
    respond.add_argument(
        "action", help="isolate, release, kill, quarantine, collect, ... (see 'vigil actions')"
    )
    respond.add_argument("host_id")
    respond.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an action parameter; VALUE is read as JSON when it parses",
    )
    respond.add_argument("--reason", default="", help="why; required for destructive actions")
    _wait_option(respond)

    sub.add_parser(
        "actions", parents=[common], help="the response actions, their permission and undo"
    )

    audit = sub.add_parser(
        "audit", parents=[common], help="the audit trail: who did what, to what, and how it ended"
    )
    audit.add_argument("--limit", type=int, default=100, help="newest N records (default 100)")

    evidence = sub.add_parser("evidence", parents=[common], help="collected files")
    evidence_sub = evidence.add_subparsers(dest="sub", required=True)
    evidence_sub.add_parser("list", parents=[common], help="collected files and triage bundles")
    evidence_get = evidence_sub.add_parser(
        "get", parents=[common], help="download a collected file or triage bundle"
    )
    evidence_get.add_argument("evidence_id")
    evidence_get.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")

    intel = sub.add_parser("intel", parents=[common], help="threat-intelligence feeds")
    intel_sub = intel.add_subparsers(dest="sub", required=True)
    intel_import = intel_sub.add_parser(
        "import", parents=[common], help="import a feed, then retro-hunt what it adds"
    )
    intel_import.add_argument(
        "--kind", required=True, choices=("stix", "taxii", "misp", "csv", "list")
    )
    intel_import.add_argument("--source", help="feed name (default: the file name)")
    intel_import.add_argument("path", nargs="?", type=Path, help="feed file, or a MISP feed folder")
    intel_import.add_argument("--url", help="TAXII collection URL")
    intel_sub.add_parser("list", parents=[common], help="indicator counts and the allow-list")
    subscribe = intel_sub.add_parser(
        "subscribe", parents=[common], help="import a feed by URL now and on a schedule"
    )
    subscribe.add_argument(
        "--kind", required=True, choices=("stix", "taxii", "misp", "csv", "list")
    )
    subscribe.add_argument("--url", required=True)
    subscribe.add_argument("--source", required=True, help="the feed's name")
    subscribe.add_argument("--every", type=float, default=3600, metavar="SECONDS")
    intel_sub.add_parser("subscriptions", parents=[common], help="subscribed feeds")
    intel_allow = intel_sub.add_parser("allow", parents=[common], help="never alert on a value")
    intel_allow.add_argument("value")
    intel_allow.add_argument("--kind", help="needed for file names and registry keys")
    intel_allow.add_argument("--reason", default="")
    intel_disallow = intel_sub.add_parser(
        "disallow", parents=[common], help="take a value off the allow-list"
    )
    intel_disallow.add_argument("value")
    intel_disallow.add_argument("--kind", help="as given to allow (file names, registry keys)")
    intel_remove = intel_sub.add_parser(
        "remove", parents=[common], help="drop every indicator of one feed"
    )
    intel_remove.add_argument("source", help="the feed's name, as vigil intel list shows it")

    tasks = sub.add_parser("tasks", parents=[common], help="response tasks and their outcome")
    tasks_sub = tasks.add_subparsers(dest="sub", required=True)
    tasks_sub.add_parser("list", parents=[common])
    task_show = tasks_sub.add_parser("show", parents=[common])
    task_show.add_argument("task_id")
    for verb, text in (
        ("approve", "approve a task held for a second analyst; it is then sent"),
        ("deny", "refuse a task held for approval (or withdraw your own)"),
    ):
        decide = tasks_sub.add_parser(verb, parents=[common], help=text)
        decide.add_argument("task_id")
        decide.add_argument("--reason", required=True, help="why (kept in the audit trail)")
        if verb == "approve":
            decide.add_argument(
                "--no-wait",
                action="store_true",
                help="return once the task is sent instead of waiting for its outcome",
            )

    _policy_parser(sub, common)
    _tokens_parser(sub, common)

    playbooks.add_parser(sub, parents=[common])
    scan.add_parser(sub)  # runs without a server: no --data-dir, and --format instead of --json
    rules.add_parser(sub, parents=[common])
    return parser


def _data_dir(args: argparse.Namespace) -> Path:
    value = getattr(args, "data_dir", None) or os.environ.get("VIGIL_DATA_DIR") or DEFAULT_DATA_DIR
    return Path(value).resolve()


def _run_long(args: argparse.Namespace) -> int:
    from vigil.cli import run

    data_dir = _data_dir(args)
    if args.command == "server":
        options = None
    else:
        options = run.AgentOptions(args.policy, args.sensor, args.quiet_path)
    if args.command == "agent":
        assert options is not None
        run.run_agent(
            Path(args.state_dir), args.server, args.enroll_token, args.ca_fingerprint, options
        )
        return 0
    try:
        config = run.server_config(
            data_dir, args.listen, args.rules, args.server_name, args.placeholders
        )
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    if args.command == "up":
        assert options is not None
        run.run_up(config, options)
    else:
        run.run_server(config)
    return 0


def _api_call(args: argparse.Namespace, api: ApiClient) -> Any:
    command, sub = args.command, getattr(args, "sub", None)
    if command == "status":
        return api.call("GET", "/status")
    if command == "enroll-token" and sub == "list":
        return api.call("GET", "/enroll-tokens")
    if command == "enroll-token" and sub == "revoke":
        return api.call("DELETE", f"/enroll-tokens/{quote(args.token_id, safe='')}")
    if command == "enroll-token":
        return api.call("POST", "/enroll-tokens", {"ttl_seconds": args.ttl, "uses": args.uses})
    if command == "hosts" and sub == "remove":
        return api.call("POST", f"/hosts/{args.host_id}/remove", {"reason": args.reason})
    if command == "hosts" and sub == "list":
        return api.call("GET", "/hosts")
    if command == "hosts" and sub == "tag":
        return api.call("POST", f"/hosts/{args.host_id}/tags", {"tags": args.tags})
    if command == "hosts" and sub == "untag":
        host = None
        for tag in args.tags:
            host = api.call("DELETE", f"/hosts/{args.host_id}/tags/{tag}")
        return host
    if command == "hosts":
        body = {"reason": args.reason, "dry_run": args.dry_run}
        task = api.call("POST", f"/hosts/{args.host_id}/{sub}", body)
        return task if args.no_wait else _wait_for_task(api, task)
    if command == "alerts" and sub == "list":
        filters = {
            "status": args.status,
            "level": args.level,
            "host": args.host,
            "limit": args.limit,
        }
        return api.call("GET", "/alerts", params={k: v for k, v in filters.items() if v})
    if command == "alerts" and sub == "set-status":
        return api.call("PATCH", f"/alerts/{args.alert_id}", {"status": args.status})
    if command == "alerts":
        return api.call("GET", f"/alerts/{args.alert_id}")
    if command == "hunt":
        return api.call("POST", "/hunt", {"sql": args.sql})
    if command == "kill":
        body = {
            "entity_id": args.entity_id,
            "tree": args.tree,
            "reason": args.reason,
            "dry_run": args.dry_run,
        }
        task = api.call("POST", f"/hosts/{args.host_id}/kill", body)
        return task if args.no_wait else _wait_for_task(api, task)
    if command == "intel" and sub == "import":
        body = {
            "kind": args.kind,
            # A folder (a MISP feed) is named after itself, not the server's copy of it.
            "source": args.source or (args.path.name if args.path and args.path.is_dir() else None),
            "url": args.url,
            "files": read_feed_files(args.path) if args.path else {},
        }
        return api.call("POST", "/intel/import", body)
    if command == "intel" and sub == "list":
        return api.call("GET", "/intel/indicators")
    if command == "intel" and sub == "subscribe":
        body = {
            "kind": args.kind,
            "url": args.url,
            "source": args.source,
            "every_seconds": args.every,
        }
        return api.call("POST", "/intel/subscriptions", body)
    if command == "intel" and sub == "subscriptions":
        return api.call("GET", "/intel/subscriptions")
    if command == "intel" and sub == "disallow":
        return api.call("POST", "/intel/disallow", {"value": args.value, "kind": args.kind})
    if command == "intel" and sub == "remove":
        return api.call("DELETE", f"/intel/sources/{quote(args.source, safe='')}")
    if command == "intel":
        return api.call(
            "POST", "/intel/allow", {"value": args.value, "kind": args.kind, "reason": args.reason}
        )
    if command == "evidence" and sub == "list":
        return api.call("GET", "/evidence")
    if command == "evidence":
        meta = api.call("GET", f"/evidence/{args.evidence_id}")
        size, sha256 = api.download(f"/evidence/{args.evidence_id}/content", args.output)
        if sha256 != meta["sha256"]:
            raise CliError(
                f"{args.output}: sha256 {sha256} is not the evidence's {meta['sha256']}; the "
                "copy is damaged or was changed in transit: do not use it, download it again"
            )
        return {**meta, "saved_to": str(args.output), "saved_bytes": size}
    if command == "actions":
        return api.call("GET", "/actions")
    if command == "audit":
        return api.call("GET", "/audit", params={"limit": args.limit})
    if command == "respond":
        body = {
            "action": args.action,
            "params": parse_params(args.param),
            "reason": args.reason,
            "dry_run": args.dry_run,
        }
        task = api.call("POST", f"/hosts/{args.host_id}/respond", body)
        return task if args.no_wait else _wait_for_task(api, task)
    if command == "playbooks":
        return playbooks.call(args, api)
    if command == "tasks" and sub == "list":
        return api.call("GET", "/tasks")
    if command == "tasks" and sub in ("approve", "deny"):
        task = api.call("POST", f"/tasks/{args.task_id}/{sub}", {"reason": args.reason})
        return task if sub == "deny" or args.no_wait else _wait_for_task(api, task)
    if command == "tasks":
        return api.call("GET", f"/tasks/{args.task_id}")
    if command == "policy" and sub == "show":
        return api.call("GET", "/policy")
    if command == "policy":
        return api.call("PATCH", "/policy", policy_changes(args))
    if command == "tokens" and sub == "create":
        return api.call("POST", "/tokens", {"name": args.name, "role": args.role})
    if command == "tokens" and sub == "list":
        return api.call("GET", "/tokens")
    if command == "tokens":
        return api.call("DELETE", f"/tokens/{args.name}")
    raise CliError(f"unknown command {command!r}")


def policy_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The fields ``vigil policy set`` was given, as the PATCH body."""
    changes: dict[str, Any] = {}
    if args.allow_actions is not None:
        names = [a.strip() for a in args.allow_actions.split(",") if a.strip()]
        changes["allowed_actions"] = None if names == ["all"] else names
    if args.isolate_cap_per_hour is not None:
        changes["isolate_cap_per_hour"] = args.isolate_cap_per_hour
    if args.run_command is not None:
        changes["run_command"] = args.run_command
    if args.critical_approval is not None:
        changes["critical_needs_approval"] = args.critical_approval
    if not changes:
        raise CliError(
            "nothing to change: give --allow-actions, --isolate-cap-per-hour, --run-command "
            "or --critical-approval"
        )
    return changes


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as action parameters; a VALUE that is JSON is taken as such."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--param wants KEY=VALUE, got {pair!r}")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def read_feed_files(path: Path) -> dict[str, str]:
    """A feed file, or every file of a feed folder, as relative path -> text."""
    if not path.exists():
        raise CliError(f"no feed at {path}")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    base = path.parent if path.is_file() else path
    try:
        return {str(f.relative_to(base)): f.read_text() for f in files}
    except UnicodeDecodeError as exc:
        raise CliError(f"feed file is not text ({exc}); feeds are JSON, CSV or text") from exc


FAILED_TASK_STATES = ("failed", "expired", "denied")


def _wait_for_task(api: ApiClient, task: dict[str, Any]) -> dict[str, Any]:
    """Poll a task until the agent reports an outcome, or give up and show it as it is.

    A dry run, and a task held for approval, are shown at once: nothing is on its way.
    """
    if task.get("dry_run"):
        return task
    deadline = time.monotonic() + TASK_WAIT_SECONDS
    while task["status"] in ("queued", "delivered", "running") and time.monotonic() < deadline:
        time.sleep(0.3)
        task = api.call("GET", f"/tasks/{task['id']}")
    return task


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Servers and agents log what they do; scan and rules check print every problem themselves,
    # so their log would only say it twice. VIGIL_LOG overrides either.
    logutil.configure(None if args.command in ("up", "server", "agent") else "error")
    try:
        if args.command in ("up", "server", "agent"):
            return _run_long(args)
        if args.command in ("scan", "rules"):
            try:
                return scan.run(args) if args.command == "scan" else rules.run(args)
            except BrokenPipeError:
                return _reader_gone()  # `vigil scan ... | head`
        result = _api_call(args, ApiClient.from_environment(_data_dir(args)))
    except (CliError, VigilError) as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return 1
    try:
        if getattr(args, "json", False):
            print(json.dumps(result, indent=2, default=str))
        else:
            output.render(args, result)
        sys.stdout.flush()
    except BrokenPipeError:
        return _reader_gone()  # `vigil tasks list | head`
    return task_exit_code(args, result)


def _reader_gone() -> int:
    # The reader of our output went away: not an error of ours. Python's own flush at exit
    # would fail on the closed pipe again, so stdout goes to /dev/null from here on.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def task_exit_code(args: argparse.Namespace, result: Any) -> int:
    """1 when a command that ran a task saw it end badly (failed, expired, denied), else 0.

    So a script that isolates, kills or responds can tell; showing a failed task is no error.
    """
    ran_task = args.command in ("respond", "kill") or (
        args.command,
        getattr(args, "sub", None),
    ) in (("hosts", "isolate"), ("hosts", "release"), ("tasks", "approve"))
    if ran_task and isinstance(result, dict) and result.get("status") in FAILED_TASK_STATES:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
