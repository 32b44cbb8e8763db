"""Resolve Sigma placeholders (``field|expand: '%name%'``) from configured value lists.

A placeholder stands for a list of values the deployment knows (admin accounts, jump hosts,
program folders). Vigil replaces it, before the rule is compiled, with every value of the list
(OR), the way pySigma's ``ValueListPlaceholderTransformation`` does for query backends. The values
come from a mapping ``name -> [values]``: given to :meth:`vigil.detect.RuleSet.from_paths`, or
read from a YAML file with :func:`load_placeholders`. A placeholder without values makes the rule
fail to load with :class:`UnresolvedPlaceholder`, which names it and says how to provide it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import yaml
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaRule
from sigma.types import Placeholder, SigmaRegularExpression, SigmaString, SigmaType

from vigil.detect.errors import DetectError

logger = logging.getLogger(__name__)

Placeholders = Mapping[str, Sequence[str]]


class UnresolvedPlaceholder(DetectError):
    """A rule uses a placeholder that has no configured values.

    Attributes:
        name: The placeholder's name, without the ``%`` signs.
    """

    def __init__(self, name: str) -> None:
        """Build the message that names the placeholder and how to give it values."""
        super().__init__(
            f"placeholder %{name}% has no values; list them under '{name}' in a placeholders "
            f"YAML file and give it with --placeholders FILE (vigil up, server, scan and rules "
            f"check take it), or in code RuleSet.from_paths(..., placeholders={{'{name}': [...]}})"
        )
        self.name = name


def load_placeholders(path: str | Path | None) -> dict[str, list[str]]:
    """Read placeholder values from a YAML mapping of name to a value or a list of values.

    No file (None) means no placeholders.

    Raises:
        DetectError: The file cannot be read or is not such a mapping.
    """
    if path is None:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DetectError(f"cannot read placeholders file {path}: {exc}") from exc
    if not isinstance(data, Mapping):
        raise DetectError(
            f"placeholders file {path} must be a YAML mapping like 'admins: [root, ops]'"
        )
    values: dict[str, list[str]] = {}
    for name, listed in data.items():
        items = listed if isinstance(listed, list) else [listed]
        if any(isinstance(item, dict | list) or item is None for item in items):
            raise DetectError(
                f"placeholder {name!r} in {path} must be a value or a list of plain values"
            )
        values[str(name)] = [str(item) for item in items]
    return values


def resolve_placeholders(sigma_rule: SigmaRule, placeholders: Placeholders) -> None:
    """Replace every placeholder of a parsed rule by its values, in place.

    Raises:
        UnresolvedPlaceholder: A placeholder has no entry in ``placeholders``.
    """
    for detection in sigma_rule.detection.detections.values():
        _resolve_detection(detection, placeholders)


def _resolve_detection(detection: SigmaDetection, placeholders: Placeholders) -> None:
    for item in detection.detection_items:
        if isinstance(item, SigmaDetection):
            _resolve_detection(item, placeholders)
        elif isinstance(item, SigmaDetectionItem):
            item.value = [
                expanded for value in item.value for expanded in _expand(value, placeholders)
            ]


def _expand(value: SigmaType, placeholders: Placeholders) -> list[SigmaType]:
    def values_of(placeholder: Placeholder) -> Iterator[str | SigmaString]:
        if placeholder.name not in placeholders:
            raise UnresolvedPlaceholder(placeholder.name)
        # SigmaString parses wildcards in the values, as in a rule.
        yield from (SigmaString(v) for v in placeholders[placeholder.name])

    if isinstance(value, SigmaString) and value.contains_placeholder():
        return list(value.replace_placeholders(values_of))
    if isinstance(value, SigmaRegularExpression) and value.regexp.contains_placeholder():
        return list(value.replace_placeholders(values_of))
    return [value]
