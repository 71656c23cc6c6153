"""The watchdog on plain data, with a fixed clock: it kills only the postmaster it was armed
for (pid and start time), on this boot, once the agent's deadline has passed by its grace;
and the agent arms it for a writable postmaster, and keeps arming that one through crash
recovery, never for a standby."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lifeboat.agent.node import process_start
from lifeboat.agent.watchdog import (
    GRACE_SECONDS,
    RESTART_SLACK_SECONDS,
    Armed,
    Arming,
    Step,
    read_armed,
    step,
)

ARMED = Armed(boot="boot-a", postmaster=100, started=5, deadline=50.0, stop_seconds=5.0, agent=7)
THE_ONE = (100, 5)


@pytest.mark.parametrize(
    ("why", "armed", "running", "status", "agent_alive", "now", "expected"),
    [
        ("before the deadline", ARMED, THE_ONE, "ready", True, 49.0, "watch"),
        ("within the grace", ARMED, THE_ONE, "ready", False, 50.0 + GRACE_SECONDS, "watch"),
        ("past it, the agent gone", ARMED, THE_ONE, "ready", False, 50.6, "kill"),
        ("past it, the agent frozen", ARMED, THE_ONE, "ready", True, 50.6, "kill"),
        (
            "the agent's own stop, within its timeout",
            ARMED,
            THE_ONE,
            "stopping",
            True,
            54.0,
            "watch",
        ),
        ("the agent's own stop, past its timeout", ARMED, THE_ONE, "stopping", True, 55.1, "kill"),
        (
            "a shutdown, the agent gone (smart: sessions commit)",
            ARMED,
            THE_ONE,
            "stopping",
            False,
            50.6,
            "kill",
        ),
        ("another postmaster (started again)", ARMED, (101, 9), "ready", True, 60.0, "watch"),
        ("the pid reused by another process", ARMED, (100, 6), "ready", True, 60.0, "watch"),
        ("another postmaster, the agent gone", ARMED, (101, 9), "standby", False, 60.0, "exit"),
        ("stopped, the agent gone", ARMED, None, None, False, 60.0, "exit"),
        (
            "a record of another boot",
            Armed("boot-b", 100, 5, 50.0, 5.0, 7),
            THE_ONE,
            "ready",
            True,
            60.0,
            "watch",
        ),
        ("never armed", None, THE_ONE, "ready", True, 60.0, "watch"),
        ("never armed, the agent gone", None, THE_ONE, "ready", False, 60.0, "exit"),
    ],
)
def test_the_watchdogs_step(
    why: str,
    armed: Armed | None,
    running: tuple[int, int] | None,
    status: str | None,
    agent_alive: bool,
    now: float,
    expected: Step,
) -> None:
    got = step(
        armed, boot="boot-a", running=running, status=status, agent_alive=agent_alive, now=now
    )
    assert got == expected, why


@pytest.fixture
def arming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Arming:
    data_dir = tmp_path / "node1"
    data_dir.mkdir()
    arming = Arming(data_dir, 5.0, enabled=True)
    monkeypatch.setattr(arming, "_keep_running", lambda: None)  # no process in a unit test
    return arming


def test_a_standby_is_never_armed(arming: Arming) -> None:
    arming.confirmed(THE_ONE, writable=False, deadline=10.0)
    assert read_armed(arming.files) is None


def test_the_armed_postmaster_is_armed_again_through_crash_recovery(arming: Arming) -> None:
    arming.confirmed(THE_ONE, writable=True, deadline=10.0)
    arming.confirmed(THE_ONE, writable=False, deadline=12.0)  # in crash recovery, confirmed
    armed = read_armed(arming.files)
    assert armed is not None
    assert (armed.postmaster, armed.started, armed.deadline) == (100, 5, 12.0)
    arming.confirmed((101, 9), writable=False, deadline=14.0)  # another one, read-only
    armed = read_armed(arming.files)
    assert armed is not None
    assert armed.postmaster == 100


def test_its_files_are_beside_the_data_directory_not_in_it(arming: Arming) -> None:
    arming.confirmed(THE_ONE, writable=True, deadline=10.0)
    assert arming.files.armed.parent.parent == arming.data_dir.parent
    assert not list(arming.data_dir.iterdir())  # base backups copy what is in it


def test_turned_off_it_removes_a_predecessors_record(arming: Arming) -> None:
    arming.confirmed(THE_ONE, writable=True, deadline=10.0)
    off = Arming(arming.data_dir, 5.0, enabled=False)
    off.resume(deadline=20.0)
    assert read_armed(arming.files) is None


def running_here(arming: Arming) -> tuple[int, int]:
    """This test's own process as the node's postmaster (postmaster.pid names it)."""
    pid = os.getpid()
    (arming.data_dir / "postmaster.pid").write_text(f"{pid}\n")
    start = process_start(pid)
    assert start is not None
    return pid, start


@pytest.mark.parametrize(
    ("wanted", "kept"),
    [
        (10.2, 10.2),  # within the predecessor's deadline + slack: as the agent asks
        (12.0, 10.0 + RESTART_SLACK_SECONDS),  # the 2 s grace to connect: cut to the slack
    ],
)
def test_a_restarted_agent_never_stretches_its_predecessors_deadline(
    arming: Arming, monkeypatch: pytest.MonkeyPatch, wanted: float, kept: float
) -> None:
    """The leader counts the bound + 1 s from the predecessor's last lease renewal: a
    restarted agent (and so the watchdog it arms) may go at most RESTART_SLACK_SECONDS
    past the predecessor's deadline for the postmaster it armed."""
    arming.confirmed(running_here(arming), writable=True, deadline=10.0)
    successor = Arming(arming.data_dir, 5.0, enabled=True)
    monkeypatch.setattr(successor, "_keep_running", lambda: None)
    assert successor.resume(wanted) == pytest.approx(kept)
    armed = read_armed(successor.files)
    assert armed is not None
    assert armed.deadline == pytest.approx(kept)
    assert GRACE_SECONDS + RESTART_SLACK_SECONDS < 1.0  # the leader's margin


def test_a_restarted_agent_keeps_its_deadline_for_a_postmaster_nobody_armed(
    arming: Arming,
) -> None:
    running_here(arming)
    assert arming.resume(12.0) == 12.0
    assert read_armed(arming.files) is None
