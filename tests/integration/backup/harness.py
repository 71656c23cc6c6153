"""The backup service as a process on NATS, for the tests that drive it by its requests:
its environment, its workers (stopped by PID), a watch on every event about one cluster,
and the check that every answer to a request carries the request's correlation id."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from lifeboat.common.bus import encode
from lifeboat.common.clusters import ClustersFile, ClusterSpec, dump_clusters
from lifeboat.common.events import ClusterEvent, Source
from lifeboat.devstack.launch import ServiceProcess, service_env
from lifeboat.devstack.postgres import PgCluster
from tests.endpoints import S3Endpoint

SRC = Source(service="test", instance="backup-test")

# Answers to each request type: every one must carry the request's correlation id.
ANSWERS = (
    "backup.started",
    "backup.progress",
    "backup.completed",
    "backup.failed",
    "backup.verified",
    "backup.deleted",
    "backup.delete_refused",
    "restore.started",
    "restore.completed",
    "restore.failed",
)


def backup_env(
    pg: PgCluster,
    nats_url: str,
    s3: S3Endpoint,
    workdir: Path,
    cluster: str,
    *,
    spec: ClusterSpec | None = None,
    **extra: str,
) -> dict[str, str]:
    """The services' environment for `pg` as cluster `cluster` (or as `spec`, e.g. with
    file sets), backup settings quick for tests, `extra` over them."""
    clusters = workdir / f"{cluster}.yaml"
    clusters.write_text(dump_clusters(ClustersFile(clusters=(spec or pg.spec(cluster),))))
    return service_env(
        nats_url=nats_url,
        clusters_file=clusters,
        pg_password=pg.passwords.superuser.get_secret_value(),
        extra={
            **s3.env(),
            "LIFEBOAT_REPLICATION_PASSWORD": pg.passwords.replication.get_secret_value(),
            "LIFEBOAT_WORK_DIR": str(workdir / f"work-{cluster}"),
            "LIFEBOAT_WAL_ARCHIVE": "false",
            "LIFEBOAT_SCHEDULE_PHYSICAL": "",
            "LIFEBOAT_FIRST_BACKUP_AT_START": "false",
            "LIFEBOAT_ACK_WAIT_SECONDS": "3",
            "LIFEBOAT_LEASE_TTL_SECONDS": "3",
            "LIFEBOAT_VERIFY_AFTER_BACKUP": "false",
            "LIFEBOAT_JANITOR_INTERVAL_SECONDS": "3600",
            "LIFEBOAT_PART_SIZE_MB": "5",
            **extra,
        },
    )


class Workers:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: dict[str, ServiceProcess] = {}

    def start(self, name: str, **extra: str) -> ServiceProcess:
        proc = ServiceProcess(
            "backup", self.env, instance=name, extra=extra, log_file=self.logs / f"{name}.log"
        )
        proc.start()
        self.procs[name] = proc
        proc.wait_ready(60)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.stop()


class Watch:
    """Every backup, restore and WAL event about one cluster, as it is published."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def on(self, msg: Msg) -> None:
        self.events.append(json.loads(msg.data))

    def of(self, type_: str, request: uuid.UUID | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e["type"] == type_ and (request is None or e.get("request_id") == str(request))
        ]

    def answering(self, correlation: uuid.UUID) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("correlation_id") == str(correlation)]

    async def wait(
        self,
        type_: str,
        request: uuid.UUID | None = None,
        timeout: float = 90,
        detail: Callable[[], str] | None = None,
        **match: object,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.of(type_, request):
                if all(e.get(k) == v for k, v in match.items()):
                    return e
            failed = [
                e
                for e in self.events
                if e["type"].endswith("failed") and e.get("request_id") == str(request)
            ]
            if failed and not type_.endswith("failed"):
                raise AssertionError(f"{type_} expected, got {failed[-1]}")
            await asyncio.sleep(0.1)
        more = "" if detail is None else "\n" + detail()[-6000:]
        raise AssertionError(
            f"no {type_} for {request} within {timeout}s: {self.events[-5:]}{more}"
        )

    def assert_correlated(
        self, request: uuid.UUID, correlation: uuid.UUID | None = None, *, least: int = 1
    ) -> list[dict[str, Any]]:
        """Every answer naming `request` carries `correlation` (the request's own id unless
        given) as its correlation id, and there are at least `least` of them."""
        expected = str(correlation or request)
        answers = [
            e for e in self.events if e["type"] in ANSWERS and e.get("request_id") == str(request)
        ]
        assert len(answers) >= least, f"{len(answers)} answer(s) to {request}: {answers}"
        wrong = [(e["type"], e.get("correlation_id")) for e in answers]
        assert all(e.get("correlation_id") == expected for e in answers), (expected, wrong)
        return answers


async def watching(
    nats_url: str, cluster: str, prefixes: Iterable[str]
) -> tuple[Watch, NatsClient]:
    client = await nats.connect(nats_url, connect_timeout=5)
    w = Watch()
    for prefix in prefixes:
        await client.subscribe(f"{prefix}.*.{cluster}", cb=w.on)
    return w, client


async def send(client: NatsClient, event: ClusterEvent) -> uuid.UUID:
    body, headers = encode(event)
    await client.jetstream().publish(event.subject(), body, headers=headers)
    return event.event_id
