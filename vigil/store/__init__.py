"""Storage behind small interfaces: state (SQLite) and telemetry (DuckDB) in the embedded mode."""

from __future__ import annotations
