"""Logging setup shared by the CLI entry points."""

from __future__ import annotations

import logging
import os


def configure(default: str | None = None) -> None:
    """Send log lines to stderr with time, logger name and level.

    The level is VIGIL_LOG if set, else ``default``, else INFO.
    """
    logging.basicConfig(
        level=(os.environ.get("VIGIL_LOG") or default or "INFO").upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # One line per agent request would drown what matters; failures are logged by the caller.
    logging.getLogger("httpx").setLevel(logging.WARNING)
