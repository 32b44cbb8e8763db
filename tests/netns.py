"""A small network lab for tests: hosts in their own network namespaces on one private link.

Each ``Lab`` makes a hub namespace holding a bridge, and one namespace per host joined to the
bridge by a veth pair, with an IPv4 and an IPv6 address (``nodad``, usable at once). Nothing is
created in the test runner's own network namespace, the addresses exist only inside the lab, and
leaving the ``with`` block stops every process started through the lab and deletes every
namespace (which deletes the veths and the bridge with them).

Example::

    with Lab() as lab:
        lab.server.serve_tcp(8000)
        assert lab.endpoint.connects(lab.server.ipv4, 8000)
        lab.endpoint.python("import socket; print(socket.gethostname())")

A host can serve DNS to the others (``serve_dns``) and be made another host's nameserver
(``use_nameserver``): ``ip netns exec`` bind-mounts ``/etc/netns/NS/resolv.conf`` over
``/etc/resolv.conf`` in the processes it starts, so the runner's own resolver is never changed.
The lab removes the ``/etc/netns/NS`` folders it made.

Needs root and iproute2 (``ip``); call ``skip_reason()`` to skip a test when they are missing.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import select
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HOSTS = ("endpoint", "server", "third")
# Absolute, so that a command run with its own PATH still finds iproute2.
IP = shutil.which("ip") or "ip"
# Per-namespace files that 'ip netns exec' bind-mounts over /etc (see ip-netns(8)).
NETNS_ETC = Path("/etc/netns")

_LISTENER = """
import selectors, socket, sys
name, port, hold, addresses = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "hold", sys.argv[4:]
held = []
sel = selectors.DefaultSelector()
for address in addresses:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(64)
    sel.register(sock, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept()
        conn.sendall(name.encode() + b"\\n")
        if hold:
            held.append(conn)
        else:
            conn.close()
"""

_HOLD = """
import socket, sys, time
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print("connected", flush=True)
time.sleep(3600)
"""

# A DNS server answering A and AAAA questions from NAME=ADDRESS arguments (NXDOMAIN otherwise).
_DNS = """
import socket, sys
import dns.message, dns.rcode, dns.rdatatype, dns.rrset
address, records = sys.argv[1], sys.argv[2:]
table = {}
for item in records:
    name, ip = item.split("=", 1)
    table.setdefault(name.lower().rstrip(".") + ".", []).append(ip)
sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((address, 53))
print("ready", flush=True)
while True:
    data, peer = sock.recvfrom(4096)
    try:
        query = dns.message.from_wire(data)
    except Exception:
        continue
    response = dns.message.make_response(query)
    for question in query.question:
        name = question.name.to_text().lower()
        if name not in table:
            response.set_rcode(dns.rcode.NXDOMAIN)
            continue
        kind = {dns.rdatatype.A: "A", dns.rdatatype.AAAA: "AAAA"}.get(question.rdtype)
        ips = [ip for ip in table[name] if kind and (":" in ip) == (kind == "AAAA")]
        if ips:
            response.answer.append(dns.rrset.from_text_list(question.name, 5, "IN", kind, ips))
    sock.sendto(response.to_wire(), peer)
"""

_CONNECT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])):
        pass
except OSError as exc:
    print(type(exc).__name__, exc)
    sys.exit(1)
"""


def skip_reason() -> str | None:
    """Say why a lab cannot be built here (not root, no iproute2), or None if it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 'ip' command not found: install the iproute2 package"
    return None


def _ip(*args: str) -> None:
    done = subprocess.run([IP, *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"'ip {' '.join(args)}' failed: {done.stderr.strip()}")


class Host:
    """One host of a lab: a network namespace with an IPv4 and an IPv6 address on ``eth0``.

    Attributes:
        name: The host's role in the lab, e.g. ``"endpoint"``.
        ns: The network namespace's name, for ``ip netns exec``.
        ipv4: The host's IPv4 address, without prefix length.
        ipv6: The host's IPv6 address, without prefix length.
    """

    def __init__(self, lab: Lab, name: str, ns: str, ipv4: str, ipv6: str) -> None:
        self.lab = lab
        self.name = name
        self.ns = ns
        self.ipv4 = ipv4
        self.ipv6 = ipv6

    def __repr__(self) -> str:
        return f"Host({self.name!r}, ns={self.ns!r}, ipv4={self.ipv4!r}, ipv6={self.ipv6!r})"

    def command(self, cmd: Sequence[str]) -> list[str]:
        """Return ``cmd`` wrapped so that it runs inside this host's namespace."""
        return [IP, "netns", "exec", self.ns, *cmd]

    def run(
        self,
        cmd: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside this host and wait for it; output is captured as text.

        Args:
            cmd: The command and its arguments.
            check: Raise ``subprocess.CalledProcessError`` (with the output) on a non-zero exit.
            timeout: Seconds before the command is killed and ``TimeoutExpired`` raised.
            stdin: Text fed to the command.
            env: Variables added to the runner's environment.
        """
        done = subprocess.run(
            self.command(cmd),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self._env(env),
            check=False,
        )
        if check and done.returncode != 0:
            raise subprocess.CalledProcessError(
                done.returncode, done.args, output=done.stdout, stderr=done.stderr
            )
        return done

    def popen(
        self, cmd: Sequence[str], *, env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> subprocess.Popen[str]:
        """Start ``cmd`` inside this host; the lab stops it on teardown.

        Keyword arguments go to ``subprocess.Popen`` (``text=True`` is set).
        """
        process: subprocess.Popen[str] = subprocess.Popen(
            self.command(cmd), text=True, env=self._env(env), **kwargs
        )
        self.lab.track(process)
        return process

    def python(
        self, code: str, *args: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run Python ``code`` inside this host with the repository on ``sys.path``."""
        return self.run([sys.executable, "-c", code, *args], check=check, timeout=timeout)

    def serve_tcp(
        self, port: int, addresses: Iterable[str] | None = None, *, hold: bool = False
    ) -> subprocess.Popen[str]:
        """Start a TCP listener on ``port`` that greets each client with the host's name.

        Args:
            port: The TCP port.
            addresses: Where to listen; by default the host's IPv4 and IPv6 addresses.
            hold: Keep each connection open after the greeting instead of closing it.

        Returns:
            The listener process, already accepting connections.
        """
        bind = list(addresses) if addresses is not None else [self.ipv4, self.ipv6]
        mode = "hold" if hold else "close"
        return self._start_ready(
            [sys.executable, "-c", _LISTENER, self.name, str(port), mode, *bind],
            "ready",
            f"TCP listener on {self.name} port {port}",
        )

    def hold_connection(self, address: str, port: int) -> subprocess.Popen[str]:
        """Open a TCP connection from this host to ``address``:``port`` and keep it open.

        Returns:
            The client process (its pid owns the socket), already connected; the lab stops it.
        """
        return self._start_ready(
            [sys.executable, "-c", _HOLD, address, str(port)],
            "connected",
            f"connection from {self.name} to [{address}]:{port}",
        )

    def serve_dns(self, records: Mapping[str, Sequence[str]]) -> subprocess.Popen[str]:
        """Start a DNS server on this host's IPv4 address, port 53 (UDP).

        Args:
            records: Addresses by name; A and AAAA questions get the IPv4 or IPv6 ones.
        """
        pairs = [f"{name}={ip}" for name, ips in records.items() for ip in ips]
        return self._start_ready(
            [sys.executable, "-c", _DNS, self.ipv4, *pairs], "ready", f"DNS server on {self.name}"
        )

    def use_nameserver(self, address: str) -> None:
        """Resolve names through ``address`` in the processes started on this host from now on."""
        self.lab.write_file(
            NETNS_ETC / self.ns / "resolv.conf",
            f"nameserver {address}\noptions timeout:1 attempts:1\n",
        )

    def _start_ready(self, cmd: Sequence[str], ready: str, what: str) -> subprocess.Popen[str]:
        process = self.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert process.stdout is not None
        found, _, _ = select.select([process.stdout], [], [], 15.0)
        line = process.stdout.readline() if found else ""
        if line.strip() != ready:
            process.kill()
            _, err = process.communicate(timeout=5)
            raise RuntimeError(f"{what} did not start: {err}")
        return process

    def connects(self, address: str, port: int, timeout: float = 1.0) -> bool:
        """Tell whether a TCP connection from this host to ``address``:``port`` succeeds."""
        done = self.python(_CONNECT, address, str(port), str(timeout), check=False)
        log.debug("%s -> [%s]:%d: %s", self.name, address, port, done.stdout.strip() or "ok")
        return done.returncode == 0

    def _env(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env.update(extra or {})
        return env


class Lab:
    """Hosts in separate network namespaces on one bridged link; a context manager.

    Hosts are reachable as attributes (``lab.endpoint``) or items (``lab["server"]``) and get
    addresses in order: the first host ``.1`` of ``subnet4`` and ``::1`` of ``subnet6``, the
    next ``.2``, and so on.

    Args:
        hosts: The hosts' names, valid Python identifiers.
        subnet4: The lab's IPv4 network.
        subnet6: The lab's IPv6 network.
    """

    def __init__(
        self,
        hosts: Sequence[str] = DEFAULT_HOSTS,
        *,
        subnet4: str = "10.77.0.0/24",
        subnet6: str = "fd77::/64",
    ) -> None:
        self.prefix = f"vigil-{secrets.token_hex(3)}"
        self.hub = f"{self.prefix}-hub"
        net4 = ipaddress.IPv4Network(subnet4)
        net6 = ipaddress.IPv6Network(subnet6)
        self.prefixlen4 = net4.prefixlen
        self.prefixlen6 = net6.prefixlen
        self.hosts: dict[str, Host] = {
            name: Host(self, name, f"{self.prefix}-{name}", str(net4[i + 1]), str(net6[i + 1]))
            for i, name in enumerate(hosts)
        }
        self._namespaces: list[str] = []
        self._processes: list[subprocess.Popen[str]] = []
        self._made: list[Path] = []

    def __getattr__(self, name: str) -> Host:
        hosts = self.__dict__.get("hosts", {})
        if name in hosts:
            return hosts[name]
        raise AttributeError(f"lab has no host or attribute {name!r}")

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def track(self, process: subprocess.Popen[str]) -> None:
        """Have the lab stop ``process`` on teardown."""
        self._processes.append(process)

    def write_file(self, path: Path, text: str) -> None:
        """Write a new file ``path`` (making missing folders); the lab removes what it made."""
        for folder in reversed(path.parents):
            if not folder.exists():
                folder.mkdir()
                self._made.append(folder)
        if path.exists():
            raise RuntimeError(f"{path} exists already; the lab writes only files it makes")
        path.write_text(text, encoding="utf-8")
        self._made.append(path)

    def _add_namespace(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def _build(self) -> None:
        self._add_namespace(self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for index, host in enumerate(self.hosts.values()):
            self._add_namespace(host.ns)
            port = f"port{index}"
            _ip(
                "-n",
                self.hub,
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                host.ns,
            )
            _ip("-n", self.hub, "link", "set", port, "master", "br0", "up")
            _ip("-n", host.ns, "addr", "add", f"{host.ipv4}/{self.prefixlen4}", "dev", "eth0")
            _ip(
                "-n",
                host.ns,
                "addr",
                "add",
                f"{host.ipv6}/{self.prefixlen6}",
                "dev",
                "eth0",
                "nodad",
            )
            _ip("-n", host.ns, "link", "set", "eth0", "up")
        # A lab that silently ran in the runner's namespace would touch the real network.
        own = os.readlink("/proc/self/ns/net")
        for host in self.hosts.values():
            inside = host.run(["readlink", "/proc/self/ns/net"]).stdout.strip()
            if inside == own:
                raise RuntimeError(f"lab host {host.ns} shares the runner's network namespace")

    def close(self) -> None:
        """Stop every process started through the lab and delete every namespace it made."""
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        self._processes.clear()
        for ns in reversed(self._namespaces):
            leftover = subprocess.run(
                [IP, "netns", "pids", ns], capture_output=True, text=True, check=False
            ).stdout.split()
            if leftover:
                log.warning("processes %s still run in namespace %s", leftover, ns)
            try:
                _ip("netns", "delete", ns)
            except RuntimeError as exc:
                log.warning("%s", exc)
        self._namespaces.clear()
        # Newest first; a folder another lab still uses is not empty and stays.
        for made in reversed(self._made):
            try:
                made.rmdir() if made.is_dir() else made.unlink()
            except OSError as exc:
                log.debug("%s stays: %s", made, exc)
        self._made.clear()
