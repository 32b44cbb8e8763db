"""hunt."""

from __future__ import annotations
