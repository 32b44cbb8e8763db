"""MITRE ATT&CK Enterprise: technique and tactic names for alerts, rules and reports.

The table ships as ``attack_enterprise.json`` beside this module, generated from MITRE's STIX
bundle by ``scripts/gen_attack_table.py``; regenerate it there for a new ATT&CK release. Ids
are accepted as ATT&CK writes them (``T1003.001``) and as Sigma tags them (``attack.t1003.001``,
``attack.credential_access``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

TABLE = Path(__file__).with_name("attack_enterprise.json")
_TECHNIQUE_ID = re.compile(r"t\d{4}(?:\.\d{3})?")


@dataclass(frozen=True, slots=True)
class Technique:
    """One ATT&CK technique or sub-technique.

    Attributes:
        id: The ATT&CK id, e.g. ``T1003.001``.
        name: Its name, e.g. ``LSASS Memory``.
        tactics: The shortnames of its tactics, e.g. ``("credential-access",)``.
        is_subtechnique: Whether it is a sub-technique (``T1003.001`` of ``T1003``).
        status: ``""`` when current, else ``revoked`` or ``deprecated``.
        replaced_by: For a revoked technique, the id that replaced it (if MITRE names one).
    """

    id: str
    name: str
    tactics: tuple[str, ...]
    is_subtechnique: bool = False
    status: str = ""
    replaced_by: str = ""

    @property
    def url(self) -> str:
        """The technique's page on attack.mitre.org."""
        return "https://attack.mitre.org/techniques/" + self.id.replace(".", "/")

    @property
    def current(self) -> bool:
        """Whether the technique is neither revoked nor deprecated."""
        return not self.status


@cache
def _table() -> dict[str, Any]:
    table: dict[str, Any] = json.loads(TABLE.read_text(encoding="utf-8"))
    return table


def version() -> str:
    """The ATT&CK release the table was generated from, e.g. ``18.1``."""
    return str(_table()["version"])


def technique_id(text: str) -> str | None:
    """A technique id from ``T1003.001``, ``t1003.001`` or a Sigma tag ``attack.t1003.001``."""
    name = text.strip().lower().removeprefix("attack.")
    return name.upper() if _TECHNIQUE_ID.fullmatch(name) else None


def technique(tid: str) -> Technique | None:
    """The technique with this id (or Sigma tag); None when ATT&CK has no such id.

    Revoked and deprecated techniques are returned too, with their ``status``: a rule tagged
    with one should be retagged with ``replaced_by``.
    """
    key = technique_id(tid)
    entry = _table()["techniques"].get(key) if key else None
    if key is None or entry is None:
        return None
    return Technique(
        key,
        entry["name"],
        tuple(entry["tactics"]),
        bool(entry.get("sub", False)),
        entry.get("status", ""),
        entry.get("replaced_by", ""),
    )


def techniques() -> list[Technique]:
    """Every technique in the table, current or not, in id order."""
    return [t for t in map(technique, _table()["techniques"]) if t is not None]


def tactic_name(shortname: str) -> str | None:
    """A tactic's name from its shortname (``credential-access``) or Sigma tag
    (``attack.credential_access``); None when there is no such tactic.
    """
    entry = _table()["tactics"].get(_tactic_key(shortname))
    return str(entry["name"]) if entry else None


def tactic_id(shortname: str) -> str | None:
    """A tactic's ATT&CK id (``TA0006``) from its shortname or Sigma tag."""
    entry = _table()["tactics"].get(_tactic_key(shortname))
    return str(entry["id"]) if entry else None


def tactics() -> list[str]:
    """Tactic shortnames in the order of the Enterprise matrix."""
    return list(_table()["tactics"])


def _tactic_key(text: str) -> str:
    return text.strip().lower().removeprefix("attack.").replace("_", "-")
