"""Alerts, and the context an analyst needs to judge them."""

from __future__ import annotations
