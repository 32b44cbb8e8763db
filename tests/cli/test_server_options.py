"""``vigil up`` and ``vigil server`` options that shape what the server loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.cli.run import server_config
from vigil.detect import DetectError
from vigil.server.context import ServerContext

RULE = """title: Admin tool run
id: 2b7e4c1a-5d6f-4e3a-9b8c-7d6e5f4a3b2c
logsource: {product: linux, category: process_creation}
detection:
  tool: {Image|expand: '%admin_tools%'}
  condition: tool
level: low
"""


def test_the_server_loads_rules_with_the_placeholders_it_is_given(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "admin_tools.yml").write_text(RULE)
    values = tmp_path / "placeholders.yml"
    values.write_text("admin_tools: [/usr/bin/nmap, /usr/bin/tcpdump]\n")

    without = ServerContext.open(server_config(tmp_path / "a", "127.0.0.1:0", [str(rules)], []))
    without.close()
    assert [e.message for e in without.rules.errors if "admin_tools" in e.message]
    config = server_config(tmp_path / "b", "127.0.0.1:0", [str(rules)], [], values)
    with_values = ServerContext.open(config)
    with_values.close()
    assert with_values.rules.errors == []
    event = {"host.os.type": "linux", "event.category": ["process"], "event.type": ["start"]}
    fired = with_values.rules.match({**event, "process.executable": "/usr/bin/tcpdump"})
    assert [rule.title for rule in fired] == ["Admin tool run"]

    with pytest.raises(DetectError, match="cannot read placeholders file"):
        server_config(tmp_path / "c", "127.0.0.1:0", [], [], tmp_path / "missing.yml")
