"""The shape every deciding service takes: a frozen observation in, a `Decision` out, one
executor that acts.

A decision is plain data — commands, each with what it needs, and the reason for all of them —
so it can be tested with tables and a fixed clock, and so that deciding twice on the same
observation gives the same answer. Events a decision publishes are stamped here with the
observation's time and an id derived from their content: a replacement leader that re-decides
the same step publishes the same `Nats-Msg-Id`, and JetStream's de-duplication drops the
repeat instead of the history showing the step twice.

`execute` runs the commands in order. A command refused by its guard (`Refused`: the lease
is gone, the epoch moved on) stops the rest; so does a failed command the caller calls
critical. The next decision picks up from what is then true.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from lifeboat.common.events import ClusterEvent

log = logging.getLogger(__name__)

C = TypeVar("C")
E = TypeVar("E", bound=ClusterEvent)

# uuid5 namespace of events derived from decisions.
_EVENT_NAMESPACE = uuid.UUID("6f1c2a9e-4d0b-5c7e-9a31-1b2f3e4d5c6a")


@dataclass(frozen=True)
class Publish:
    event: ClusterEvent


@dataclass(frozen=True)
class Decision(Generic[C]):
    commands: tuple[C, ...]
    reason: str

    @classmethod
    def nothing(cls, reason: str) -> Decision[C]:
        return cls((), reason)


def stamped(event: E, at: datetime, *, key: str | None = None, occasion: str | None = None) -> E:
    """`event` as of `at`, with an id derived from what it says (not who says it, nor when).

    Two instances deciding the same step produce the same id, whatever their own identity.
    With `key`, the id comes from the event's type and `key` alone: for an outcome whose
    details (its timings) differ between the instances that may each publish it once, so
    that the stream's duplicate window keeps one. `occasion` tells an event apart from an
    identical one said earlier for another reason (the same hold said again a while later,
    a synchronous set that comes back after it was lost): without it the stream's
    duplicate window would drop the second as a copy of the first.
    """
    content = key or event.model_dump_json(exclude={"event_id", "occurred_at", "source"})
    if occasion is not None:
        content = f"{content}|{occasion}"
    event_id = uuid.uuid5(_EVENT_NAMESPACE, f"{event.type}|{content}")
    return event.model_copy(update={"event_id": event_id, "occurred_at": at})


class Refused(RuntimeError):
    """A command's guard said no: this instance may no longer act on it."""


@dataclass
class Outcome(Generic[C]):
    command: C
    ok: bool
    seconds: float
    detail: str = ""
    error: Exception | None = None  # what a failed command raised


async def execute(
    commands: tuple[C, ...],
    perform: Callable[[C], Awaitable[str]],
    *,
    critical: Callable[[C], bool],
) -> list[Outcome[C]]:
    """Perform `commands` in order; stop at a refusal or at a failed critical command."""
    outcomes: list[Outcome[C]] = []
    for command in commands:
        name = type(command).__name__
        started = time.monotonic()
        try:
            detail = await perform(command)
        except Refused as exc:
            outcomes.append(Outcome(command, False, time.monotonic() - started, str(exc), exc))
            log.warning("stopped: %s", exc)
            break
        except Exception as exc:
            outcomes.append(Outcome(command, False, time.monotonic() - started, str(exc), exc))
            log.warning("%s failed: %s", name, exc)
            if critical(command):
                break
            continue
        outcomes.append(Outcome(command, True, time.monotonic() - started, detail))
        log.info("%s: %s (%.3fs)", name, detail, outcomes[-1].seconds)
    return outcomes
