"""``vigil rules check``: load every Sigma rule and correlation rule of some folders, offline.

Each rule that does not load is printed on one line with its file, id and reason, then a summary
counts what loaded and what failed, by reason. Correlation rules are linked across all the
folders given, as the server does.

Exit status: 0 when every rule loads, 1 when some do not, 2 for bad arguments (a path that does
not exist, no rule file at all, an unreadable placeholders file).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from vigil.detect import DetectError, RuleLoadError, load_placeholders
from vigil.detect.fieldmap import default_fieldmap
from vigil.detect.ruleset import link_correlations, load_files, rule_files

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_ARGUMENTS = 2

# What differs between two failures of the same kind: quoted names and numbers (placeholder
# names are kept: which values are missing is what a reader of the summary needs).
_SPECIFICS = (
    (re.compile(r"^an earlier rule in .* has this id"), "an earlier rule in ... has this id"),
    (re.compile(r"'[^']*'|\"[^\"]*\""), "'...'"),
    (re.compile(r"\b\d+\b"), "N"),
)


def add_parser(sub: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Register the ``rules`` subcommand on the ``vigil`` command's subparsers."""
    rules = sub.add_parser("rules", parents=list(parents), help="work with Sigma rule folders")
    rules_sub = rules.add_subparsers(dest="sub", required=True)
    check = rules_sub.add_parser(
        "check",
        parents=list(parents),
        help="load every rule and correlation rule of some folders and report what fails",
        description=(
            "Load every Sigma rule and correlation rule under the folders (recursively, *.yml and "
            "*.yaml), print each rule that cannot load with its file and reason, then a summary. "
            "Exit 0 when all load, 1 when some fail, 2 for bad arguments."
        ),
    )
    check.add_argument("paths", nargs="+", type=Path, metavar="DIR", help="rule folder or file")
    add_placeholders_option(check)


def add_placeholders_option(parser: argparse.ArgumentParser) -> None:
    """``--placeholders FILE``, for every command that loads rules."""
    parser.add_argument(
        "--placeholders",
        type=Path,
        metavar="FILE",
        help="YAML mapping of placeholder name to values, for rules using |expand",
    )


def reason(error: RuleLoadError) -> str:
    """The kind of a load failure: its message with rule-specific names and numbers blanked."""
    text = error.message.strip().splitlines()[0] if error.message.strip() else ""
    for pattern, blank in _SPECIFICS:
        text = pattern.sub(blank, text)
    return text.split("; ", 1)[0]


def check(paths: Sequence[Path], placeholders: dict[str, list[str]]) -> dict[str, Any]:
    """Load the rules under ``paths`` and describe the outcome as a JSON-ready report.

    Raises:
        DetectError: No rule file under the paths (the message names them).
    """
    files = list(rule_files(paths))
    if not files:
        raise DetectError("no rule files (*.yml, *.yaml) under " + ", ".join(map(str, paths)))
    fieldmap = default_fieldmap()
    everything = load_files(files, fieldmap, placeholders)
    rules, correlations, failed = link_correlations(everything.rules, everything.pending, fieldmap)
    errors = everything.errors + failed
    by_reason = Counter(reason(error) for error in errors)
    return {
        "files": len(files),
        "rules": len(rules),
        "correlations": len(correlations),
        "failed": len(errors),
        "by_reason": dict(by_reason.most_common()),
        "errors": [
            {
                "path": error.path,
                "rule_id": error.rule_id,
                "message": error.message,
                "reason": reason(error),
            }
            for error in errors
        ],
    }


def render(report: dict[str, Any], out: TextIO) -> None:
    """Print a report of :func:`check` as text: one line per failure, then the summary."""
    for error in report["errors"]:
        where = error["path"] + (f" (rule {error['rule_id']})" if error["rule_id"] else "")
        print(f"{where}: {' '.join(error['message'].split())}", file=out)
    print(
        f"{report['files']} files: {report['rules']} rules and {report['correlations']} "
        f"correlation rules loaded, {report['failed']} failed",
        file=out,
    )
    for text, count in report["by_reason"].items():
        print(f"  {count:6d}  {text}", file=out)


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``vigil rules check`` for parsed arguments; returns the exit status.

    Args:
        args: The parsed command line.
        out: Where the report goes; standard output when None.
        err: Where argument errors go; standard error when None.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    missing = [str(path) for path in args.paths if not path.exists()]
    if missing:
        print(f"vigil rules check: no such file or folder: {', '.join(missing)}", file=err)
        return EXIT_BAD_ARGUMENTS
    try:
        report = check(args.paths, load_placeholders(args.placeholders))
    except DetectError as exc:
        print(f"vigil rules check: {exc}", file=err)
        return EXIT_BAD_ARGUMENTS
    if getattr(args, "json", False):
        print(json.dumps(report, indent=2), file=out)
    else:
        render(report, out)
    return EXIT_FAILED if report["failed"] else EXIT_OK
