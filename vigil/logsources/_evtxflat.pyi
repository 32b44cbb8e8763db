from collections.abc import Callable
from typing import Any

def flatten(
    text: str,
    path: str,
    profiles: dict[tuple[str | None, int | None], Any],
    profile_for: Callable[[str | None, int | None], Any],
    reserved: frozenset[str],
    /,
) -> dict[str, Any] | None: ...
