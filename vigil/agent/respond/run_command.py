"""Run one command on the endpoint, when the tenant's policy allows it.

The command runs without a shell unless the task asks for one, in its own process group, with
stdin closed, a CPU-time limit and a wall-clock timeout; on timeout the whole group is killed.
stdout and stderr are read concurrently and kept up to a byte cap each; the rest is read and
dropped so the command never blocks on a full pipe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import subprocess
import threading
import time
from typing import IO, Any

from vigil.agent.respond.base import Action
from vigil.agent.respond.errors import ResponseError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60
MAX_TIMEOUT_S = 600
DEFAULT_MAX_OUTPUT = 1024 * 1024
MAX_OUTPUT = 16 * 1024 * 1024
CHUNK = 64 * 1024
# How long to wait for the pipes to close after the group was killed.
DRAIN_AFTER_KILL_S = 5.0


class _Capture:
    """Read a pipe to its end on a thread, keeping at most ``limit`` bytes."""

    def __init__(self, pipe: IO[bytes], limit: int) -> None:
        self.pipe = pipe
        self.limit = limit
        self.kept = bytearray()
        self.total = 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while chunk := os.read(self.pipe.fileno(), CHUNK):
                self.total += len(chunk)
                room = self.limit - len(self.kept)
                if room > 0:
                    self.kept += chunk[:room]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.kept)

    def text(self) -> str:
        return self.kept.decode("utf-8", errors="replace")


def _parse_params(params: dict[str, Any]) -> tuple[list[str], float, int]:
    argv = params.get("argv")
    shell = params.get("shell", False)
    if not isinstance(shell, bool):
        raise ResponseError(f"run_command: 'shell' must be true or false, got {shell!r}")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ResponseError("run_command: 'argv' must be a non-empty list of strings")
    if shell:
        if len(argv) != 1:
            raise ResponseError(
                "run_command: with 'shell': true, 'argv' must hold exactly one string, "
                "the shell command line"
            )
        argv = ["/bin/sh", "-c", argv[0]]
    timeout = params.get("timeout_seconds", DEFAULT_TIMEOUT_S)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool):
        raise ResponseError(f"run_command: 'timeout_seconds' must be a number, got {timeout!r}")
    if not 0 < timeout <= MAX_TIMEOUT_S:
        raise ResponseError(
            f"run_command: 'timeout_seconds' must be above 0 and at most {MAX_TIMEOUT_S}"
        )
    limit = params.get("max_output_bytes", DEFAULT_MAX_OUTPUT)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit <= MAX_OUTPUT:
        raise ResponseError(
            f"run_command: 'max_output_bytes' must be an integer from 0 to {MAX_OUTPUT}"
        )
    return argv, float(timeout), limit


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class RunCommandAction(Action):
    """Run a command (no shell unless asked) under a timeout, returning its capped output.

    Refused unless the tenant's policy allows it (``ActionContext.allow_run_command``).

    Params:
        argv: The program and its arguments; with ``shell`` true, one string for ``/bin/sh -c``.
        shell: Run the single ``argv`` string through ``/bin/sh -c`` (default false).
        timeout_seconds: Wall-clock limit (default 60, at most 600); the process group is
            killed when it is reached. The CPU time of the command is limited to the same.
        max_output_bytes: Bytes kept of stdout and of stderr each (default 1 MiB).

    Returns ``{"exit_code": int | None, "stdout": str, "stderr": str, "timed_out": bool,
    "truncated": bool, "stdout_bytes": int, "stderr_bytes": int}``; ``exit_code`` is negative
    when a signal ended the command, and the ``*_bytes`` counts are the full output sizes.
    """

    name = "run_command"
    permission = "response.run_command"
    destructive = True
    long_running = True

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """Check the policy, run the command in its own process group and collect its output."""
        if not self.context.allow_run_command:
            raise ResponseError(
                "run_command: refused: the tenant policy does not allow running commands on "
                "this endpoint; an administrator must enable run_command in the tenant policy"
            )
        argv, timeout, limit = _parse_params(params)

        deadline = time.monotonic() + timeout
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                process_group=0,
            )
        except OSError as exc:
            raise ResponseError(f"run_command: cannot start {argv[0]!r}: {exc.strerror}") from exc
        cpu = int(timeout) + 1
        with contextlib.suppress(OSError):
            resource.prlimit(process.pid, resource.RLIMIT_CPU, (cpu, cpu))
        assert process.stdout is not None and process.stderr is not None
        out = _Capture(process.stdout, limit)
        err = _Capture(process.stderr, limit)

        timed_out = False
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        # Children left in the background may hold the pipes open; they share the deadline.
        for capture in (out, err):
            capture.thread.join(max(0.0, deadline - time.monotonic()))
        if timed_out or out.thread.is_alive() or err.thread.is_alive():
            timed_out = True
            _kill_group(process.pid)
            for capture in (out, err):
                capture.thread.join(DRAIN_AFTER_KILL_S)
        exit_code = process.wait()
        for capture in (out, err):
            # A reader still blocked (a child escaped the group) keeps its pipe; it is a daemon.
            if not capture.thread.is_alive():
                capture.pipe.close()

        truncated = out.truncated or err.truncated
        log.info(
            "run_command %s: exit %s, timed out %s, truncated %s",
            argv[0],
            exit_code,
            timed_out,
            truncated,
        )
        return {
            "exit_code": exit_code,
            "stdout": out.text(),
            "stderr": err.text(),
            "timed_out": timed_out,
            "truncated": truncated,
            "stdout_bytes": out.total,
            "stderr_bytes": err.total,
        }
