"""The Linux kernel audit subsystem: netlink protocol, rules, record parsing and reassembly."""

from __future__ import annotations
