"""Vigil's Sigma detection engine.

Rules are parsed with pySigma, their fields mapped from Sigma's taxonomy to ECS once at load
time (``fieldmap.yml``), and their detections compiled into Vigil's own evaluator. A
:class:`RuleSet` files rules by log source and returns the rules an event fires::

    rules = RuleSet.from_paths([builtin_rules_dir()])
    for rule in rules.match(event):  # event: flat ECS dict
        ...
"""

from __future__ import annotations

from vigil.detect.errors import DetectError, UnsupportedConstruct
from vigil.detect.fieldmap import FieldMap
from vigil.detect.logsource import LogSource, event_logsources
from vigil.detect.rules import Rule, RuleLoadError
from vigil.detect.ruleset import RuleSet, builtin_rules_dir

__all__ = [
    "DetectError",
    "FieldMap",
    "LogSource",
    "Rule",
    "RuleLoadError",
    "RuleSet",
    "UnsupportedConstruct",
    "builtin_rules_dir",
    "event_logsources",
]
