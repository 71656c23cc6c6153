"""The gateway fronting a real backup service and filesync: a backup asked for through `POST
/clusters/{cluster}/backups` is taken by the backup service (real PostgreSQL, S3 and NATS),
its operation reaches `completed`, the catalogue the service mirrors into KV is listed and
shown by the API and by `lifeboat backup list --json`; a restore asked for through the API
into a new data directory completes and serves the data; deleting the last good backup is
refused with the service's reason (409); a file set's sync, check and restore asked for
through the API and the CLI of a real filesync complete, and `GET /files` shows the set."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from lifeboat.common.clusters import ClusterSpec
from lifeboat.devstack.launch import ServiceProcess, launch, service_env
from lifeboat.devstack.postgres import PgCluster
from lifeboat.devstack.procs import free_port
from lifeboat.devstack.throwaway import pg_on_free_ports, stop_cluster, write_clusters
from lifeboat.gateway.auth import hash_token
from lifeboat.pg.datadir import DataDir
from tests.endpoints import S3Endpoint

READ, OPERATE = "read-token-bk", "operate-token-bk"


@dataclass
class Stack:
    pg: PgCluster
    cluster: str
    gateway: ServiceProcess
    backup: ServiceProcess
    filesync: ServiceProcess
    workdir: Path

    @property
    def files(self) -> Path:
        return self.workdir / "uploads"

    def http(self, token: str | None = OPERATE) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.gateway.url, headers=headers, timeout=60)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.output()[-3000:]}"
            for p in (self.backup, self.filesync, self.gateway)
        )


@pytest.fixture(scope="module")
def stack(nats_url: str, s3: S3Endpoint, workdir: Path) -> Iterator[Stack]:
    cluster = f"gb{uuid.uuid4().hex[:8]}"
    base = workdir / cluster
    base.mkdir()
    base.chmod(0o755)
    pg = pg_on_free_ports(base / "pg", nodes=2)
    procs: list[ServiceProcess] = []
    try:
        pg.up()
        pg.wait_streaming()
        pg.primary.execute(sql.SQL("create table kept (id int)"), dbname="app")
        pg.primary.execute(
            sql.SQL("insert into kept select generate_series(1, 1000)"), dbname="app"
        )
        pg.wait_streaming()
        uploads = base / "uploads"
        (uploads / "a").mkdir(parents=True)
        (uploads / "a" / "one.txt").write_text("one")
        (uploads / "two.bin").write_bytes(b"\x00" * 70_000)
        spec = pg.spec(cluster).model_dump(mode="json")
        spec["filesets"] = [
            {"name": "uploads", "root": str(uploads), "placement": [{"node": "node1"}]}
        ]
        tokens = base / "tokens"
        tokens.write_text(f"viewer:read:{hash_token(READ)}\noncall:operate:{hash_token(OPERATE)}\n")
        env = service_env(
            nats_url=nats_url,
            clusters_file=write_clusters(base / "clusters.yaml", ClusterSpec.model_validate(spec)),
            pg_password=pg.passwords.superuser.get_secret_value(),
            extra={
                **s3.env(),
                "LIFEBOAT_REPLICATION_PASSWORD": pg.passwords.replication.get_secret_value(),
                "LIFEBOAT_WORK_DIR": str(base / "work"),
                "LIFEBOAT_WAL_ARCHIVE": "false",
                "LIFEBOAT_SCHEDULE_PHYSICAL": "",
                "LIFEBOAT_FIRST_BACKUP_AT_START": "false",
                "LIFEBOAT_VERIFY_AFTER_BACKUP": "false",
                "LIFEBOAT_JANITOR_INTERVAL_SECONDS": "3600",
                "LIFEBOAT_TOKENS_FILE": str(tokens),
            },
        )
        backup = ServiceProcess(
            "backup", env, instance=f"{cluster}-bk", log_file=base / "backup.log"
        )
        procs.append(backup)
        backup.start()
        filesync = launch(
            "filesync",
            env,
            instance=f"{cluster}-fs",
            extra={
                "LIFEBOAT_FILESYNC_NODE": "node1",
                "LIFEBOAT_FILESYNC_STATE_DIR": str(base / "fs-state"),
                "LIFEBOAT_FILESYNC_CHECK_INTERVAL_SECONDS": "0",
            },
            log_file=base / "filesync.log",
        )
        procs.append(filesync)
        gateway = launch("gateway", env, instance=f"{cluster}-gw", log_file=base / "gw.log")
        procs.append(gateway)
        backup.wait_ready(60)
        filesync.wait_ready(60)
        gateway.wait_ready(30)
        yield Stack(pg, cluster, gateway, backup, filesync, base)
    finally:
        for proc in reversed(procs):
            proc.stop()
        stop_cluster(pg)


async def follow(api: httpx.AsyncClient, location: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view: dict[str, Any] = (await api.get(location, params={"wait": 30})).json()
        if view["done"] or time.monotonic() > deadline:
            return view


async def cli(stack: Stack, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lifeboat.gateway.cli",
        "--gateway",
        stack.gateway.url,
        "--token",
        OPERATE,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_backup_through_the_api_completes_is_listed_and_restores(stack: Stack) -> None:
    c = stack.cluster
    async with stack.http() as api:
        resp = await api.post(f"/clusters/{c}/backups", json={"kind": "physical"})
        assert resp.status_code == 202, resp.text
        op = resp.json()
        assert (op["kind"], op["target"], op["requested_by"]) == ("backup", "physical", "oncall")
        assert resp.headers["location"] == f"/operations/{op['id']}"
        done = await follow(api, resp.headers["location"])
        assert done["state"] == "completed", (done, stack.logs())
        outcome = done["outcome"]
        assert outcome["type"] == "backup.completed"
        assert outcome["request_id"] == op["id"]  # the operation id, as the service answers
        assert "backup.started" in [e["type"] for e in done["events"]]
        backup_id = outcome["backup_id"]

        # The catalogue, as the backup service mirrors it into KV (never S3 from here).
        deadline = time.monotonic() + 30
        while True:
            listed = (await api.get(f"/clusters/{c}/backups")).json()
            if [b["backup_id"] for b in listed["backups"]] == [backup_id]:
                break
            assert time.monotonic() < deadline, (listed, stack.logs())
            await asyncio.sleep(0.2)
        assert listed["mirrored"] is True
        entry = listed["backups"][0]
        assert (entry["kind"], entry["status"], entry["request_id"]) == (
            "physical",
            "unverified",
            op["id"],
        )
        assert entry["stored_bytes"] == outcome["size_bytes"]
        filtered = (await api.get(f"/clusters/{c}/backups", params={"kind": "logical"})).json()
        assert filtered["backups"] == []
        shown = (await api.get(f"/clusters/{c}/backups/{backup_id}")).json()
        assert shown["manifest"]["backup_id"] == backup_id
        assert shown["manifest"]["objects"]
        missing = await api.get(f"/clusters/{c}/backups/nope")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert (await api.get(f"/clusters/{c}/wal")).json()["cluster"] == c

        # The CLI reads the same.
        code, out, err = await cli(stack, "backup", "list", "--cluster", c, "--json")
        assert code == 0, err
        assert [b["backup_id"] for b in json.loads(out)["backups"]] == [backup_id]
        code, out, err = await cli(stack, "backup", "show", backup_id, "--cluster", c, "--json")
        assert code == 0, err
        assert json.loads(out)["backup_id"] == backup_id
        code, _, err = await cli(stack, "backup", "show", "nope", "--cluster", c)
        assert code == 1
        assert err.strip().startswith("lifeboat: 404")
        assert len(err.strip().splitlines()) == 1

        # The last good backup: refused by the backup service, with its reason.
        refused = await api.delete(f"/clusters/{c}/backups/{backup_id}")
        assert refused.status_code == 409, refused.text
        assert "last good physical backup" in refused.json()["reason"]
        assert refused.json()["operation"]["outcome"]["type"] == "backup.delete_refused"

        # A restore into a new data directory, asked for through the API.
        data_dir = stack.workdir / "restored"
        port = free_port()
        resp = await api.post(
            f"/clusters/{c}/restores",
            json={"backup_id": backup_id, "data_dir": str(data_dir), "port": port},
        )
        assert resp.status_code == 202, resp.text
        restored: dict[str, Any] = {}
        try:
            restored = await follow(api, resp.headers["location"])
            outcome = json.dumps(restored.get("outcome"))  # the reason, before the logs
            assert restored["state"] == "completed", f"{outcome}\n{stack.logs()[-6000:]}"
            assert restored["outcome"]["type"] == "restore.completed"
            assert restored["outcome"]["port"] == port
            password = stack.pg.passwords.superuser.get_secret_value()
            conninfo = f"host=127.0.0.1 port={port} user=postgres dbname=app"
            with psycopg.connect(conninfo, password=password) as conn:
                assert conn.execute("select count(*) from kept").fetchone() == (1000,)
        finally:
            where = Path((restored.get("outcome") or {}).get("data_dir") or data_dir)
            if (where / "postmaster.pid").exists():
                DataDir(where, stack.pg.os_user, stack.pg.bindir).stop("immediate")


async def test_the_backup_endpoints_refuse_without_operate_and_check_at_the_edge(
    stack: Stack,
) -> None:
    c = stack.cluster
    mutations = [
        ("POST", f"/clusters/{c}/backups"),
        ("DELETE", f"/clusters/{c}/backups/x"),
        ("POST", f"/clusters/{c}/backups/x/verify"),
        ("POST", f"/clusters/{c}/restores"),
        ("POST", f"/clusters/{c}/files/x/sync"),
    ]
    async with stack.http(None) as anyone, stack.http(READ) as reader, stack.http() as api:
        for method, path in mutations:
            assert (await anyone.request(method, path)).status_code == 401, path
            assert (await reader.request(method, path)).status_code == 403, path
        node = stack.pg.nodes[1].name
        unconfirmed = await api.post(f"/clusters/{c}/restores", json={"node": node})
        assert unconfirmed.status_code == 422
        assert unconfirmed.json()["errors"][0]["field"] == "body.confirm"
        assert (await api.post("/clusters/nope/backups")).status_code == 404
        assert (await api.post(f"/clusters/{c}/files/nope/sync")).status_code == 404


async def test_the_cli_takes_a_backup_to_its_end_and_deletes_one_that_is_not_the_last(
    stack: Stack,
) -> None:
    c = stack.cluster
    async with stack.http() as api:
        before = (await api.get(f"/clusters/{c}/backups")).json()["backups"]
    code, out, err = await cli(stack, "backup", "create", "--cluster", c, "--json")
    assert code == 0, (err, stack.logs())
    view = json.loads(out)
    assert (view["kind"], view["state"]) == ("backup", "completed")
    taken = view["outcome"]["backup_id"]
    code, out, err = await cli(stack, "backup", "create", "--cluster", c, "--no-wait")
    assert code == 0, err
    assert "backup pending" in out or "backup running" in out or "completed" in out

    async with stack.http() as api:
        deadline = time.monotonic() + 30
        while taken not in [
            b["backup_id"] for b in (await api.get(f"/clusters/{c}/backups")).json()["backups"]
        ]:
            assert time.monotonic() < deadline, stack.logs()
            await asyncio.sleep(0.2)
    for old in before:
        code, out, err = await cli(
            stack, "backup", "delete", old["backup_id"], "--cluster", c, "--json"
        )
        assert code == 0, err
        deleted = json.loads(out)
        assert (deleted["kind"], deleted["state"]) == ("backup_delete", "completed"), deleted
        assert deleted["outcome"]["type"] == "backup.deleted"
    code, out, err = await cli(stack, "wal", "--cluster", c, "--json")
    assert code == 0, err
    assert json.loads(out)["cluster"] == c
    code, _, err = await cli(stack, "restore", "--cluster", c, "--node", stack.pg.nodes[1].name)
    assert code == 1
    assert err.startswith("lifeboat: 422")


async def test_a_file_set_is_synced_checked_and_restored_through_the_api(stack: Stack) -> None:
    c = stack.cluster
    (stack.files / "a" / "three.txt").write_text("three")
    async with stack.http() as api:
        resp = await api.post(f"/clusters/{c}/files/uploads/sync", json={})
        assert resp.status_code == 202, resp.text
        synced = await follow(api, resp.headers["location"], timeout=60)
        assert synced["state"] == "completed", (synced, stack.logs())
        assert synced["outcome"]["type"] == "file.synced"

        view = (await api.get(f"/clusters/{c}/files")).json()
        [uploads] = view["filesets"]
        assert uploads["name"] == "uploads"
        assert uploads["last_sync"] is not None
        assert uploads["paused"] is False

        resp = await api.post(f"/clusters/{c}/files/uploads/check", json={})
        checked = await follow(api, resp.headers["location"], timeout=60)
        assert checked["state"] == "completed", (checked, stack.logs())
        assert checked["outcome"]["type"] == "file.verified"
        assert checked["outcome"]["matching"] == 3
        assert checked["outcome"]["differing"] == 0

        copy = stack.workdir / "uploads-copy"
        resp = await api.post(
            f"/clusters/{c}/files/uploads/restore", json={"destination": str(copy)}
        )
        restored = await follow(api, resp.headers["location"], timeout=60)
        assert restored["state"] == "completed", (restored, stack.logs())
        assert restored["outcome"]["files_restored"] == 3
        assert (copy / "a" / "three.txt").read_text() == "three"
        assert (copy / "two.bin").stat().st_size == 70_000
        assert (await api.post(f"/clusters/{c}/files/uploads/restore")).status_code == 422

    code, out, err = await cli(stack, "files", "sync", "uploads", "--cluster", c, "--json")
    assert code == 0, err
    assert json.loads(out)["state"] == "completed"
    code, out, err = await cli(stack, "files", "status", "--cluster", c, "--json")
    assert code == 0, err
    assert [f["name"] for f in json.loads(out)["filesets"]] == ["uploads"]
    code, _, err = await cli(stack, "files", "check", "nope", "--cluster", c)
    assert code == 1
    assert err.startswith("lifeboat: 404")
