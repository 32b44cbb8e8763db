"""``vigil playbooks``: list, add, show and remove response playbooks, and see what they did."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vigil.cli.client import ApiClient, CliError


def add_parser(sub: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Register the ``playbooks`` subcommand on the ``vigil`` command's subparsers."""
    playbooks = sub.add_parser(
        "playbooks",
        parents=list(parents),
        help="automatic response to alerts (see docs/response.md, Playbooks)",
    )
    playbooks_sub = playbooks.add_subparsers(dest="sub", required=True)
    playbooks_sub.add_parser("list", parents=list(parents), help="the tenant's playbooks")
    add = playbooks_sub.add_parser(
        "add", parents=list(parents), help="add a playbook, or replace the one of its name"
    )
    add.add_argument("file", type=Path, help="the playbook, YAML (or JSON when it ends in .json)")
    show = playbooks_sub.add_parser("show", parents=list(parents), help="one playbook")
    show.add_argument("name")
    remove = playbooks_sub.add_parser("remove", parents=list(parents), help="remove a playbook")
    remove.add_argument("name")
    runs = playbooks_sub.add_parser(
        "runs", parents=list(parents), help="what playbooks did, or would have done in dry run"
    )
    runs.add_argument("--playbook", metavar="NAME", help="only this playbook's runs")
    runs.add_argument("--limit", type=int, default=200)


def call(args: argparse.Namespace, api: ApiClient) -> Any:
    """The REST call of a ``vigil playbooks`` command."""
    if args.sub == "list":
        return api.call("GET", "/playbooks")
    if args.sub == "add":
        return api.call(
            "POST",
            "/playbooks",
            content=read_playbook(args.file),
            content_type="application/json" if args.file.suffix == ".json" else "application/yaml",
        )
    if args.sub == "show":
        return api.call("GET", f"/playbooks/{args.name}")
    if args.sub == "remove":
        return api.call("DELETE", f"/playbooks/{args.name}")
    params = {"playbook": args.playbook, "limit": args.limit}
    return api.call("GET", "/playbooks/runs", params={k: v for k, v in params.items() if v})


def read_playbook(path: Path) -> str:
    """The text of a playbook file."""
    try:
        return path.read_text()
    except FileNotFoundError as exc:
        raise CliError(f"no playbook file {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read playbook {path}: {exc}") from exc
