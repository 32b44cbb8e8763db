"""The public surface of vigil.intel is complete and documented."""

from __future__ import annotations

import inspect

import vigil.intel
from vigil.intel import attack


def test_all_is_complete_and_documented() -> None:
    exported = set(vigil.intel.__all__)
    public = {
        name
        for name, value in vars(vigil.intel).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert exported == public
    for name in exported:
        assert inspect.getdoc(getattr(vigil.intel, name)), f"vigil.intel.{name} has no docstring"


def test_attack_functions_are_documented() -> None:
    for name in ("technique", "techniques", "tactic_name", "tactic_id", "tactics", "version"):
        assert inspect.getdoc(getattr(attack, name))
