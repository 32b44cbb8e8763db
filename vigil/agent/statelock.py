"""One agent per state folder.

Two agents on one state folder would share an identity and a spool: both would send the same
events, report each other's sensors as their own and fight over kernel audit. The running
agent holds an exclusive lock on a file in its folder; the kernel drops it when the process
ends, however it ends, so a crashed agent never blocks the next start.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import IO

from vigil.agent.errors import AgentError

log = logging.getLogger(__name__)

LOCK_FILE = "agent.lock"


def hold_state_dir(state_dir: Path) -> IO[str]:
    """Lock ``state_dir`` for this process; close the returned file to let go.

    Raises:
        AgentError: Another running agent holds the folder.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    handle = open(state_dir / LOCK_FILE, "a+", encoding="ascii")  # held open while running
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise AgentError(
            f"another agent (pid {holder}) is running with the state folder {state_dir}; stop "
            "it first, or give this agent a folder of its own with --state-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    log.debug("holding %s", state_dir / LOCK_FILE)
    return handle
