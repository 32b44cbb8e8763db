"""Running Atomic Red Team procedures from ../shared/data in a harmless form.

A procedure is taken from its technique's YAML by GUID, its ``#{argument}`` placeholders filled
from the test's defaults or from overrides that point outputs into the test's own folder, and
run by its executor (sh or bash). ``sudo`` is dropped: the tests already run as root and sudo
may not be installed.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.conftest import SHARED_DATA

ATOMICS = SHARED_DATA / "atomic-red-team" / "atomics"


@dataclass(frozen=True)
class Procedure:
    technique: str
    guid: str
    name: str
    executor: str
    command: str


def load(technique: str, guid: str, **overrides: str) -> Procedure:
    """The procedure ``guid`` of ``technique`` with its arguments filled in."""
    document = yaml.safe_load((ATOMICS / technique / f"{technique}.yaml").read_text())
    for test in document["atomic_tests"]:
        if test["auto_generated_guid"] != guid:
            continue
        arguments = {
            name: str(spec.get("default", ""))
            for name, spec in (test.get("input_arguments") or {}).items()
        }
        arguments.update(overrides)
        command = re.sub(
            r"#\{(\w+)\}", lambda m, args=arguments: args[m.group(1)], test["executor"]["command"]
        )
        command = re.sub(r"(^|[;&|]\s*)sudo\s+", r"\1", command, flags=re.MULTILINE)
        return Procedure(technique, guid, test["name"], test["executor"]["name"], command)
    raise KeyError(f"no Atomic test {guid} in {technique}")


def run(procedure: Procedure, cwd: Path) -> subprocess.Popen[bytes]:
    """Start the procedure's shell; the caller waits, and knows the shell's pid."""
    shell = "/bin/bash" if procedure.executor == "bash" else "/bin/sh"
    return subprocess.Popen(
        [shell, "-c", procedure.command],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
