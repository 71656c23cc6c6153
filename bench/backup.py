"""Backup benchmark: `uv run python bench/backup.py --start [--scale 10] [--scale 50] [--runs 3]`.

Starts its own NATS, S3 (SeaweedFS) and PostgreSQL (one node, pgbench data at each scale) on
free ports in a temporary directory, and the backup service as a process, as `make up` runs
it. Prints one JSON object. Every ratio has its baseline measured in the same run, on the same
server, medians of `--runs`:

- logical: backup.requested -> backup.completed (pg_dump custom format into zstd and S3) vs
  `pg_dump -Fc -f` to a local file;
- physical: the same for a base backup vs `pg_basebackup -Ft -X fetch -D` to a local directory;
- logical restore: S3 -> decode -> pg_restore's stdin, vs `pg_restore -d` from the local file,
  both one job into the same target, taking turns to go first, each after a checkpoint;
- physical restore: S3 -> decode -> tar, recover to consistency, open; vs extracting the local
  base.tar and recovering the same way, taking turns to go first, each after an `os.sync`;
- peak RSS of the backup service process: its own VmHWM (pg_dump and pg_basebackup are its
  children and not counted; the restores and the archiver run in this process, not counted
  either) after all of it, per scale, and right after it is ready;
- WAL archive lag under pgbench writes: p50/p99 of the age of the oldest WAL on the primary
  not yet acknowledged by S3 (sampled every 0.1 s; an upper bound within that) and of its
  bytes, and the p99 of each segment's upload latency (its last byte written to the spool ->
  the whole segment acknowledged by S3).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import nats
from psycopg import sql
from pydantic import SecretStr

from lifeboat.backup import (
    Archiver,
    Catalogue,
    Connections,
    Listed,
    Manifest,
    RestoreContext,
    RestorePlan,
    Transfer,
    free_port,
    restore_dumps,
    restore_physical,
)
from lifeboat.common.breakers import Breakers
from lifeboat.common.bus import encode, ensure_streams, heartbeat_stream_config, stream_config
from lifeboat.common.clusters import ClustersFile, dump_clusters
from lifeboat.common.events import BackupKind, BackupRequested, ClusterEvent, Source, WalArchived
from lifeboat.devstack.launch import ServiceProcess, service_env
from lifeboat.devstack.postgres import Passwords, PgCluster
from lifeboat.devstack.procs import free_port as free_tcp_port
from lifeboat.devstack.servers import NatsPorts, NatsServer, S3Credentials, S3Ports, SeaweedS3
from lifeboat.objstore.client import make_light_s3_client
from lifeboat.objstore.codec import Codec
from lifeboat.pg.recovery import LOCAL_TRUST, RecoveryTarget, configure_recovery
from lifeboat.pg.scratch import Instance
from lifeboat.pg.tools import run

BUCKET = "lifeboat-backups"
CLUSTER = "bench"
SRC = Source(service="bench", instance="bench")


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


class Bench:
    def __init__(self, workdir: Path, runs: int) -> None:
        self.workdir = workdir
        self.runs = runs
        self.nats = NatsServer(workdir / "nats", NatsPorts(free_tcp_port(), free_tcp_port()))
        creds = S3Credentials("bench", secrets.token_urlsafe(16))
        self.s3 = SeaweedS3(
            workdir / "s3", S3Ports(*(free_tcp_port(below=22000) for _ in range(4))), creds
        )
        passwords = Passwords(
            SecretStr(secrets.token_urlsafe(12)), SecretStr(secrets.token_urlsafe(12))
        )
        self.pg = PgCluster(workdir / "pg", [free_tcp_port()], passwords, durable=False)
        self.node = self.pg.primary

    def start(self) -> None:
        self.nats.start()
        self.s3.start(buckets=(BUCKET,))
        self.pg.up()

    def stop(self) -> None:
        self.pg.stop()
        self.s3.stop()
        self.nats.stop()

    @property
    def transfer(self) -> Transfer:
        # The client the service itself uses (restores and the archiver run in this process).
        return Transfer(make_light_s3_client(self.s3.settings(), bulk=True), BUCKET, Codec())

    def tool(self, name: str, *args: str, timeout: float = 3600) -> str:
        return run(
            [str(self.pg.bindir / name), *args],
            user=self.pg.os_user,
            timeout=timeout,
        )

    def socket_args(self) -> list[str]:
        return ["-h", str(self.node.socket_dir), "-p", str(self.node.port), "-U", "postgres"]

    def load(self, scale: int) -> int:
        self.tool("pgbench", "-i", "-q", "-s", str(scale), *self.socket_args(), "app")
        self.node.execute(sql.SQL("checkpoint"))
        rows = self.node.query(sql.SQL("select pg_database_size('app')"))
        return int(str(rows[0][0]))

    def service(self, name: str) -> ServiceProcess:
        clusters = self.workdir / "clusters.yaml"
        spec = self.pg.spec(CLUSTER)
        clusters.write_text(dump_clusters(ClustersFile(clusters=(spec,))))
        env = service_env(
            nats_url=self.nats.url,
            clusters_file=clusters,
            pg_password=self.pg.passwords.superuser.get_secret_value(),
            extra={
                "LIFEBOAT_S3_ENDPOINT_URL": self.s3.endpoint_url,
                "LIFEBOAT_S3_ACCESS_KEY_ID": self.s3.credentials.access_key_id,
                "LIFEBOAT_S3_SECRET_ACCESS_KEY": self.s3.credentials.secret_access_key,
                "LIFEBOAT_REPLICATION_PASSWORD": self.pg.passwords.replication.get_secret_value(),
                "LIFEBOAT_WORK_DIR": str(self.workdir / "work"),
                "LIFEBOAT_WAL_ARCHIVE": "false",
                "LIFEBOAT_SCHEDULE_PHYSICAL": "",
                "LIFEBOAT_FIRST_BACKUP_AT_START": "false",
                "LIFEBOAT_SCHEDULE_VERIFY": "",
                "LIFEBOAT_VERIFY_AFTER_BACKUP": "false",
                "LIFEBOAT_JANITOR_INTERVAL_SECONDS": "36000",
                "LIFEBOAT_LOG_LEVEL": "WARNING",
            },
        )
        proc = ServiceProcess("backup", env, instance=name, log_file=self.workdir / f"{name}.log")
        proc.start()
        proc.wait_ready(60)
        return proc

    async def request(self, kind: BackupKind) -> tuple[float, str]:
        """backup.requested -> backup.completed through the service; (seconds, backup id)."""
        client = await nats.connect(self.nats.url)
        try:
            await ensure_streams(
                client.jetstream(),
                stream_config(
                    max_age_seconds=3600, max_bytes=64 * 1024**2, duplicate_window_seconds=120
                ),
                heartbeat_stream_config(max_age_seconds=600, max_bytes=64 * 1024**2),
            )
            done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            event = BackupRequested(cluster=CLUSTER, source=SRC, kind=kind, verify=False)

            async def on(msg: Any) -> None:
                body = json.loads(msg.data)
                mine = body.get("request_id") == str(event.event_id) and not done.done()
                if mine and body["type"] in ("backup.completed", "backup.failed"):
                    done.set_result(body)

            await client.subscribe(f"backup.*.{CLUSTER}", cb=on)
            body, headers = encode(event)
            started = time.monotonic()
            await client.jetstream().publish(event.subject(), body, headers=headers)
            result = await asyncio.wait_for(done, 3600)
            seconds = time.monotonic() - started
        finally:
            await client.close()
        if result["type"] != "backup.completed":
            raise SystemExit(f"backup failed: {result['reason']}")
        return seconds, str(result["backup_id"])

    def scratch(self, name: str) -> Instance:
        return Instance(self.workdir / name, free_port(), self.pg.os_user, self.pg.bindir)

    def local_physical_restore(self, basedir: Path) -> float:
        instance = self.scratch(f"local-{uuid.uuid4().hex[:6]}")
        started = time.monotonic()
        instance.prepare()
        self.pg.os_user.own(basedir)
        run(["tar", "-x", "-f", str(basedir / "base.tar"), "-C", str(instance.data_dir)],
            user=self.pg.os_user, timeout=3600)  # fmt: skip
        configure_recovery(
            instance.data_dir,
            port=instance.port,
            socket_dir=instance.socket_dir,
            restore_command="false",
            target=RecoveryTarget(),  # the backup's own WAL
        )
        hba = instance.data_dir / "pg_hba.conf"
        hba.write_text(LOCAL_TRUST + "\n" + hba.read_text())
        instance.user.own(instance.home)
        instance.start()
        instance.wait_promoted()
        seconds = time.monotonic() - started
        instance.remove()
        return seconds

    def time_tool(self, name: str, *args: str) -> float:
        started = time.monotonic()
        run([str(self.pg.bindir / name), *args], user=self.pg.os_user, timeout=3600)
        return time.monotonic() - started

    async def logical_restore(
        self, side: str, target: Instance, ctx: RestoreContext, manifest: Manifest, dump: Path
    ) -> float:
        """`pg_restore -d` from the local `pg_dump -Fc` file, or Lifeboat's restore of the
        logical backup (S3 -> decode -> pg_restore's stdin); seconds."""
        at = ["-h", str(target.socket_dir), "-p", str(target.port), "-U", "postgres"]
        self.time_tool("dropdb", "--if-exists", *at, "app")
        self.time_tool("psql", "-X", "-q", *at, "-d", "postgres", "-c", "checkpoint")
        await asyncio.to_thread(os.sync)
        if side == "pg_restore":
            self.time_tool("createdb", *at, "app")
            return self.time_tool(
                "pg_restore", "--no-owner", "--no-privileges", "-d", target.conninfo("app"),
                str(dump),
            )  # fmt: skip
        started = time.monotonic()
        await restore_dumps(ctx, manifest, target)  # creates the database itself
        return time.monotonic() - started

    async def run_once(
        self, local: Path, target: Instance, ctx: RestoreContext, catalogue: Catalogue, turn: int
    ) -> dict[str, float]:
        out: dict[str, float] = {}
        shutil.rmtree(local, ignore_errors=True)
        local.mkdir()
        self.pg.os_user.own(local)
        dump, base = local / "app.dump", local / "base"
        out["pg_dump"] = self.time_tool(
            "pg_dump", "-Fc", "-f", str(dump), *self.socket_args(), "app"
        )
        out["logical"], logical_id = await self.request(BackupKind.LOGICAL)
        out["pg_basebackup"] = self.time_tool(
            "pg_basebackup", "-Ft", "-X", "fetch", "-c", "fast", "-D", str(base),
            *self.socket_args(),
        )  # fmt: skip
        out["physical"], physical_id = await self.request(BackupKind.PHYSICAL)
        manifest = await catalogue.manifest(logical_id)
        # Both logical restores are one pg_restore job into the same running target; they
        # take turns going first, and each starts on a clean target (no database, the other's
        # dirty pages and WAL checkpointed), so neither pays for the other's writes.
        for side in ("pg_restore", "logical_restore")[:: 1 if turn % 2 == 0 else -1]:
            out[side] = await self.logical_restore(side, target, ctx, manifest, dump)
        pm = await catalogue.manifest(physical_id)
        # The physical restores take turns too, each after the writes before it reached the
        # disk (os.sync), so neither waits behind the other's (or a logical restore's) I/O.
        for side in ("local_physical_restore", "physical_restore")[:: 1 if turn % 2 else -1]:
            await asyncio.to_thread(os.sync)
            if side == "local_physical_restore":
                out[side] = self.local_physical_restore(base)
                continue
            instance = self.scratch(f"s3-{uuid.uuid4().hex[:6]}")
            plan = RestorePlan(Listed(pm, None).entry(), ())
            out[side] = (await restore_physical(ctx, pm, plan, instance)).seconds
            instance.remove()
        return out

    async def measure_scale(self, scale: int) -> dict[str, Any]:
        size = self.load(scale)
        proc = self.service(f"bench-{scale}")
        idle_rss = vm_hwm_mb(proc.pid or 0)
        ctx = RestoreContext(self.transfer, self.pg.bindir, self.pg.os_user)
        catalogue = Catalogue(ctx.transfer.client, BUCKET, CLUSTER)
        local = self.workdir / "local"
        times: dict[str, list[float]] = {k: [] for k in (
            "pg_dump", "logical", "pg_basebackup", "physical", "pg_restore",
            "logical_restore", "local_physical_restore", "physical_restore",
        )}  # fmt: skip
        target = self.scratch(f"restore-target-{scale}")
        target.initdb()
        target.start()
        try:
            for turn in range(self.runs):
                once = await self.run_once(local, target, ctx, catalogue, turn)
                for key, seconds in once.items():
                    times[key].append(seconds)
            rss = vm_hwm_mb(proc.pid or 0)
            load = Path("/proc/loadavg").read_text().split()[:3]
        finally:
            target.remove()
            proc.stop()
        med = {k: median(v) for k, v in times.items()}
        mb = size / 1e6
        return {
            "db_mb": round(mb, 1),
            "median_s": med,
            "runs_s": {k: [round(x, 2) for x in v] for k, v in times.items()},  # the spread
            "logical": {
                "ratio_vs_pg_dump": round(med["logical"] / med["pg_dump"], 3),
                "mb_per_s": round(mb / med["logical"], 1),
            },
            "physical": {
                "ratio_vs_pg_basebackup": round(med["physical"] / med["pg_basebackup"], 3),
                "mb_per_s": round(mb / med["physical"], 1),
            },
            "restore": {
                "logical_ratio_vs_pg_restore": round(med["logical_restore"] / med["pg_restore"], 3),
                "physical_ratio_vs_local": round(
                    med["physical_restore"] / med["local_physical_restore"], 3
                ),
            },
            "peak_rss_mb": rss,
            "idle_rss_mb": idle_rss,  # the service before its first backup
            "loadavg": " ".join(load),  # 1, 5, 15 min, at the end of this scale's runs
        }

    async def measure_wal(self, seconds: int) -> dict[str, Any]:
        uploads: list[float] = []

        async def publish(event: ClusterEvent) -> None:
            if isinstance(event, WalArchived) and event.seconds is not None:
                uploads.append(event.seconds)

        spec = self.pg.spec(CLUSTER)
        archiver = Archiver(
            cluster=CLUSTER,
            conns=Connections(spec, self.pg.passwords.superuser, self.pg.passwords.replication),
            transfer=self.transfer,
            spool=self.workdir / "spool",
            bindir=self.pg.bindir,
            slot="bench_archiver",
            publish=publish,
            source=SRC,
            breakers=Breakers(),
            status_interval=0.1,
        )
        task = asyncio.create_task(archiver.run())
        await asyncio.sleep(3)
        u = self.pg.os_user
        load = await asyncio.create_subprocess_exec(
            str(self.pg.bindir / "pgbench"), "-n", "-N", "-c", "2", "-j", "1", "-T",
            str(seconds), *self.socket_args(), "app",
            user=u.switch_uid, group=u.switch_gid, extra_groups=u.switch_groups,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        lag_s: list[float] = []
        lag_b: list[int] = []
        await asyncio.sleep(1)
        while load.returncode is None:
            await asyncio.sleep(0.1)
            b, s = archiver.lag()
            if b is not None and s is not None:
                lag_b.append(b)
                lag_s.append(s)
        wal_mb = self.node.query(sql.SQL("select pg_current_wal_lsn() - '0/0'::pg_lsn"))[0][0]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

        def pct(values: list[float], p: float) -> float | None:
            if not values:
                return None
            return (
                round(statistics.quantiles(values, n=100)[int(p) - 1], 3)
                if len(values) > 1
                else round(values[0], 3)
            )

        return {
            "archive_lag_p50_s": pct(lag_s, 50),
            "archive_lag_p99_s": pct(lag_s, 99),
            "archive_lag_p99_bytes": pct([float(b) for b in lag_b], 99),
            "segment_upload_p99_s": pct(uploads, 99),
            "segments_archived": len(uploads),
            "load_seconds": seconds,
            "wal_position_mb": round(int(str(wal_mb)) / 1e6, 1),
        }


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="lifeboat-bench-"))
    workdir.chmod(0o755)
    bench = Bench(workdir, args.runs)
    try:
        bench.start()
        out: dict[str, Any] = {"runs": args.runs, "scales": {}}
        for scale in args.scale:
            out["scales"][str(scale)] = await bench.measure_scale(scale)
        headline = out["scales"][str(args.scale[-1])]
        for key in ("logical", "physical", "restore"):
            out[key] = headline[key]
        out["peak_rss_mb"] = {
            f"scale_{s}": out["scales"][str(s)]["peak_rss_mb"] for s in args.scale
        }
        out["wal"] = await bench.measure_wal(args.wal_seconds)
        return out
    finally:
        bench.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--start", action="store_true", help="start NATS, S3 and PostgreSQL")
    parser.add_argument("--scale", type=int, action="append", help="pgbench scale (repeatable)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--wal-seconds", type=int, default=20)
    args = parser.parse_args()
    if not args.start:
        raise SystemExit("bench/backup.py measures on servers of its own: pass --start")
    args.scale = args.scale or [10]
    print(json.dumps(asyncio.run(amain(args))))


if __name__ == "__main__":
    main()
