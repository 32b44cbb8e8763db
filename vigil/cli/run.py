"""Long-running commands: the server, the agent, and both together (``vigil up``)."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vigil.agent import identity as identity_mod
from vigil.agent.errors import AgentError
from vigil.agent.policy import Policy
from vigil.agent.runtime import Agent, default_policy
from vigil.agent.sensors import REGISTRY as SENSORS
from vigil.agent.statelock import hold_state_dir
from vigil.detect import builtin_rules_dir, load_placeholders
from vigil.schema.tokens import make_enroll_token
from vigil.server.app import ADMIN_TOKEN_FILE, build_server
from vigil.server.context import ServerConfig, ServerContext
from vigil.store.state import DEFAULT_TENANT

log = logging.getLogger(__name__)

STARTUP_SECONDS = 30.0
AGENT_STOP_SECONDS = 60
AGENT_RESTART_SECONDS = 5.0


@dataclass
class AgentOptions:
    """How the agent is told what to run: a policy file, a sensor list, quiet folders."""

    policy: Path | None = None
    sensors: list[str] | None = None
    quiet_paths: list[str] = field(default_factory=list)

    def build(self) -> Policy:
        """The policy these options describe.

        Raises:
            AgentError: The policy file is bad, or a ``--sensor`` names no sensor (a typo would
                leave the agent running blind).
        """
        policy = Policy.load(self.policy, sorted(SENSORS)) if self.policy else default_policy()
        if self.sensors:
            unknown = [name for name in self.sensors if name not in SENSORS]
            if unknown:
                raise AgentError(
                    f"no sensor named {', '.join(map(repr, unknown))}; known sensors: "
                    f"{', '.join(sorted(SENSORS))}"
                )
            policy = policy.only(self.sensors)
        policy.private_paths = (*policy.private_paths, *self.quiet_paths)
        if self.quiet_paths and "file_fanotify" in policy.sensors:
            options = policy.sensors["file_fanotify"]
            options["file_exclude"] = [*options.get("file_exclude", []), *self.quiet_paths]
        return policy

    def arguments(self) -> list[str]:
        """The same options as command-line arguments, for a child agent process."""
        args = ["--policy", str(self.policy)] if self.policy else []
        for name in self.sensors or []:
            args += ["--sensor", name]
        for path in self.quiet_paths:
            args += ["--quiet-path", path]
        return args


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` into its parts."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def server_config(
    data_dir: Path,
    listen: str,
    rules: list[str],
    names: list[str],
    placeholders: Path | None = None,
) -> ServerConfig:
    """The server's configuration from its command-line options.

    Raises:
        ValueError: ``listen`` is not ``HOST:PORT``.
        DetectError: The placeholders file cannot be read.
    """
    host, port = parse_listen(listen)
    return ServerConfig(
        data_dir=data_dir,
        host=host,
        port=port,
        rule_paths=[builtin_rules_dir(), *(Path(r) for r in rules)],
        server_names=names,
        placeholders=load_placeholders(placeholders),
    )


def _signal_event(who: str) -> threading.Event:
    """An event set by the first SIGINT or SIGTERM; ``who`` names the process in the log."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        # Under `vigil up` the agent's log shares the terminal: say which process stops.
        log.info("%s received %s: stopping", who, signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _wait_for_signal(who: str) -> None:
    stop = _signal_event(who)
    while not stop.wait(1.0):
        pass


def _start_server(config: ServerConfig) -> tuple[ServerContext, object, threading.Thread]:
    ctx, server = build_server(config)
    thread = threading.Thread(target=server.run, name="vigil-server", daemon=True)
    thread.start()
    for _ in range(int(STARTUP_SECONDS * 10)):
        if server.started or not thread.is_alive():
            break
        threading.Event().wait(0.1)
    if not server.started:
        raise SystemExit(f"the server did not start on {config.url}; see the log above")
    return ctx, server, thread


def _stop_server(ctx: ServerContext, server: object, thread: threading.Thread) -> None:
    ctx.doorbells.close()
    server.should_exit = True  # type: ignore[attr-defined]
    thread.join(timeout=30)
    ctx.close()


def run_server(config: ServerConfig) -> None:
    """``vigil server``: serve until SIGINT or SIGTERM."""
    ctx, server, thread = _start_server(config)
    print(f"Vigil server listening on {config.url}", flush=True)
    print(f"Admin API token: {config.data_dir / ADMIN_TOKEN_FILE}", flush=True)
    print(f"CA fingerprint (SHA-256): {ctx.authority.ca_fingerprint}", flush=True)
    try:
        _wait_for_signal("server")
    finally:
        _stop_server(ctx, server, thread)


def run_agent(
    state_dir: Path,
    server_url: str | None,
    token: str | None,
    fingerprint: str | None,
    options: AgentOptions,
) -> None:
    """``vigil agent run``: enroll on first run, then watch and report until stopped.

    The options are checked before enrolling, so a mistake in them registers no host.
    """
    policy = options.build()
    with hold_state_dir(state_dir):
        ident = _enrolled(state_dir, server_url, token, fingerprint)
        agent = Agent(ident, policy)
        agent.start()
        try:
            _wait_for_signal("agent")
        finally:
            agent.stop()


def _enrolled(
    state_dir: Path, server_url: str | None, token: str | None, fingerprint: str | None
) -> identity_mod.Identity:
    """The agent's identity: the one in ``state_dir``, or a new one from enrolling."""
    ident = identity_mod.load(state_dir)
    if ident is not None:
        if token:
            log.warning(
                "%s is enrolled already (agent %s): --enroll-token is not used",
                state_dir,
                ident.agent_id,
            )
        return ident
    missing = [
        option
        for option, value in (("--server URL", server_url), ("--enroll-token TOKEN", token))
        if not value
    ]
    if missing or server_url is None or token is None:
        raise AgentError(
            f"this agent is not enrolled ({state_dir} has no identity): pass "
            f"{' and '.join(missing)} (the token from 'vigil enroll-token create')"
        )
    return identity_mod.enroll(state_dir, server_url, token, fingerprint)


def _spawn_agent(state_dir: Path, options: AgentOptions) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "vigil.cli.main",
        "agent",
        "run",
        "--state-dir",
        str(state_dir),
        *options.arguments(),
    ]
    return subprocess.Popen(command)


def _stop_agent(agent: subprocess.Popen[bytes]) -> None:
    if agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
    try:
        agent.wait(timeout=AGENT_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        log.error("the agent did not stop within %ds: killing it", AGENT_STOP_SECONDS)
        agent.kill()
        agent.wait()


def _wait_for_first_heartbeat(
    ctx: ServerContext, agent_id: str, agent: subprocess.Popen[bytes]
) -> None:
    """Wait until the agent has reported its sensors, so 'up' means events are flowing."""
    started = time.time()
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline and agent.poll() is None:
        row = ctx.state.agent(agent_id)
        if row and row["last_seen"] >= started and row["health"] not in (None, "", "{}"):
            return
        time.sleep(0.2)
    log.warning("the agent has not reported within %.0fs; see its log lines above", STARTUP_SECONDS)


def run_up(config: ServerConfig, options: AgentOptions) -> None:
    """``vigil up``: the server, and an agent for this host in a child process it supervises.

    The agent runs apart so that its CPU and memory budget is its own and a crash of one does
    not take the other down; an agent that dies is started again.
    """
    # The server's own writes under its data directory are not the host's activity.
    options.quiet_paths = [*options.quiet_paths, str(config.data_dir)]
    options.build()  # a bad policy file fails here, before anything starts
    ctx, server, thread = _start_server(config)
    agent: subprocess.Popen[bytes] | None = None
    stop = _signal_event("vigil up")
    try:
        state_dir = config.data_dir / "agent"
        ident = identity_mod.load(state_dir)
        if ident is None:
            secret = ctx.state.create_enroll_secret(DEFAULT_TENANT, ttl=600, uses=1)
            token = make_enroll_token(secret, ctx.authority.ca_fingerprint)
            ident = identity_mod.enroll(state_dir, config.url, token)
        agent = _spawn_agent(state_dir, options)
        print(
            f"Vigil is up: server {config.url}, agent {ident.agent_id} on {ident.hostname}",
            flush=True,
        )
        print(
            f"Admin API token: {config.data_dir / ADMIN_TOKEN_FILE} "
            f"(the CLI reads it with --data-dir {config.data_dir})",
            flush=True,
        )
        print("Press Ctrl-C to stop.", flush=True)
        while not stop.wait(1.0):
            if agent.poll() is not None:
                log.error("the agent exited with status %s: starting it again", agent.returncode)
                stop.wait(AGENT_RESTART_SECONDS)
                if not stop.is_set():
                    agent = _spawn_agent(state_dir, options)
    finally:
        if agent is not None:
            _stop_agent(agent)
        _stop_server(ctx, server, thread)
        print("Vigil stopped.", flush=True)
