"""Reading the gateway's live events (`GET /events`, Server-Sent Events) in tests."""

from __future__ import annotations

import json
from typing import Any

import httpx


async def read_sse(
    client: httpx.AsyncClient, params: dict[str, str], count: int, headers: dict[str, str]
) -> list[tuple[int, dict[str, Any]]]:
    """The first `count` events as (stream sequence, event); the stream must answer 200."""
    got: list[tuple[int, dict[str, Any]]] = []
    async with client.stream("GET", "/events", params=params, headers=headers) as resp:
        assert resp.status_code == 200
        seq = 0
        async for line in resp.aiter_lines():
            if line.startswith("id:"):
                seq = int(line[3:])
            elif line.startswith("data:"):
                got.append((seq, json.loads(line[5:])))
                if len(got) >= count:
                    return got
    return got
