"""Vigil's Sigma detection engine.

Rules are parsed with pySigma, their fields mapped from Sigma's taxonomy to ECS once at load
time (``fieldmap.yml``), and their detections compiled into Vigil's own evaluator. A
:class:`RuleSet` files rules by log source and returns the rules an event fires::

    rules = RuleSet.from_paths([builtin_rules_dir()])
    engine = rules.correlation_engine()  # correlation rules, one engine per stream
    for event in stream:  # flat ECS dicts with @timestamp
        fired = rules.match(event)
        alerts = [rule for rule in fired if rule.generate]
        hits = engine.feed(event, fired)
"""

from __future__ import annotations

from vigil.detect.correlation import Correlation, CorrelationEngine, CorrelationHit
from vigil.detect.errors import DetectError, UnsupportedConstruct
from vigil.detect.fieldmap import FieldMap
from vigil.detect.logsource import LogSource, event_logsources
from vigil.detect.placeholders import UnresolvedPlaceholder, load_placeholders
from vigil.detect.rules import Rule, RuleLoadError
from vigil.detect.ruleset import RuleSet, builtin_rules_dir

__all__ = [
    "Correlation",
    "CorrelationEngine",
    "CorrelationHit",
    "DetectError",
    "FieldMap",
    "LogSource",
    "Rule",
    "RuleLoadError",
    "RuleSet",
    "UnresolvedPlaceholder",
    "UnsupportedConstruct",
    "builtin_rules_dir",
    "event_logsources",
    "load_placeholders",
]
