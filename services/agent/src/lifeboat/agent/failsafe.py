"""Agent to agent, without NATS: what each agent answers at `/agent/view`, and asking them.

A primary's agent asks the other members' agents only while it cannot read the topology;
each answers with its node's state as pg_control gives it and the topology it last read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import httpx
from pydantic import BaseModel, ConfigDict, NonNegativeFloat, NonNegativeInt

from lifeboat.agent.guard import PeerAnswer
from lifeboat.common.events import Role

VIEW_PATH = "/agent/view"


class AgentView(BaseModel):
    """One agent's answer: its node and what it last knew of the cluster."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cluster: str
    node: str
    running: bool
    writable: bool  # running and not known to be in recovery
    role: Role
    cluster_state: str | None
    epoch: NonNegativeInt | None  # of the topology it last read
    primary: str | None
    topology_age_seconds: NonNegativeFloat | None  # since that read
    verdict: str


async def ask(client: httpx.AsyncClient, node: str, url: str, timeout: float) -> PeerAnswer:
    try:
        resp = await client.get(f"{url.rstrip('/')}{VIEW_PATH}", timeout=timeout)
        resp.raise_for_status()
        view = AgentView.model_validate_json(resp.content)
    except (httpx.HTTPError, ValueError) as exc:
        return PeerAnswer(node, error=f"{type(exc).__name__}: {exc}"[:200])
    if view.node != node:
        return PeerAnswer(node, error=f"{url} is the agent of {view.node}, not of {node}")
    return PeerAnswer(node, view.writable, view.epoch, view.primary)


async def ask_all(
    client: httpx.AsyncClient, peers: dict[str, str], members: Iterable[str], timeout: float
) -> tuple[PeerAnswer, ...]:
    """Every member's agent at once; a member without an address is not asked."""
    asked = [ask(client, n, peers[n], timeout) for n in members if n in peers]
    return tuple(await asyncio.gather(*asked))
