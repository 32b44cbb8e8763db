"""What the host itself records: log followers and inventory collectors for the agent's sensors.

Each module does one job (follow a log file, follow the journal, list packages, list users...)
and knows nothing about events; the ``auth_log`` and ``inventory`` sensors turn their results
into ECS documents.
"""

from __future__ import annotations
