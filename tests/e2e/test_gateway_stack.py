"""The front door against the running stack (`make up`): every service, three PostgreSQL
nodes, NATS and S3, and the gateway and the `lifeboat` CLI as an operator meets them.

Status shows the real topology (the node PostgreSQL says takes writes is the primary), the CLI
draws every node and its `--json` parses, SSE delivers the monitor's live reports and resumes
with Last-Event-ID, a switchover through the API moves the primary and its operation reaches
`completed`, a command the failover service refuses makes the CLI exit non-zero with its
reason, and a backup through the API completes and is listed — a files backup too, verified
and restored through the same endpoints."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from lifeboat.devstack.throwaway import UpStack, up_stack_env
from tests.sse import read_sse

pytestmark = pytest.mark.stack
CLUSTER = "main"


@pytest.fixture(scope="module")
def stack(workdir: Path) -> Iterator[UpStack]:
    stack_dir = workdir / f"gw-stack-{time.monotonic_ns()}" / ".lifeboat"
    stack_dir.parent.mkdir()
    env = up_stack_env(stack_dir)
    env["LIFEBOAT_PG_DATA_ROOT"] = str(workdir / f"gw-pg-root-{time.monotonic_ns()}")
    s = UpStack(stack_dir, stack_dir.parent / "stack.log", env=env)
    try:
        s.start()
        s.wait_healthy(timeout=180)
        yield s
    finally:
        s.stop()


def token(stack: UpStack) -> str:
    return (stack.dir / "secrets" / "lifeboat_token").read_text().strip()


def api(stack: UpStack, **kwargs: Any) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token(stack)}"}
    return httpx.AsyncClient(base_url=stack.gateway, headers=headers, timeout=90, **kwargs)


async def lifeboat(stack: UpStack, *args: str) -> tuple[int, str, str]:
    """The CLI as an operator runs it: URL and token from the environment."""
    env = {"LIFEBOAT_GATEWAY_URL": stack.gateway, "LIFEBOAT_TOKEN": token(stack)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lifeboat.gateway.cli",
        *args,
        env={**stack.env, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def writable_node(stack: UpStack, status: dict[str, Any]) -> str:
    """The node PostgreSQL itself says takes writes, asked directly."""
    password = (stack.dir / "secrets" / "pg_password").read_text().strip()
    found = []
    for node in status["nodes"]:
        conninfo = f"host={node['host']} port={node['port']} user=postgres dbname=postgres"
        with psycopg.connect(conninfo, password=password, connect_timeout=5) as conn:
            row = conn.execute("select pg_is_in_recovery()").fetchone()
        if row == (False,):
            found.append(str(node["name"]))
    assert len(found) == 1, found
    return found[0]


async def settled(client: httpx.AsyncClient, stack: UpStack, timeout: float = 90) -> dict[str, Any]:
    """The status once the cluster is synchronous and every node reports in and answers (an
    old primary is back from its rejoin)."""
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = (await client.get(f"/clusters/{CLUSTER}")).json()
        topo = status["topology"]
        answering = all(n["health"] and n["health"].get("reachable") for n in status["nodes"])
        if topo and topo["synchronous"] and answering:
            return status
        if time.monotonic() >= deadline:
            nodes = {n["name"]: n["health"] for n in status["nodes"]}
            raise AssertionError(
                f"not settled in {timeout:g}s: topology {topo}; health {nodes}\n"
                + stack.output()[-6000:]
            )
        await asyncio.sleep(0.5)


async def test_status_and_the_cli_show_the_real_topology(stack: UpStack) -> None:
    async with api(stack) as client:
        status = await settled(client, stack)
        primary = writable_node(stack, status)
        assert status["topology"]["primary"] == primary
        roles = {n["name"]: n["health"]["role"] for n in status["nodes"]}
        assert roles == {n: "primary" if n == primary else "standby" for n in roles}
        assert len(roles) == 3
        assert (await client.get(f"/clusters/{CLUSTER}/nodes/{primary}/primary")).status_code == 200

    code, out, err = await lifeboat(stack, "status", CLUSTER)
    assert code == 0, err
    for node in roles:
        assert node in out
    assert "Leader" in out
    code, out, err = await lifeboat(stack, "status", CLUSTER, "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["topology"]["primary"] == primary
    assert sorted(n["name"] for n in shown["nodes"]) == sorted(roles)


async def test_sse_delivers_the_monitors_live_reports_and_resumes(stack: UpStack) -> None:
    subject = f"node.health.{CLUSTER}.>"
    async with api(stack) as client:
        first = await asyncio.wait_for(read_sse(client, {"subject": subject}, 3, {}), 30)
        assert {e["type"] for _, e in first} == {"node.health"}
        seqs = [s for s, _ in first]
        assert seqs == sorted(seqs)
        resumed = await asyncio.wait_for(
            read_sse(client, {"subject": subject}, 2, {"Last-Event-ID": str(seqs[0])}), 30
        )
        # Resumed right after the first one: the next two are the ones already read.
        assert [s for s, _ in resumed] == seqs[1:3]


async def test_a_switchover_through_the_api_moves_the_primary_and_a_refusal_is_a_clear_exit(
    stack: UpStack,
) -> None:
    async with api(stack) as client:
        status = await settled(client, stack)
        old = status["topology"]["primary"]
        target = status["topology"]["synchronous"][0]

        code, _, err = await lifeboat(
            stack, "switchover", "--cluster", CLUSTER, "--target", old, "--reason", "e2e"
        )
        assert code != 0
        assert err.startswith("lifeboat: refused: "), err
        assert len(err.strip().splitlines()) == 1

        resp = await client.post(
            f"/clusters/{CLUSTER}/switchover", json={"target": target, "reason": "e2e"}
        )
        assert resp.status_code == 202, resp.text
        done = (await client.get(resp.headers["location"], params={"wait": 60})).json()
        assert done["state"] == "completed", (done, stack.output()[-3000:])
        assert done["outcome"]["new_primary"] == target
        assert done["requested_by"] == "local-admin"

        deadline = time.monotonic() + 60
        while (await client.get(f"/clusters/{CLUSTER}/nodes/{target}/primary")).status_code != 200:
            assert time.monotonic() < deadline, stack.output()[-3000:]
            await asyncio.sleep(0.5)
        status = await settled(client, stack)
        assert status["topology"]["primary"] == target
        assert writable_node(stack, status) == target
        assert status["last_failover"]["type"] == "switchover.completed"


async def test_a_backup_through_the_api_completes_and_is_listed(stack: UpStack) -> None:
    async with api(stack) as client:
        resp = await client.post(f"/clusters/{CLUSTER}/backups", json={"kind": "physical"})
        done = await finished(stack, client, resp)
        backup_id = done["outcome"]["backup_id"]
        await listed_as(client, backup_id, "unverified", "verified")
    code, out, err = await lifeboat(stack, "backup", "list", "--cluster", CLUSTER, "--json")
    assert code == 0, err
    assert backup_id in [b["backup_id"] for b in json.loads(out)["backups"]]


async def test_a_files_backup_is_listed_verified_and_restored_like_the_others(
    stack: UpStack,
) -> None:
    """The file set `make up` runs: its snapshot through the same endpoints as a database
    backup — taken, listed, verified (every object read back), restored into a directory."""
    source = stack.dir / "files" / "node1"
    (source / "e2e").mkdir(exist_ok=True)
    (source / "e2e" / "upload 1.txt").write_bytes(b"an application's file")
    async with api(stack) as client:
        resp = await client.post(f"/clusters/{CLUSTER}/backups", json={"kind": "files"})
        snapshot = (await finished(stack, client, resp))["outcome"]["backup_id"]
        assert "-files-uploads-" in snapshot
        await listed_as(client, snapshot, "unverified")
        verify = await client.post(f"/clusters/{CLUSTER}/backups/{snapshot}/verify")
        outcome = (await finished(stack, client, verify))["outcome"]
        assert outcome["ok"] is True, outcome
        await listed_as(client, snapshot, "verified")
        target = stack.dir.parent / "restored-files"
        restore = await client.post(
            f"/clusters/{CLUSTER}/restores",
            json={"backup_id": snapshot, "data_dir": str(target)},
        )
        await finished(stack, client, restore)
        assert (target / "e2e" / "upload 1.txt").read_bytes() == b"an application's file"
        assert sorted(p.name for p in target.rglob("*")) == sorted(
            p.name for p in source.rglob("*")
        )
    code, out, err = await lifeboat(
        stack, "backup", "list", "--cluster", CLUSTER, "--kind", "files", "--json"
    )
    assert code == 0, err
    assert [b["backup_id"] for b in json.loads(out)["backups"]] == [snapshot]


async def finished(
    stack: UpStack, client: httpx.AsyncClient, resp: httpx.Response
) -> dict[str, Any]:
    """The operation a command started, once done; it must have completed."""
    assert resp.status_code == 202, resp.text
    deadline = time.monotonic() + 240
    while True:
        done: dict[str, Any] = (
            await client.get(resp.headers["location"], params={"wait": 30})
        ).json()
        if done["done"] or time.monotonic() > deadline:
            break
    assert done["state"] == "completed", (done, stack.output()[-3000:])
    return done


async def listed_as(client: httpx.AsyncClient, backup_id: str, *status: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        listed = (await client.get(f"/clusters/{CLUSTER}/backups")).json()
        if any(b["backup_id"] == backup_id and b["status"] in status for b in listed["backups"]):
            return
        assert time.monotonic() < deadline, listed
        await asyncio.sleep(0.5)
