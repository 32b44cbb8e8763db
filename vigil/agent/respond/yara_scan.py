"""Scan files, folders or a process's memory with YARA rules sent in the task.

The rules are compiled in the agent first, so bad YARA source fails at once with yara's own
message. The scan itself runs in a separate worker process (``python -c`` calling
:func:`worker_main`) that lowers its priority with ``os.nice(10)``, caps its CPU time with
``RLIMIT_CPU``, gives each file its own YARA timeout and sleeps between files to stay within a
CPU share. The agent kills the worker if it outlives the scan's time budget.

``include`` directives are refused, so rules from a task cannot read files on the endpoint.

Reference: https://yara.readthedocs.io/en/stable/yarapython.html
"""

from __future__ import annotations

import json
import logging
import os
import resource
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vigil.agent.respond.base import Action
from vigil.agent.respond.errors import ResponseError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300
MAX_TIMEOUT_S = 3600
DEFAULT_FILE_TIMEOUT_S = 30
DEFAULT_MAX_FILES = 10_000
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
DEFAULT_CPU_PERCENT = 25
MAX_MATCHES = 1000
MAX_SKIPPED = 1000
MAX_STRINGS = 20
MAX_INSTANCES = 10
MAX_DATA_BYTES = 64
# Time the worker gets beyond the scan budget to start, report and exit before it is killed.
WORKER_GRACE_S = 15


def _load_yara() -> Any:
    try:
        import yara  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise ResponseError(
            "yara: yara-python is not installed on this endpoint; "
            "install it with 'pip install yara-python>=4.3'"
        ) from exc
    return yara


def compile_rules(source: str) -> Any:
    """Compile YARA ``source`` with includes disabled.

    Raises:
        ResponseError: the source does not compile; the message is yara's, with the line.
    """
    yara = _load_yara()
    try:
        return yara.compile(source=source, includes=False)
    except yara.Error as exc:
        raise ResponseError(f"yara: the rules do not compile: {exc}; fix the rule text") from exc


def _int_param(params: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = params.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ResponseError(f"yara: {key!r} must be an integer from {low} to {high}, got {value!r}")
    return value


def _parse_params(params: dict[str, Any]) -> dict[str, Any]:
    rules = params.get("rules")
    if not isinstance(rules, str) or not rules.strip():
        raise ResponseError("yara: 'rules' must be YARA source text")
    paths = params.get("paths")
    pid = params.get("pid")
    if (paths is None) == (pid is None):
        raise ResponseError("yara: give either 'paths' (files or folders) or 'pid', not both")
    if paths is not None and (
        not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths)
    ):
        raise ResponseError("yara: 'paths' must be a non-empty list of file or folder paths")
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool) or pid < 1):
        raise ResponseError(f"yara: 'pid' must be a positive integer, got {pid!r}")
    return {
        "rules": rules,
        "paths": paths,
        "pid": pid,
        "timeout_seconds": _int_param(
            params, "timeout_seconds", DEFAULT_TIMEOUT_S, 1, MAX_TIMEOUT_S
        ),
        "file_timeout_seconds": _int_param(
            params, "file_timeout_seconds", DEFAULT_FILE_TIMEOUT_S, 1, MAX_TIMEOUT_S
        ),
        "max_files": _int_param(params, "max_files", DEFAULT_MAX_FILES, 1, 1_000_000),
        "max_file_bytes": _int_param(params, "max_file_bytes", DEFAULT_MAX_FILE_BYTES, 1, 1 << 40),
        "cpu_percent": _int_param(params, "cpu_percent", DEFAULT_CPU_PERCENT, 1, 100),
    }


class YaraScanAction(Action):
    """Scan files, folders (recursively) or one process's memory with YARA rules.

    Params:
        rules: YARA source text (``include`` is not allowed).
        paths: Files or folders to scan; folders are walked without following symlinks.
        pid: Instead of ``paths``, the process whose memory to scan.
        timeout_seconds: Budget of the whole scan (default 300, at most 3600).
        file_timeout_seconds: YARA timeout per file (default 30).
        max_files: Files to scan at most (default 10000); more sets ``truncated``.
        max_file_bytes: Larger files are skipped (default 64 MiB).
        cpu_percent: CPU share to keep to, by sleeping between files (default 25).

    Returns ``{"matches": [...], "scanned": int, "skipped": [{"path", "reason"}],
    "skipped_count": int, "truncated": bool, "truncated_reason": str | None}``. Each match has
    ``path`` or ``pid``, ``rule``, ``namespace``, ``tags``, ``meta`` and ``strings``
    (identifier and up to 10 instances with offset, length and the first 64 bytes in hex).
    """

    name = "yara"
    permission = "response.yara"
    destructive = False
    long_running = True

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """Compile the rules, run the scan in a niced worker and return what matched."""
        job = _parse_params(params)
        compile_rules(job["rules"])

        budget = job["timeout_seconds"] + WORKER_GRACE_S
        command = [
            sys.executable,
            "-c",
            "from vigil.agent.respond.yara_scan import worker_main; worker_main()",
        ]
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        try:
            done = subprocess.run(
                command,
                input=json.dumps(job).encode(),
                capture_output=True,
                timeout=budget,
                env=env,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ResponseError(
                f"yara: the scan worker did not finish within {budget} s and was killed; "
                "scan fewer paths or raise 'timeout_seconds'"
            ) from exc
        try:
            result: dict[str, Any] = json.loads(done.stdout)
        except ValueError as exc:
            tail = done.stderr.decode(errors="replace")[-2000:]
            raise ResponseError(
                f"yara: the scan worker failed (exit {done.returncode}): {tail.strip()}"
            ) from exc
        if "error" in result:
            raise ResponseError(f"yara: {result['error']}")
        log.info(
            "yara scan: %d scanned, %d matches, %d skipped",
            result["scanned"],
            len(result["matches"]),
            result["skipped_count"],
        )
        return result


def _match_record(match: Any) -> dict[str, Any]:
    strings = []
    for found in match.strings[:MAX_STRINGS]:
        strings.append(
            {
                "identifier": found.identifier,
                "instances": [
                    {
                        "offset": inst.offset,
                        "length": inst.matched_length,
                        "data": bytes(inst.matched_data[:MAX_DATA_BYTES]).hex(),
                    }
                    for inst in found.instances[:MAX_INSTANCES]
                ],
                "instances_total": len(found.instances),
            }
        )
    return {
        "rule": match.rule,
        "namespace": match.namespace,
        "tags": list(match.tags),
        "meta": {k: v for k, v in match.meta.items() if isinstance(v, str | int | bool)},
        "strings": strings,
        "strings_truncated": len(match.strings) > MAX_STRINGS,
    }


class _Scan:
    """The worker's state: what matched, what was skipped, and the CPU-share pacing."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.rules = compile_rules(job["rules"])
        self.deadline = time.monotonic() + job["timeout_seconds"]
        self.matches: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []
        self.skipped_count = 0
        self.scanned = 0
        self.truncated_reason: str | None = None

    def skip(self, path: str, reason: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < MAX_SKIPPED:
            self.skipped.append({"path": path, "reason": reason})

    def stop(self, reason: str) -> None:
        if self.truncated_reason is None:
            self.truncated_reason = reason

    def file_timeout(self) -> int:
        remaining = int(self.deadline - time.monotonic())
        return max(1, min(int(self.job["file_timeout_seconds"]), remaining))

    def add(self, where: dict[str, Any], found: list[Any]) -> None:
        for match in found:
            if len(self.matches) >= MAX_MATCHES:
                self.stop(f"more than {MAX_MATCHES} matches")
                return
            self.matches.append({**where, **_match_record(match)})

    def scan_file(self, path: str) -> None:
        yara = _load_yara()
        if time.monotonic() >= self.deadline:
            self.stop(f"timeout_seconds {self.job['timeout_seconds']} reached")
            return
        if self.scanned >= self.job["max_files"]:
            self.stop(f"max_files {self.job['max_files']} reached")
            return
        try:
            info = os.stat(path, follow_symlinks=False)
        except OSError as exc:
            self.skip(path, f"cannot stat: {exc.strerror}")
            return
        if not stat.S_ISREG(info.st_mode):
            self.skip(path, "not a regular file")
            return
        if info.st_size > self.job["max_file_bytes"]:
            self.skip(path, f"larger than max_file_bytes ({info.st_size} bytes)")
            return

        started = time.process_time()
        wall = time.monotonic()
        try:
            found = self.rules.match(filepath=path, timeout=self.file_timeout())
        except yara.TimeoutError:
            self.skip(path, "per-file timeout")
            found = []
        except yara.Error as exc:
            self.skip(path, f"yara error: {exc}")
            found = []
        else:
            self.scanned += 1
        self.add({"path": path}, found)

        # Sleep so that CPU time over wall time stays near cpu_percent.
        used = max(time.process_time() - started, time.monotonic() - wall)
        share = self.job["cpu_percent"] / 100
        if share < 1:
            pause = used * (1 - share) / share
            time.sleep(min(pause, max(0.0, self.deadline - time.monotonic())))

    def scan_tree(self, top: str) -> None:
        if not os.path.isdir(top) or os.path.islink(top):
            self.scan_file(top)
            return

        def on_error(exc: OSError) -> None:
            self.skip(str(exc.filename), f"cannot list: {exc.strerror}")

        for folder, dirs, files in os.walk(top, onerror=on_error):
            dirs.sort()
            for name in sorted(files):
                if self.truncated_reason is not None:
                    return
                self.scan_file(os.path.join(folder, name))

    def scan_pid(self, pid: int) -> None:
        yara = _load_yara()
        try:
            found = self.rules.match(pid=pid, timeout=self.file_timeout())
        except yara.TimeoutError:
            self.stop(f"timeout scanning pid {pid}")
            return
        except yara.Error as exc:
            raise ResponseError(
                f"cannot scan the memory of pid {pid}: {exc}; check that the process exists "
                "and that the agent runs as root (or with CAP_SYS_PTRACE)"
            ) from exc
        self.scanned = 1
        self.add({"pid": pid}, found)

    def result(self) -> dict[str, Any]:
        return {
            "matches": self.matches,
            "scanned": self.scanned,
            "skipped": self.skipped,
            "skipped_count": self.skipped_count,
            "truncated": self.truncated_reason is not None,
            "truncated_reason": self.truncated_reason,
        }


def worker_main() -> None:
    """Entry point of the scan worker: read the job as JSON on stdin, print the result as JSON."""
    job = json.loads(sys.stdin.buffer.read())
    os.nice(10)
    cpu = job["timeout_seconds"] + WORKER_GRACE_S
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    try:
        scan = _Scan(job)
        if job["pid"] is not None:
            scan.scan_pid(job["pid"])
        else:
            for top in job["paths"]:
                if scan.truncated_reason is not None:
                    break
                scan.scan_tree(top)
        out = scan.result()
    except ResponseError as exc:
        out = {"error": str(exc).removeprefix("yara: ")}
    sys.stdout.write(json.dumps(out))
    sys.stdout.flush()
