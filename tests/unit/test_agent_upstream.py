"""Which upstream a standby's own files name (lifeboat.agent.node.configured_upstream): what
the agent compares with the topology's primary before it asks to be rejoined."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifeboat.agent.node import configured_upstream


@pytest.mark.parametrize(
    ("auto_conf", "upstream"),
    [
        # As pg_basebackup -R writes it.
        (
            "primary_conninfo = 'user=replicator passfile=/x host=pg-node1 port=5432'",
            ("pg-node1", 5432),
        ),
        ("primary_conninfo = 'host=''a b'' port=6000'  # a comment", ("a b", 6000)),
        ("primary_conninfo='host=h1'", ("h1", 5432)),
        ("primary_conninfo = 'host=h1'\nprimary_conninfo = 'host=h2 port=7'", ("h2", 7)),  # last
        ("primary_conninfo = ''", None),  # detached
        ("# nothing", None),
    ],
)
def test_the_upstream_a_standby_is_configured_with(
    tmp_path: Path, auto_conf: str, upstream: tuple[str, int] | None
) -> None:
    (tmp_path / "postgresql.auto.conf").write_text(auto_conf + "\n")
    assert configured_upstream(tmp_path) == upstream


def test_no_auto_conf_names_no_upstream(tmp_path: Path) -> None:
    assert configured_upstream(tmp_path) is None
