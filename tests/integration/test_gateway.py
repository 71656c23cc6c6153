"""The gateway as a real process on real NATS: tokens and roles, problems, operations you can
follow (a stand-in answers as the failover service does, over NATS), the projection following
KV and the streams, SSE live and resumed, maintenance in KV, webhooks delivered to a local
receiver, metrics, and the `lifeboat` CLI against it."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import yaml
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from prometheus_client.parser import text_string_to_metric_families

from lifeboat.common import subjects
from lifeboat.common.clusters import ClusterSpec, NodeSpec
from lifeboat.common.events import (
    Envelope,
    FailoverFailed,
    FailoverKind,
    FailoverRequested,
    FailoverStarted,
    LagLevel,
    MaintenanceState,
    NodeHealth,
    NodeLag,
    Role,
    Source,
    SwitchoverCompleted,
    SwitchoverFailed,
    SwitchoverRequested,
)
from lifeboat.common.kv import TOPOLOGY_BUCKET, open_bucket
from lifeboat.common.state import Topology
from lifeboat.devstack.launch import ServiceProcess, launch, service_env
from lifeboat.devstack.procs import eventually, free_port
from lifeboat.devstack.throwaway import local_ha, write_clusters
from lifeboat.gateway.auth import hash_token
from tests.sse import read_sse

FAILOVER = Source(service="failover", instance="stand-in")
MONITOR = Source(service="monitor", instance="monitor-it")
READ, OPERATE = "read-token-it", "operate-token-it"
ROOT = Path(__file__).resolve().parents[2]


class Receiver:
    """A local webhook receiver: every POST body, in order; answers 500 `fail_first` times."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length))
                if receiver.fail_first > 0:
                    receiver.fail_first -= 1
                    self.send_response(500)
                else:
                    receiver.bodies.append(body)
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Gw:
    def __init__(self, proc: ServiceProcess, cluster: str, json_hook: Receiver, slack: Receiver):
        self.proc = proc
        self.url = proc.url
        self.cluster = cluster
        self.json_hook = json_hook
        self.slack = slack

    def http(self, token: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def gw(nats_url: str, workdir: Path) -> Iterator[Gw]:
    cluster = f"gw{time.monotonic_ns() % 10**8}"
    spec = ClusterSpec(
        name=cluster,
        database="app",
        nodes=tuple(
            NodeSpec(name=f"node{i}", host="127.0.0.1", port=free_port(), location=f"dc{i}")
            for i in (1, 2, 3)
        ),
    )
    base = workdir / cluster
    base.mkdir()
    tokens = base / "tokens"
    tokens.write_text(
        f"viewer:read:{hash_token(READ)}\noncall:operate:{hash_token(OPERATE, scheme='scrypt')}\n"
    )
    json_hook, slack = Receiver(fail_first=2), Receiver()
    hooks = [
        {"url": json_hook.url, "events": ["node.lag"], "cooldown_seconds": 30},
        {"url": slack.url, "format": "slack", "events": ["node.lag"], "min_lag_level": "critical"},
    ]
    env = service_env(
        nats_url=nats_url,
        clusters_file=write_clusters(base / "clusters.yaml", spec),
        pg_password="unused",
        extra={
            "LIFEBOAT_TOKENS_FILE": str(tokens),
            "LIFEBOAT_ADMIN_TOKEN_FILE": str(base / "secrets" / "lifeboat_token"),
            "LIFEBOAT_WEBHOOKS": json.dumps(hooks),
            "LIFEBOAT_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        },
    )
    proc = launch("gateway", env, instance=f"{cluster}-gw", log_file=base / "gateway.log")
    try:
        proc.wait_ready(30)
        yield Gw(proc, cluster, json_hook, slack)
    finally:
        proc.stop()
        json_hook.close()
        slack.close()
        log = proc.output()
        for secret in (READ, OPERATE, (base / "secrets" / "lifeboat_token").read_text()):
            assert secret not in log, "a token reached the log"


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[NatsClient]:
    nc = await nats.connect(nats_url)
    try:
        yield nc
    finally:
        await nc.close()


async def publish(nc: NatsClient, event: Envelope) -> int:
    ack = await nc.jetstream().publish(event.subject(), event.model_dump_json().encode())
    return int(ack.seq)


@asynccontextmanager
async def stand_in(
    nc: NatsClient, cluster: str, answer: Callable[[SwitchoverRequested], list[Envelope]]
) -> AsyncIterator[list[SwitchoverRequested]]:
    """Answers switchover requests as the failover service would (from `answer`)."""
    seen: list[SwitchoverRequested] = []

    async def on_request(msg: Msg) -> None:
        request = SwitchoverRequested.model_validate_json(msg.data)
        seen.append(request)
        for event in answer(request):
            await publish(nc, event)

    sub = await nc.subscribe(subjects.SWITCHOVER_REQUESTED.subject(cluster=cluster), cb=on_request)
    try:
        yield seen
    finally:
        await sub.unsubscribe()


def completes(request: SwitchoverRequested, *, correlate: bool = True) -> list[Envelope]:
    common: dict[str, Any] = {
        "cluster": request.cluster,
        "source": FAILOVER,
        "kind": FailoverKind.SWITCHOVER,
        "correlation_id": request.correlation_id if correlate else None,
    }
    return [
        FailoverStarted(**common, old_primary="node1", candidate="node2", reason=request.reason),
        SwitchoverCompleted(
            **common,
            old_primary="node1",
            new_primary=request.target or "node2",
            reason=request.reason,
            total_seconds=0.8,
        ),
    ]


def refuses(request: SwitchoverRequested) -> list[Envelope]:
    return [
        SwitchoverFailed(
            cluster=request.cluster,
            source=FAILOVER,
            kind=FailoverKind.SWITCHOVER,
            target=request.target,
            reason=f"{request.target} is already the primary",
            correlation_id=request.correlation_id,
        )
    ]


MUTATIONS = (
    ("POST", "failover"),
    ("POST", "switchover"),
    ("POST", "pause"),
    ("POST", "resume"),
    ("POST", "nodes/node1/rejoin"),
    ("POST", "backups"),
    ("DELETE", "backups/b1"),
    ("POST", "backups/b1/verify"),
    ("POST", "restores"),
    ("POST", "files/uploads/sync"),
    ("POST", "files/uploads/check"),
    ("POST", "files/uploads/restore"),
)


async def test_every_mutating_endpoint_refuses_without_a_token_and_with_a_read_token(
    gw: Gw,
) -> None:
    async with gw.http() as anyone, gw.http(READ) as reader:
        for method, path in MUTATIONS:
            url = f"/clusters/{gw.cluster}/{path}"
            body = None if method == "DELETE" else {"reason": "x"}
            nobody = await anyone.request(method, url, json=body)
            assert nobody.status_code == 401, (path, nobody.text)
            assert nobody.headers["content-type"] == "application/problem+json"
            weak = await reader.request(method, url, json=body)
            assert weak.status_code == 403, (path, weak.text)
            assert "viewer has role read" in weak.json()["detail"]
        # And every one the OpenAPI document lists, so a new command cannot be left open.
        spec = (await anyone.get("/openapi.json")).json()
        names = {"{cluster}/": "", "{node}": "node1", "{backup_id}": "b1", "{fileset}": "uploads"}
        documented = set()
        for path, item in spec["paths"].items():
            for method in item.keys() - {"get"}:
                concrete = path.removeprefix("/clusters/")
                for name, value in names.items():
                    concrete = concrete.replace(name, value)
                documented.add((method.upper(), concrete))
        assert documented == set(MUTATIONS)
        assert (await anyone.get("/health/live")).status_code == 200
        assert (await anyone.get(f"/clusters/{gw.cluster}")).status_code == 200  # loopback
        whoami = await reader.get("/auth/whoami")
        assert whoami.json() == {"name": "viewer", "role": "read", "authenticated": True}
        missing = await reader.get("/clusters/nope")
        assert missing.status_code == 404
        assert missing.json()["title"] == "Not Found"


async def test_a_switchover_is_202_and_its_operation_reaches_completed(
    gw: Gw, bus: NatsClient
) -> None:
    async with stand_in(bus, gw.cluster, completes) as seen, gw.http(OPERATE) as api:
        resp = await api.post(
            f"/clusters/{gw.cluster}/switchover",
            json={"target": "node2", "reason": "patching", "requested_by": "spoofed"},
        )
        assert resp.status_code == 202, resp.text
        op = resp.json()
        assert resp.headers["location"] == f"/operations/{op['id']}"
        done = (await api.get(resp.headers["location"], params={"wait": 10})).json()
        assert done["state"] == "completed", done
        assert done["outcome"]["new_primary"] == "node2"
        assert done["requested_by"] == "oncall"
        assert seen[0].requested_by == "oncall"  # the token's name, not the body's
        assert str(seen[0].correlation_id) == op["id"]

        history = (await api.get(f"/clusters/{gw.cluster}/history")).json()
        kinds = [e["event"]["type"] for e in history["events"]]
        assert kinds[-3:] == ["switchover.requested", "failover.started", "switchover.completed"]
        seqs = [e["seq"] for e in history["events"]]
        assert seqs == sorted(seqs)


async def test_an_answer_without_a_correlation_id_still_finds_its_operation(
    gw: Gw, bus: NatsClient
) -> None:
    def uncorrelated(request: SwitchoverRequested) -> list[Envelope]:
        return completes(request, correlate=False)

    async with stand_in(bus, gw.cluster, uncorrelated), gw.http(OPERATE) as api:
        resp = await api.post(f"/clusters/{gw.cluster}/switchover", json={"reason": "old"})
        assert resp.status_code == 202
        done = (await api.get(resp.headers["location"], params={"wait": 10})).json()
        assert done["state"] == "completed"


async def test_a_refused_switchover_is_409_with_the_reason(gw: Gw, bus: NatsClient) -> None:
    async with stand_in(bus, gw.cluster, refuses), gw.http(OPERATE) as api:
        resp = await api.post(
            f"/clusters/{gw.cluster}/switchover",
            json={"target": "node1", "reason": "x", "wait_seconds": 10},
        )
        assert resp.status_code == 409, resp.text
        assert resp.json()["reason"] == "node1 is already the primary"
        assert resp.json()["operation"]["state"] == "refused"


async def test_the_projection_follows_kv_within_200ms(gw: Gw, bus: NatsClient) -> None:
    kv = await open_bucket(bus.jetstream(), TOPOLOGY_BUCKET, history=16)
    async with gw.http(READ) as api:
        for epoch, primary in enumerate(("node1", "node3", "node2"), 1):
            topo = Topology(cluster=gw.cluster, primary=primary, epoch=epoch)
            await kv.put(gw.cluster, topo.model_dump_json().encode())
            written = time.monotonic()
            while True:
                status = (await api.get(f"/clusters/{gw.cluster}")).json()
                if status["topology"] and status["topology"]["primary"] == primary:
                    break
                assert time.monotonic() - written < 0.2, "the projection lags KV"
                await asyncio.sleep(0.005)


def health(cluster: str, node: str, **fields: Any) -> NodeHealth:
    return NodeHealth(
        cluster=cluster, node=node, source=MONITOR, reachable=True, role=Role.STANDBY, **fields
    )


async def test_sse_delivers_live_events_and_resumes_with_last_event_id(
    gw: Gw, bus: NatsClient
) -> None:
    params = {"subject": f"node.health.{gw.cluster}.>"}
    async with gw.http(READ) as api:
        reader = asyncio.create_task(read_sse(api, params, 3, {}))
        await asyncio.sleep(0.5)
        sent = [await publish(bus, health(gw.cluster, "node2", lag_bytes=i)) for i in range(5)]
        first = await asyncio.wait_for(reader, 10)
        assert [s for s, _ in first] == sent[:3]
        assert [e["lag_bytes"] for _, e in first] == [0, 1, 2]
        rest = await asyncio.wait_for(
            read_sse(api, params, 2, {"Last-Event-ID": str(first[-1][0])}), 10
        )
        assert [s for s, _ in rest] == sent[3:]
        since = await asyncio.wait_for(read_sse(api, {**params, "since": str(sent[0])}, 4, {}), 10)
        assert [s for s, _ in since] == sent[1:]


async def test_pause_is_in_kv_evented_and_shown(gw: Gw, bus: NatsClient) -> None:
    js = bus.jetstream()
    async with gw.http(OPERATE) as api:
        paused = await api.post(f"/clusters/{gw.cluster}/pause", json={"reason": "kernel"})
        assert paused.status_code == 200, paused.text
        kv = await open_bucket(js, subjects.MAINTENANCE_BUCKET)
        state = MaintenanceState.model_validate_json((await kv.get(gw.cluster)).value or b"")
        assert (state.paused, state.requested_by, state.reason) == (True, "oncall", "kernel")
        status = (await api.get(f"/clusters/{gw.cluster}")).json()
        assert status["paused"] is True
        metrics = (await api.get("/metrics")).text
        assert f'lifeboat_cluster_paused{{cluster="{gw.cluster}"}} 1.0' in metrics
        assert (await api.post(f"/clusters/{gw.cluster}/resume")).status_code == 200
        state = MaintenanceState.model_validate_json((await kv.get(gw.cluster)).value or b"")
        assert state.paused is False

        async def evented() -> bool:
            page = (await api.get(f"/clusters/{gw.cluster}/history")).json()
            kinds = [e["event"]["type"] for e in page["events"]]
            return kinds[-2:] == ["maintenance.paused", "maintenance.resumed"]

        await eventually(evented, timeout=5, what="maintenance in the history")


async def test_a_webhook_receives_a_lag_alert_once_per_cooldown(gw: Gw, bus: NatsClient) -> None:
    def lag(level: LagLevel, seconds: float) -> NodeLag:
        return NodeLag(
            cluster=gw.cluster, node="node3", source=MONITOR, level=level, lag_seconds=seconds
        )

    for event in (
        lag(LagLevel.WARNING, 31),
        lag(LagLevel.WARNING, 40),
        lag(LagLevel.CRITICAL, 130),
    ):
        await publish(bus, event)

    async def delivered() -> bool:
        mine = [b for b in gw.json_hook.bodies if b["event"]["cluster"] == gw.cluster]
        return len(mine) == 2 and len(gw.slack.bodies) == 1

    # The JSON receiver failed twice first: delivery retried with backoff.
    await eventually(delivered, timeout=15, what="the alerts")
    await asyncio.sleep(1)
    bodies = [b for b in gw.json_hook.bodies if b["event"]["cluster"] == gw.cluster]
    assert [b["event"]["level"] for b in bodies] == ["warning", "critical"]  # 40 s: cooldown
    assert bodies[0]["alert"] == f"{gw.cluster}/node3: replication lag warning (31s)"
    assert gw.slack.bodies[0]["text"].endswith(
        f"{gw.cluster}/node3: replication lag critical (130s)"
    )


def cli(gw: Gw, *args: str, token: str = OPERATE) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lifeboat.gateway.cli",
        "--gateway",
        gw.url,
        "--token",
        token,
        *args,
    ]


async def run(argv: list[str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_cli_against_the_running_gateway(gw: Gw, bus: NatsClient) -> None:
    kv = await open_bucket(bus.jetstream(), TOPOLOGY_BUCKET, history=16)
    topo = Topology(cluster=gw.cluster, primary="node1", epoch=9, synchronous=("node2",))
    await kv.put(gw.cluster, topo.model_dump_json().encode())
    await publish(
        bus,
        NodeHealth(
            cluster=gw.cluster,
            node="node1",
            source=MONITOR,
            reachable=True,
            role=Role.PRIMARY,
            writable=True,
            timeline=3,
        ),
    )
    await asyncio.sleep(0.3)
    code, out, err = await run(cli(gw, "status", gw.cluster))
    assert code == 0, err
    for node in ("node1", "node2", "node3"):
        assert node in out
    assert "Leader" in out
    assert "epoch 9" in out
    code, out, _ = await run(cli(gw, "status", gw.cluster, "--json"))
    assert code == 0
    assert [n["name"] for n in json.loads(out)["nodes"]] == ["node1", "node2", "node3"]

    async with stand_in(bus, gw.cluster, refuses):
        code, out, err = await run(
            cli(gw, "switchover", "--cluster", gw.cluster, "--target", "node1", "--reason", "x")
        )
    assert code == 1
    assert err.strip() == "lifeboat: refused: node1 is already the primary"
    async with stand_in(bus, gw.cluster, completes):
        code, out, err = await run(
            cli(gw, "switchover", "--cluster", gw.cluster, "--target", "node3", "--reason", "y")
        )
    assert code == 0, err
    assert out.startswith("switchover completed: node3")
    code, _, err = await run(cli(gw, "pause", "--cluster", gw.cluster, token=READ))
    assert code == 1
    assert "403 Forbidden: viewer has role read" in err
    code, out, _ = await run(cli(gw, "history", "--cluster", gw.cluster, "--json"))
    assert code == 0
    assert json.loads(out)["events"]
    for command in ("exposure", "sla"):
        code, out, err = await run(cli(gw, command, "--cluster", gw.cluster, "--json"))
        assert code == 0, err
        assert json.loads(out)["cluster"] == gw.cluster
    code, out, _ = await run(
        cli(
            gw,
            "events",
            "tail",
            "--subject",
            f"switchover.*.{gw.cluster}",
            "--since",
            "0",
            "--count",
            "1",
            "--json",
        )
    )
    assert code == 0
    assert json.loads(out.splitlines()[0])["type"].startswith("switchover.")


async def test_a_forced_failover_from_the_cli_carries_force_and_the_budget(
    gw: Gw, bus: NatsClient
) -> None:
    seen: list[FailoverRequested] = []

    async def on_request(msg: Msg) -> None:
        request = FailoverRequested.model_validate_json(msg.data)
        seen.append(request)
        refusal = FailoverFailed(
            cluster=request.cluster,
            source=FAILOVER,
            kind=FailoverKind.MANUAL,
            reason="no standby within the budget",
            correlation_id=request.correlation_id,
        )
        await publish(bus, refusal)

    sub = await bus.subscribe(
        subjects.FAILOVER_REQUESTED.subject(cluster=gw.cluster), cb=on_request
    )
    try:
        code, _, err = await run(
            cli(
                gw,
                "failover",
                "--cluster",
                gw.cluster,
                "--reason",
                "dc lost",
                "--force",
                "--data-loss-budget-bytes",
                "1048576",
            )
        )
    finally:
        await sub.unsubscribe()
    assert code == 1
    assert err.strip() == "lifeboat: refused: no standby within the budget"
    assert [(r.force, r.data_loss_budget_bytes, r.requested_by) for r in seen] == [
        (True, 1048576, "oncall")
    ]


async def test_health_lists_instances_and_breakers(gw: Gw, bus: NatsClient) -> None:
    await publish(bus, health(gw.cluster, "node1"))
    async with gw.http() as api:
        instances = {i["instance"]: i for i in (await api.get("/health/instances")).json()}
        assert "monitor-it" in instances
        assert instances["monitor-it"]["heartbeat"] is False  # seen by its events only
        own = instances[f"{gw.cluster}-gw"]  # the gateway's own service.heartbeat
        assert (own["service"], own["heartbeat"], own["ready"]) == ("gateway", True, True)
        assert own["version"] == "0.1.0"
        assert own["breakers"]["nats"] == "closed"
        report = (await api.get("/health")).json()
        seen = next(c for c in report["components"] if c["name"] == "instances")
        assert "monitor-it" in seen["details"]["monitor"]
        breakers = (await api.get("/health/circuit-breakers")).json()
        assert breakers["services"] == []
        assert f"{gw.cluster}-gw" in {i["instance"] for i in breakers["instances"]}
        assert {b["name"] for b in breakers["breakers"]} >= {"nats"}
        metrics = await api.get("/metrics")
        assert 'lifeboat_breaker_state{breaker="nats",service="gateway"} 0.0' in metrics.text


async def test_every_alert_rule_names_what_the_running_gateway_exposes(
    gw: Gw, bus: NatsClient
) -> None:
    """deploy/prometheus/alerts.yml parsed (promtool is not available), and each metric its
    expressions name is among the families a real gateway's /metrics serves, its samples'
    names included (a counter's `_total`, a histogram's `_bucket`)."""
    await publish(bus, health(gw.cluster, "node2", lag_bytes=10, lag_seconds=1.0))
    async with gw.http(READ) as api:
        resp = await api.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    exposed: set[str] = set()
    for family in text_string_to_metric_families(resp.text):
        exposed.add(family.name)
        exposed.update(sample.name for sample in family.samples)
    doc = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    assert len({r["alert"] for r in rules}) == len(rules) > 6
    for rule in rules:
        names = set(re.findall(r"\blifeboat_[a-z_]+", str(rule["expr"])))
        assert names, rule
        for name in names:
            assert name in exposed, f"{rule['alert']}: {name} is not on /metrics"


async def test_two_workers_each_know_every_operation(
    gw: Gw, bus: NatsClient, nats_url: str, workdir: Path
) -> None:
    base = workdir / f"{gw.cluster}-workers"
    base.mkdir()
    env = dict(gw.proc.env or {})
    env.update(
        {
            "LIFEBOAT_WORKERS": "2",
            "LIFEBOAT_ADMIN_TOKEN_FILE": str(base / "token"),
            "LIFEBOAT_WEBHOOKS": "[]",
        }
    )
    proc = launch("gateway", env, name="gateway-2w", log_file=base / "gateway.log")
    try:
        proc.wait_ready(60)
        token = (base / "token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            stand_in(bus, gw.cluster, completes),
            httpx.AsyncClient(base_url=proc.url, headers=headers, timeout=30) as api,
        ):
            for _ in range(3):
                resp = await api.post(f"/clusters/{gw.cluster}/switchover", json={"reason": "w"})
                assert resp.status_code == 202, resp.text
                # New connections: the answers come from either worker.
                for _ in range(4):
                    async with httpx.AsyncClient(base_url=proc.url, headers=headers) as fresh:
                        got = await fresh.get(resp.headers["location"], params={"wait": 10})
                    assert got.status_code == 200, got.text
                    assert got.json()["state"] == "completed"
    finally:
        proc.stop()
    assert "Traceback" not in proc.output(), proc.output()[-3000:]


async def test_a_switchover_through_the_api_changes_the_primary_on_a_real_cluster(
    nats_url: str, workdir: Path, unique: str
) -> None:
    """Monitor, failover service and gateway on a real replicated cluster: the operation a
    switchover answers with reaches `completed`, and the API shows the new primary."""
    with local_ha(workdir / unique, nats_url, name=unique) as ha:
        token_file = ha.dir / "secrets" / "lifeboat_token"
        ha.start("monitor", f"{unique}-m1")
        ha.start("failover", f"{unique}-f1")
        gateway = ha.start("gateway", f"{unique}-g1", LIFEBOAT_ADMIN_TOKEN_FILE=str(token_file))
        gateway.wait_ready(30)
        token = token_file.read_text().strip()
        async with httpx.AsyncClient(
            base_url=gateway.url, headers={"Authorization": f"Bearer {token}"}, timeout=90
        ) as api:

            async def synchronous() -> bool:
                status = (await api.get(f"/clusters/{unique}")).json()
                topo = status["topology"]
                healthy = all(n["health"] for n in status["nodes"])
                return bool(topo and topo["primary"] == "node1" and topo["synchronous"] and healthy)

            await eventually(synchronous, timeout=60, what="the cluster to be synchronous")
            resp = await api.post(
                f"/clusters/{unique}/switchover", json={"target": "node2", "reason": "e2e"}
            )
            assert resp.status_code == 202, resp.text
            done = (await api.get(resp.headers["location"], params={"wait": 60})).json()
            assert done["state"] == "completed", (done, ha.tail())
            assert done["outcome"]["new_primary"] == "node2"
            assert done["requested_by"] == "local-admin"

            async def moved() -> bool:
                r = await api.get(f"/clusters/{unique}/nodes/node2/primary")
                return r.status_code == 200

            await eventually(moved, timeout=30, what="node2 to answer as the primary")
            status = (await api.get(f"/clusters/{unique}")).json()
            assert status["topology"]["primary"] == "node2"
            assert status["last_failover"]["type"] == "switchover.completed"
            sla = (await api.get(f"/clusters/{unique}/sla", params={"days": 1})).json()
            assert [f["new_primary"] for f in sla["failovers"]] == ["node2"]


async def test_no_request_makes_the_gateway_fail(gw: Gw) -> None:
    """Every operation in the OpenAPI document, with good and bad path values, queries and
    bodies: never a 5xx it does not declare (the health 503s), always JSON, a problem when
    refused."""
    async with gw.http(OPERATE) as api:
        spec = (await api.get("/openapi.json")).json()
        values = [
            gw.cluster,
            "nope",
            "node1",
            "x" * 80,
            "%2e%2e",
            "6f1c2a4e-8a43-4a53-9d7e-2c1e1d3b9f10",
        ]
        queries: list[dict[str, str]] = [
            {},
            {"limit": "-1", "wait": "abc", "days": "0", "since": "garbage"},
            {"limit": "2", "wait": "0", "days": "1", "before": "1", "kind": "node.down"},
        ]
        bodies: list[Any] = [None, b"{", {}, {"reason": "x", "wait_seconds": 0}, {"reason": ""}]
        checked = 0
        for path, methods in spec["paths"].items():
            if path in ("/events", "/metrics"):
                continue  # a stream and a text format: tested on their own
            for method in methods:
                for value in values:
                    url = path
                    for name in ("cluster", "node", "operation_id"):
                        url = url.replace(f"{{{name}}}", value)
                    for query in queries:
                        for body in bodies if method == "post" else [None]:
                            kwargs: dict[str, Any] = {"params": query}
                            if isinstance(body, bytes):
                                kwargs["content"] = body
                                kwargs["headers"] = {"content-type": "application/json"}
                            elif body is not None:
                                kwargs["json"] = body
                            resp = await api.request(method.upper(), url, **kwargs)
                            checked += 1
                            declared = str(resp.status_code) in methods[method]["responses"]
                            assert resp.status_code < 500 or declared, (
                                method,
                                url,
                                query,
                                body,
                                resp.text,
                            )
                            kind = resp.headers.get("content-type", "")
                            assert kind.startswith("application/"), (url, kind)
                            if 400 <= resp.status_code < 500:
                                assert kind == "application/problem+json", (url, resp.text)
        assert checked > 300
