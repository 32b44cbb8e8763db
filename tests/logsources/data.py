"""Where the shared third-party test data lives (never copied into the repository)."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"shared test data not found at {DATA} (see shared/data/README.md)"
)
