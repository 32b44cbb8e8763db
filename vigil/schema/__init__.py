"""The event model: ECS documents, flattening, validation of what agents send."""

from __future__ import annotations
