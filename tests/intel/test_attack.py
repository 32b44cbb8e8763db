"""The ATT&CK table: lookups, agreement with MITRE's bundle, and the Sigma rules' tags."""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from tests.intel.data import ATTACK_BUNDLE, SIGMA_LINUX
from vigil.intel import attack

GROUP_OR_SOFTWARE = re.compile(r"attack\.[gs]\d{4}")
REPO = Path(__file__).resolve().parents[2]

# Tags of the shared SigmaHQ snapshot that name ATT&CK v19 objects (Defense Evasion split into
# Stealth and Defense Impairment; T1685-T1690 new), absent from the v18.1 table we generate.
NEWER_THAN_V18_1 = {
    "attack.t1685",
    "attack.t1685.004",
    "attack.t1685.006",
    "attack.t1686",
    "attack.t1690",
    "attack.stealth",
    "attack.defense-impairment",
}


def test_lsass_memory() -> None:
    found = attack.technique("T1003.001")
    assert found is not None
    assert (found.name, found.tactics, found.is_subtechnique) == (
        "LSASS Memory",
        ("credential-access",),
        True,
    )
    assert found.url == "https://attack.mitre.org/techniques/T1003/001" and found.current
    assert attack.technique("attack.t1003.001") == found
    assert attack.tactic_name("credential-access") == "Credential Access"
    assert attack.tactic_name("attack.credential_access") == "Credential Access"
    assert attack.tactic_id("credential-access") == "TA0006"


def test_revoked_technique_names_its_replacement() -> None:
    padding = attack.technique("T1009")
    assert padding is not None and padding.status == "revoked"
    assert padding.replaced_by == "T1027.001"


@pytest.mark.parametrize("text", ["T9999", "attack.g0020", "credential-access", "", "T1003.1"])
def test_unknown_ids(text: str) -> None:
    assert attack.technique(text) is None


def test_table_counts_match_the_bundle_readme() -> None:
    every = attack.techniques()
    assert attack.version() == "18.1"
    assert len(every) == 835 and sum(t.current for t in every) == 691
    assert len(attack.tactics()) == 14 and attack.tactics()[0] == "reconnaissance"


def test_committed_table_is_what_the_generator_makes(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import gen_attack_table
    finally:
        sys.path.remove(str(REPO / "scripts"))
    with gzip.open(ATTACK_BUNDLE, "rt", encoding="utf-8") as handle:
        objects = json.load(handle)["objects"]
    rendered = gen_attack_table.render(gen_attack_table.build(objects), "18.1")
    assert rendered == attack.TABLE.read_text(encoding="utf-8")


def test_every_sigma_linux_attack_tag_resolves() -> None:
    unresolved: set[str] = set()
    outdated: set[str] = set()
    resolved = 0
    for path in sorted(SIGMA_LINUX.rglob("*.yml")):
        for tag in yaml.safe_load(path.read_text()).get("tags") or []:
            tag = str(tag).lower()
            if attack.technique_id(tag):
                found = attack.technique(tag)
                if found is None:
                    unresolved.add(tag)
                elif not found.current:
                    outdated.add(tag)
                else:
                    resolved += 1
            elif tag.startswith("attack.") and not GROUP_OR_SOFTWARE.fullmatch(tag):
                if attack.tactic_name(tag) is None:
                    unresolved.add(tag)
    assert resolved > 150
    assert outdated == set(), f"rules tagged with revoked or deprecated techniques: {outdated}"
    assert unresolved == NEWER_THAN_V18_1
