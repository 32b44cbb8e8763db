"""A thin wrapper around the ``nft`` command of nftables.

Rulesets are applied as text through ``nft -f -`` so that a whole ruleset is one kernel
transaction: it applies completely or not at all. Listings use the JSON output (``nft -j``).
Every call acts on the network namespace of the calling process.

Reference: nft(8), "libnftables-json(5)" for the JSON listing format.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Sequence
from typing import Any

from vigil.agent.respond.errors import ResponseError

log = logging.getLogger(__name__)

NFT_TIMEOUT_S = 30.0


def run_nft(args: Sequence[str], stdin: str | None = None) -> str:
    """Run ``nft`` with ``args`` and return its standard output.

    Args:
        args: Arguments after ``nft``, e.g. ``["-j", "list", "tables"]``.
        stdin: Text fed to the command, e.g. a ruleset for ``["-f", "-"]``.

    Returns:
        What nft wrote to standard output.

    Raises:
        ResponseError: nft is not installed, timed out, or exited with an error; the message
            carries nft's own error text.
    """
    command = ["nft", *args]
    log.debug("running %s", " ".join(command))
    try:
        done = subprocess.run(
            command,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=NFT_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ResponseError(
            "nftables 'nft' command not found: install the nftables package"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise ResponseError(
            f"'{' '.join(command)}' did not finish in {NFT_TIMEOUT_S:.0f} s; nothing was changed"
            " unless the kernel had already committed the transaction: check 'nft list ruleset'"
        ) from exc
    if done.returncode != 0:
        raise ResponseError(
            f"'{' '.join(command)}' failed with exit code {done.returncode}: "
            f"{done.stderr.strip() or '(no error text)'}"
        )
    return done.stdout


def apply_ruleset(text: str) -> None:
    """Apply ``text`` as one atomic nftables transaction (``nft -f -``).

    Raises:
        ResponseError: nft is missing or rejected the ruleset; nothing of it was applied.
    """
    run_nft(["-f", "-"], stdin=text)


def list_tables() -> list[tuple[str, str]]:
    """Return the ``(family, name)`` of every nftables table in this network namespace.

    Raises:
        ResponseError: nft is missing or failed, or printed JSON this module cannot read.
    """
    output = run_nft(["-j", "list", "tables"])
    try:
        items: list[dict[str, Any]] = json.loads(output).get("nftables", [])
    except (ValueError, AttributeError) as exc:
        raise ResponseError(f"cannot read the JSON of 'nft -j list tables': {exc}") from exc
    return [
        (item["table"]["family"], item["table"]["name"])
        for item in items
        if isinstance(item.get("table"), dict)
    ]


def table_exists(family: str, name: str) -> bool:
    """Tell whether the table ``family name`` exists in this network namespace.

    Raises:
        ResponseError: nft is missing or failed.
    """
    return (family, name) in list_tables()


def delete_table(family: str, name: str) -> bool:
    """Delete the table ``family name`` if it exists, in one transaction.

    Returns:
        True if the table existed before the call.

    Raises:
        ResponseError: nft is missing or failed.
    """
    existed = table_exists(family, name)
    # Declaring the table first makes the delete succeed whether or not it exists, so a table
    # created between the check and here is removed too.
    apply_ruleset(f"table {family} {name}\ndelete table {family} {name}\n")
    return existed


def counter_packets(family: str, table: str, name: str) -> int | None:
    """Return the packets counted by the named counter, or None if it does not exist.

    Raises:
        ResponseError: nft is missing or printed JSON this module cannot read.
    """
    try:
        output = run_nft(["-j", "list", "counter", family, table, name])
    except ResponseError as exc:
        if "No such file or directory" in str(exc):
            return None
        raise
    try:
        items: list[dict[str, Any]] = json.loads(output).get("nftables", [])
        for item in items:
            if isinstance(item.get("counter"), dict):
                return int(item["counter"]["packets"])
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        raise ResponseError(f"cannot read the JSON of 'nft -j list counter': {exc}") from exc
    return None
