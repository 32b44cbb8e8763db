"""Where the shared threat-intel test data is (read in place, never copied into the repo)."""

from __future__ import annotations

from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
THREAT_INTEL = SHARED_DATA / "threat-intel"
FEODO = THREAT_INTEL / "abuse.ch" / "feodotracker_ipblocklist_2024-04-04.csv"
XORIST = THREAT_INTEL / "misp" / "pymisp-tests" / "57c4445b-c548-4654-af0b-4be3950d210f.json"
MISP_FEEDS = THREAT_INTEL / "misp" / "misp-project-tests" / "feeds"
STIX_DOCS = (
    THREAT_INTEL / "stix21-examples" / "oasis-cti-documentation" / "examples" / "example_json"
)
STIX_SCHEMAS = THREAT_INTEL / "stix21-examples" / "oasis-cti-stix2-json-schemas" / "examples"
ATTACK_BUNDLE = THREAT_INTEL / "mitre-attack" / "enterprise-attack-v18.1.json.gz"
SIGMA_LINUX = SHARED_DATA / "sigma" / "rules" / "linux"
