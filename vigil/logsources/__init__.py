"""Log sources: parsers that turn text logs from hosts into ECS documents.

Each module reads one log format. The parsers are pure functions, so the agent uses them on
lines it follows live and analysts use them on log files collected from a host.
"""

from __future__ import annotations
