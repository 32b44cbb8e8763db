"""Logging setup shared by the CLI entry points."""

from __future__ import annotations

import logging
import os


def configure(level: str | None = None) -> None:
    """Send log lines to stderr with time, logger name and level; VIGIL_LOG sets the level."""
    logging.basicConfig(
        level=(level or os.environ.get("VIGIL_LOG", "INFO")).upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # One line per agent request would drown what matters; failures are logged by the caller.
    logging.getLogger("httpx").setLevel(logging.WARNING)
