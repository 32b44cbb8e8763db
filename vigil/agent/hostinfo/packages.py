"""Installed packages from dpkg's status file, or from rpm where there is no dpkg.

Reference: dpkg's ``/var/lib/dpkg/status`` is a list of deb822 paragraphs; a package is
installed when the last word of its ``Status`` field is ``installed`` (deb-control(5),
dpkg(1)). rpm is asked with ``rpm --root ROOT -qa --queryformat``.
"""

from __future__ import annotations

import logging
import shutil
import subprocess

from vigil.agent.errors import AgentError
from vigil.agent.hostinfo.files import Item, read_text, under

log = logging.getLogger(__name__)

DPKG_STATUS = "/var/lib/dpkg/status"
_RPM_FORMAT = "%{NAME}\\t%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\\t%{ARCH}\\n"


def parse_dpkg_status(text: str) -> dict[str, Item]:
    """Installed packages in a dpkg status file, keyed ``name:architecture``."""
    found: dict[str, Item] = {}
    for paragraph in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in paragraph.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue  # continuation of a multi-line field
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        name = fields.get("Package")
        if not name or not fields.get("Status", "").endswith(" installed"):
            continue
        architecture = fields.get("Architecture", "")
        found[f"{name}:{architecture}"] = {
            "name": name,
            "version": fields.get("Version", ""),
            "architecture": architecture,
            "type": "deb",
        }
    return found


def rpm_packages(root: str) -> dict[str, Item]:
    """Installed packages in the rpm database under ``root``, keyed ``name:architecture``.

    Raises:
        AgentError: rpm failed; the message has its error output.
    """
    result = subprocess.run(
        ["rpm", "--root", root, "-qa", "--queryformat", _RPM_FORMAT],
        capture_output=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise AgentError(
            f"rpm --root {root} -qa failed with status {result.returncode}: "
            f"{result.stderr.decode(errors='replace').strip()}"
        )
    found: dict[str, Item] = {}
    for line in result.stdout.decode(errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0] != "gpg-pubkey":
            name, version, architecture = parts
            found[f"{name}:{architecture}"] = {
                "name": name,
                "version": version,
                "architecture": architecture,
                "type": "rpm",
            }
    return found


def collect(root: str) -> dict[str, Item]:
    """Installed packages: from dpkg's status file, else from rpm, else none.

    Raises:
        AgentError: rpm is the package manager here and failed.
    """
    text = read_text(under(root, DPKG_STATUS))
    if text is not None:
        return parse_dpkg_status(text)
    if shutil.which("rpm") is not None:
        return rpm_packages(root)
    log.debug("no dpkg status file and no rpm under %s: no packages listed", root)
    return {}
