"""Plain-text output of analyst commands, for people at a terminal."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width table; cells are cut at 80 characters."""
    cells = [[str(c if c is not None else "")[:80] for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def when(epoch: float | None) -> str:
    """An epoch time as a UTC timestamp to the second."""
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def render(args: argparse.Namespace, result: Any) -> None:
    """Print a command's result for a person."""
    command = args.command
    if command == "status":
        print(f"server ready: {result['rules']} rules loaded")
    elif command == "enroll-token":
        print(result["token"])
    elif command == "hosts" and args.hosts_command == "list":
        print(
            table(
                ["ID", "NAME", "ISOLATED", "LAST SEEN"],
                [[h["id"], h["name"], h["isolated"], when(h["last_seen"])] for h in result],
            )
        )
    elif command == "alerts" and args.alerts_command == "list":
        print(
            table(
                ["ID", "TIME", "LEVEL", "RULE", "ATT&CK", "HOST"],
                [
                    [
                        a["id"],
                        a["@timestamp"],
                        a["rule"]["level"],
                        a["rule"]["title"],
                        ",".join(a["attack"]),
                        a["host"]["name"],
                    ]
                    for a in result
                ],
            )
        )
    elif command == "alerts":
        print(f"{result['rule']['title']} ({result['rule']['level']}) on {result['host']['name']}")
        print(f"ATT&CK: {', '.join(result['attack'])}")
        print("Process tree:")
        for depth, node in enumerate(result["process_tree"]):
            print(f"{'  ' * depth}└ [{node['pid']}] {node['command_line'] or node['executable']}")
    elif command == "hunt":
        print(
            table(
                result["columns"], [[row[c] for c in result["columns"]] for row in result["rows"]]
            )
        )
        if result["truncated"]:
            print("(more rows than shown: narrow the query)")
    elif command == "tasks" and args.tasks_command == "list":
        print(
            table(
                ["ID", "ACTION", "HOST", "STATUS", "BY"],
                [
                    [t["id"], t["action"], t["agent_id"], t["status"], t["requested_by"]]
                    for t in result
                ],
            )
        )
    else:
        print(json.dumps(result, indent=2, default=str))
