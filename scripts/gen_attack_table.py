#!/usr/bin/env python3
"""Generate vigil/intel/attack_enterprise.json from MITRE's ATT&CK Enterprise STIX bundle.

The table keeps, per technique id, its name, tactics (shortnames), whether it is a
sub-technique, whether it is revoked or deprecated and, for revoked ones, the technique that
replaced it; per tactic, its id and name, in the matrix's order. One technique per line, so a
new ATT&CK release shows as a readable diff.

    python scripts/gen_attack_table.py [BUNDLE] [--version 18.1] [--out PATH]

BUNDLE defaults to ../shared/data/threat-intel/mitre-attack/enterprise-attack-v18.1.json.gz
(a plain or gzipped STIX bundle as published in mitre/cti).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = (
    REPO.parent / "shared/data/threat-intel/mitre-attack/enterprise-attack-v18.1.json.gz"
)
DEFAULT_OUT = REPO / "vigil/intel/attack_enterprise.json"


def attack_id(obj: dict[str, Any]) -> str | None:
    """The ATT&CK id (T1003.001, TA0006) among an object's external references."""
    for ref in obj.get("external_references", []):
        if ref.get("source_name") == "mitre-attack" and ref.get("external_id"):
            return str(ref["external_id"])
    return None


def build(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The compact table from the objects of an ATT&CK bundle."""
    by_stix_id = {o["id"]: o for o in objects}
    replaced = {
        r["source_ref"]: attack_id(by_stix_id[r["target_ref"]])
        for r in objects
        if r["type"] == "relationship"
        and r.get("relationship_type") == "revoked-by"
        and r.get("target_ref") in by_stix_id
    }
    tactic_objects = {o["id"]: o for o in objects if o["type"] == "x-mitre-tactic"}
    matrix = next(o for o in objects if o["type"] == "x-mitre-matrix")
    tactics = {}
    for ref in matrix["tactic_refs"]:
        tactic = tactic_objects[ref]
        tactics[tactic["x_mitre_shortname"]] = {"id": attack_id(tactic), "name": tactic["name"]}

    techniques: dict[str, dict[str, Any]] = {}
    for obj in objects:
        tid = attack_id(obj) if obj["type"] == "attack-pattern" else None
        if tid is None:
            continue
        entry: dict[str, Any] = {
            "name": obj["name"],
            "tactics": [
                p["phase_name"]
                for p in obj.get("kill_chain_phases", [])
                if p.get("kill_chain_name") == "mitre-attack"
            ],
        }
        if obj.get("x_mitre_is_subtechnique"):
            entry["sub"] = True
        if obj.get("revoked"):
            entry["status"] = "revoked"
            if replaced.get(obj["id"]):
                entry["replaced_by"] = replaced[obj["id"]]
        elif obj.get("x_mitre_deprecated"):
            entry["status"] = "deprecated"
        # Should an id appear twice, the current object wins over a revoked one.
        if tid not in techniques or "status" in techniques[tid]:
            techniques[tid] = entry
    return {"tactics": tactics, "techniques": dict(sorted(techniques.items()))}


def render(table: dict[str, Any], version: str) -> str:
    """JSON with one tactic or technique per line."""
    lines = ["{", f'"version": {json.dumps(version)},', '"tactics": {']
    lines += _entries(table["tactics"])
    lines += ["},", '"techniques": {']
    lines += _entries(table["techniques"])
    lines += ["}", "}"]
    return "\n".join(lines) + "\n"


def _entries(entries: dict[str, Any]) -> list[str]:
    items = [f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in entries.items()]
    return [item + ("," if n < len(items) - 1 else "") for n, item in enumerate(items)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--version", help="ATT&CK version (default: from the file name)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    opener = gzip.open if args.bundle.suffix == ".gz" else open
    with opener(args.bundle, "rt", encoding="utf-8") as handle:
        objects = json.load(handle)["objects"]
    found = re.search(r"v(\d+(?:\.\d+)*)", args.bundle.name)
    version = args.version or (found.group(1) if found else "unknown")
    table = build(objects)
    args.out.write_text(render(table, version), encoding="utf-8")
    revoked = sum(1 for t in table["techniques"].values() if t.get("status"))
    print(
        f"{args.out}: ATT&CK {version}, {len(table['tactics'])} tactics, "
        f"{len(table['techniques'])} techniques ({revoked} revoked or deprecated)"
    )


if __name__ == "__main__":
    main()
