"""The inventory sensor on a temporary host tree: snapshot, live changes, changes while stopped."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from vigil.agent.errors import AgentError, NotApplicable
from vigil.agent.hostinfo import crontabs, packages, ssh_keys, units
from vigil.agent.sensors.base import SensorContext
from vigil.agent.sensors.inventory import KINDS, InventorySensor
from vigil.schema.ecs import flatten

MakeContext = Callable[..., tuple[SensorContext, list[dict[str, Any]]]]
WaitFor = Callable[..., Any]
FILE_KINDS = [name for name in KINDS if name != "listeners"]

DPKG_ENTRY = """Package: {name}
Status: install ok installed
Priority: optional
Architecture: amd64
Version: {version}
Description: test package
 with a continuation line: Version: 9.9

"""


def _public_key(comment: str) -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    text = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{text.decode()} {comment}"


def _write(root: Path, path: str, text: str) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return target


def _append(root: Path, path: str, text: str) -> None:
    with (root / path.lstrip("/")).open("a", encoding="utf-8") as handle:
        handle.write(text)


@pytest.fixture
def host(tmp_path: Path) -> Path:
    root = tmp_path / "host"
    _write(
        root,
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\n",
    )
    _write(root, "/etc/group", "root:x:0:\nsudo:x:27:alice\nalice:x:1000:\n")
    _write(
        root,
        "/var/lib/dpkg/status",
        DPKG_ENTRY.format(name="openssl", version="3.0.11-1")
        + DPKG_ENTRY.format(name="bash", version="5.2.15-2").replace(
            "install ok installed", "deinstall ok config-files"
        ),
    )
    _write(root, "/etc/crontab", "# m h dom mon dow user command\n17 * * * * root run-parts\n")
    _write(root, "/var/spool/cron/crontabs/alice", "*/5 * * * * /home/alice/backup.sh\n")
    _write(root, "/lib/systemd/system/ssh.service", "[Service]\nExecStart=/usr/sbin/sshd -D\n")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "ssh.service").symlink_to("/lib/systemd/system/ssh.service")
    _write(root, "/home/alice/.ssh/authorized_keys", _public_key("alice@laptop") + "\n")
    _write(root, "/proc/modules", "ext4 1032192 2 - Live 0x0000000000000000\n")
    return root


def _sensor(
    make_context: MakeContext, root: Path, **options: Any
) -> tuple[InventorySensor, list[dict[str, Any]]]:
    options.setdefault("inventory_kinds", FILE_KINDS)
    context, events = make_context(inventory_root=str(root), inventory_interval=1, **options)
    sensor = InventorySensor(context)
    sensor.check_compatible()
    return sensor, events


def _by_action(events: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    return [e for e in list(events) if e["event"]["action"] == action]


def test_snapshot_has_one_state_event_per_item(make_context: MakeContext, host: Path) -> None:
    sensor, events = _sensor(make_context, host)
    sensor.start()
    sensor.stop()
    kinds = sorted(e["vigil"]["inventory"]["kind"] for e in events)
    assert kinds == sorted(
        ["packages", "users", "users", "groups", "groups", "groups", "crontabs", "crontabs"]
        + ["systemd_units", "systemd_units", "authorized_keys", "kernel_modules"]
    )
    assert all(e["event"]["kind"] == "state" for e in events)
    assert len({e["event"]["id"] for e in events}) == len(events)

    package = flatten(next(e for e in events if e["vigil"]["inventory"]["kind"] == "packages"))
    assert package["package.name"] == "openssl" and package["package.version"] == "3.0.11-1"
    assert package["event.category"] == ["package"] and package["event.type"] == ["info"]
    user = next(e for e in events if e.get("user", {}).get("name") == "alice" and "file" not in e)
    assert user["event"]["category"] == ["iam"] and user["event"]["type"] == ["user", "info"]
    assert user["vigil"]["inventory"]["item"]["shell"] == "/bin/bash"
    enabled = next(e for e in events if "wants" in e.get("file", {}).get("path", ""))
    assert enabled["vigil"]["inventory"]["item"]["wanted_by"] == "multi-user.target"
    key = next(e for e in events if e["vigil"]["inventory"]["kind"] == "authorized_keys")
    assert key["file"]["path"] == "/home/alice/.ssh/authorized_keys"
    assert key["user"]["name"] == "alice"
    assert key["vigil"]["inventory"]["item"]["comment"] == "alice@laptop"
    module = next(e for e in events if e["vigil"]["inventory"]["kind"] == "kernel_modules")
    assert module["event"]["category"] == ["driver"]
    counters = sensor.health().counters
    assert counters["items"] == 12 and counters["collections"] == 1 and counters["events"] == 12


def test_live_changes_become_events(
    make_context: MakeContext, wait_for: WaitFor, host: Path
) -> None:
    sensor, events = _sensor(make_context, host)
    sensor.start()
    snapshot = len(events)
    try:
        _append(host, "/var/lib/dpkg/status", DPKG_ENTRY.format(name="netcat", version="1.10"))
        _append(host, "/etc/passwd", "backdoor:x:0:0::/root:/bin/sh\n")
        _append(host, "/var/spool/cron/crontabs/alice", "@reboot /tmp/.x\n")
        _write(host, "/etc/systemd/system/evil.service", "[Service]\nExecStart=/tmp/.x\n")
        _append(host, "/home/alice/.ssh/authorized_keys", _public_key("attacker") + "\n")
        _write(host, "/proc/modules", "ext4 1032192 2 - Live 0x0\nrootkit 16384 0 - Live 0x0\n")
        assert wait_for(lambda: len(events) - snapshot >= 6)
    finally:
        sensor.stop()
    changes = {e["event"]["action"]: e for e in events[snapshot:]}
    assert set(changes) == {
        "package_installed",
        "user_added",
        "cron_changed",
        "systemd_unit_added",
        "authorized_key_added",
        "kernel_module_loaded",
    }
    assert all(e["event"]["kind"] == "event" for e in changes.values())
    assert changes["package_installed"]["package"]["name"] == "netcat"
    assert changes["package_installed"]["event"]["type"] == ["installation"]
    assert changes["user_added"]["user"] == {"name": "backdoor", "id": "0"}
    assert changes["user_added"]["event"]["type"] == ["user", "creation"]
    cron = changes["cron_changed"]["vigil"]["inventory"]
    assert cron["item"]["entries"][-1] == "@reboot /tmp/.x"
    assert "@reboot /tmp/.x" not in cron["previous"]["entries"]
    assert changes["systemd_unit_added"]["file"]["path"] == "/etc/systemd/system/evil.service"
    assert changes["authorized_key_added"]["vigil"]["inventory"]["item"]["comment"] == "attacker"
    assert changes["kernel_module_loaded"]["event"]["type"] == ["start"]
    assert sensor.health().counters["changes"] == 6


def test_changes_while_stopped_are_reported_at_start(make_context: MakeContext, host: Path) -> None:
    sensor, _events = _sensor(make_context, host)
    sensor.start()
    sensor.stop()

    _write(
        host,
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/zsh\n",
    )
    (host / "etc/systemd/system/multi-user.target.wants/ssh.service").unlink()
    _write(host, "/etc/group", "root:x:0:\nsudo:x:27:alice,mallory\nalice:x:1000:\n")
    sensor, events = _sensor(make_context, host)
    sensor.start()
    sensor.stop()
    changes = [e for e in events if e["event"]["kind"] == "event"]
    assert sorted(e["event"]["action"] for e in changes) == [
        "group_changed",
        "systemd_unit_removed",
        "user_changed",
    ]
    user = next(e for e in changes if e["event"]["action"] == "user_changed")
    assert user["vigil"]["inventory"]["previous"]["shell"] == "/bin/bash"
    assert user["vigil"]["inventory"]["item"]["shell"] == "/bin/zsh"
    group = next(e for e in changes if e["event"]["action"] == "group_changed")
    assert group["vigil"]["inventory"]["item"]["members"] == ["alice", "mallory"]


def test_a_failing_kind_keeps_its_last_listing(
    make_context: MakeContext, host: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sensor, _events = _sensor(make_context, host)
    sensor.start()
    sensor.stop()

    def broken(root: str) -> dict[str, Any]:
        raise OSError(f"cannot read the package database under {root}")

    monkeypatch.setattr(packages, "collect", broken)
    sensor, events = _sensor(make_context, host)
    sensor.start()
    sensor.stop()
    assert not [e for e in events if e["event"]["action"] == "package_removed"]
    assert sensor.health().counters["errors"] == 1


def test_listeners_open_and_close(make_context: MakeContext, wait_for: WaitFor, host: Path) -> None:
    sensor, events = _sensor(make_context, host, inventory_kinds=["listeners"])
    sensor.start()
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def ours(action: str) -> list[dict[str, Any]]:
            return [e for e in _by_action(events, action) if e["destination"]["port"] == port]

        opened = wait_for(lambda: ours("listener_opened"))
        assert opened, "no listener_opened event for our socket"
        server.close()
        closed = wait_for(lambda: ours("listener_closed"))
    finally:
        server.close()
        sensor.stop()
    event = opened[0]
    assert event["destination"]["ip"] == "127.0.0.1"
    assert event["network"]["transport"] == "tcp"
    assert event["process"]["pid"] == os.getpid()
    assert closed and closed[0]["event"]["type"] == ["end"]


def test_options_are_checked(make_context: MakeContext, tmp_path: Path) -> None:
    context, _events = make_context(inventory_interval=0.5)
    sensor = InventorySensor(context)
    with pytest.raises(AgentError, match="inventory_interval=0.5 is invalid"):
        sensor.start()
    assert sensor.health().state == "failed"
    context, _events = make_context(inventory_kinds=["packages", "browsers"])
    with pytest.raises(AgentError, match="inventory_kinds=.*is invalid: use some of packages"):
        InventorySensor(context).start()
    context, _events = make_context(inventory_root=str(tmp_path / "nowhere"))
    with pytest.raises(NotApplicable, match="is not a folder"):
        InventorySensor(context).check_compatible()


def test_key_fingerprints_match_ssh_keygen(tmp_path: Path) -> None:
    line = 'from="10.0.0.0/8",no-pty ' + _public_key("ops key")
    key = ssh_keys.parse_key_line(line)
    assert key is not None
    assert key["options"] == 'from="10.0.0.0/8",no-pty' and key["comment"] == "ops key"
    assert key["type"] == "ssh-ed25519"
    blob = line.split()[-3]
    assert ssh_keys.parse_key_line(line.replace(blob, base64.b64encode(b"junk").decode())) is None
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen (package openssh-client) is not installed")
    path = tmp_path / "key.pub"
    path.write_text(line.split(" ", 1)[1] + "\n", encoding="utf-8")
    output = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert output.split()[1] == key["fingerprint"]


def test_collectors_read_the_formats(host: Path) -> None:
    listed = packages.parse_dpkg_status((host / "var/lib/dpkg/status").read_text())
    assert list(listed) == ["openssl:amd64"], "config-files only packages are not installed"
    cron = crontabs.collect(str(host))
    assert cron["/etc/crontab"]["entries"] == ["17 * * * * root run-parts"]
    assert cron["/var/spool/cron/crontabs/alice"]["user"] == "alice"
    found = units.collect(str(host))
    assert found["/lib/systemd/system/ssh.service"]["sha256"]
    link = found["/etc/systemd/system/multi-user.target.wants/ssh.service"]
    assert link["target"] == "/lib/systemd/system/ssh.service"
