"""Which agent guards a data directory: its identity, kept beside it, and one agent process
per directory (lifeboat.agent.node), on a real file system."""

from __future__ import annotations

import os
from pathlib import Path

from lifeboat.agent.node import agent_identity, agent_lock
from lifeboat.pg.datadir import DataDir
from lifeboat.pg.osuser import OsUser


def data_at(path: Path) -> DataDir:
    path.mkdir(parents=True)
    return DataDir(path, OsUser.current(), Path("/nonexistent"))


def test_the_identity_is_made_once_beside_the_directory_and_kept(tmp_path: Path) -> None:
    one = data_at(tmp_path / "a" / "data")
    path, first = agent_identity(one)
    assert path == tmp_path / "a" / ".data.lifeboat-agent-id"
    assert not path.is_relative_to(one.path)  # base backups copy what is in it
    assert agent_identity(one) == (path, first)  # a restart: the same
    assert sorted(p.name for p in path.parent.iterdir()) == [".data.lifeboat-agent-id", "data"]
    _, other = agent_identity(data_at(tmp_path / "b" / "data"))
    assert other != first  # another directory, another agent


def test_an_empty_identity_file_is_made_again(tmp_path: Path) -> None:
    one = data_at(tmp_path / "data")
    path = tmp_path / ".data.lifeboat-agent-id"
    path.write_text("")  # a torn write before a crash
    _, identity = agent_identity(one)
    assert identity
    assert path.read_text().strip() == identity


def test_one_agent_process_per_data_directory(tmp_path: Path) -> None:
    one = data_at(tmp_path / "data")
    held = agent_lock(one)
    assert held is not None
    assert held >= 0
    try:
        assert agent_lock(one) is None  # a second agent on it is refused
    finally:
        os.close(held)
    again = agent_lock(one)  # the first gone (its process ended): taken
    assert again is not None
    os.close(again)
