"""The five services as real processes against real NATS, S3 and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest
from nats.aio.msg import Msg

from lifeboat.common import subjects
from lifeboat.common.events import NodeHealth
from lifeboat.devstack.launch import ServiceProcess, launch, service_env
from lifeboat.devstack.postgres import PgCluster
from lifeboat.devstack.procs import free_port, wait_until
from lifeboat.devstack.throwaway import write_clusters
from tests.endpoints import S3Endpoint, answers_ok

SERVICES = ("monitor", "failover", "backup", "filesync", "gateway")


class Services:
    def __init__(self, base_env: dict[str, str], logs: Path) -> None:
        self.base_env = base_env
        self.logs = logs
        self.ports = {name: free_port() for name in SERVICES}
        self.procs: dict[str, ServiceProcess] = {}

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def start(self, name: str, **extra_env: str) -> ServiceProcess:
        env = dict(self.base_env)
        if name == "gateway":
            urls = {n: self.url(n) for n in SERVICES if n != "gateway"}
            env["LIFEBOAT_SERVICE_URLS"] = json.dumps(urls)
        log = self.logs / f"{name}.log"
        log.unlink(missing_ok=True)
        proc = launch(
            name,
            env,
            port=self.ports[name],
            instance=f"{name}-test",
            extra=extra_env,
            log_file=log,
        )
        self.procs[name] = proc
        return proc

    def output(self, name: str) -> str:
        return self.procs[name].output()

    def wait_ready(self, name: str, timeout: float = 30) -> None:
        self.procs[name].wait_ready(timeout)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.stop(timeout=10)


@pytest.fixture(scope="module")
def services(
    nats_url: str, s3: S3Endpoint, pg_cluster: PgCluster, workdir: Path
) -> Iterator[Services]:
    env = service_env(
        nats_url=nats_url,
        clusters_file=write_clusters(workdir / "clusters.yaml", pg_cluster.spec()),
        pg_password=pg_cluster.passwords.superuser.get_secret_value(),
        extra=s3.env(),
    )
    logs = workdir / "service-logs"
    logs.mkdir(exist_ok=True)
    svc = Services(env, logs)
    try:
        for name in SERVICES:
            svc.start(name)
        for name in SERVICES:
            svc.wait_ready(name)
        yield svc
    finally:
        svc.stop_all()


def test_every_service_answers_its_probes(services: Services) -> None:
    for name in SERVICES:
        live = httpx.get(f"{services.url(name)}/health/live", timeout=2)
        assert live.status_code == 200
        assert live.json()["service"] == name
        report = httpx.get(f"{services.url(name)}/health", timeout=5)
        assert report.status_code == 200, report.text
        body = report.json()
        assert body["status"] == "healthy", body
        assert body["instance"] == f"{name}-test"
        assert "nats" in {c["name"] for c in body["components"]}


def test_gateway_health_covers_nats_s3_every_node_and_every_service(services: Services) -> None:
    resp = httpx.get(f"{services.url('gateway')}/health", timeout=10)
    assert resp.status_code == 200, resp.text
    report = resp.json()
    assert report["status"] == "healthy", report
    components = {c["name"]: c for c in report["components"]}
    assert components["nats"]["status"] == "healthy"
    assert components["s3"]["status"] == "healthy"
    roles = {n: c["details"]["role"] for n, c in components.items() if n.startswith("postgres:")}
    assert sorted(roles.values()) == ["primary", "standby", "standby"]
    standbys = [c for c in components.values() if c["details"].get("role") == "standby"]
    assert all(c["message"] == "standby, streaming" for c in standbys)
    for name in SERVICES[:-1]:
        assert components[f"service:{name}"]["status"] == "healthy"
    breakers = httpx.get(f"{services.url('gateway')}/health/circuit-breakers", timeout=5).json()
    names = {b["name"] for b in breakers["breakers"]}
    assert {"nats", "s3", "service:monitor"} <= names
    assert all(b["state"] == "closed" for b in breakers["breakers"])


def test_asyncapi_documents_are_served(services: Services) -> None:
    resp = httpx.get(f"{services.url('backup')}/docs/asyncapi.json", timeout=5)
    assert resp.status_code == 200
    assert "asyncapi" in resp.json()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_services_stop_cleanly_on_signals(services: Services, sig: signal.Signals) -> None:
    try:
        for name in SERVICES:
            proc = services.procs[name]
            started = time.monotonic()
            proc.signal(sig)
            assert proc.proc is not None
            code = proc.proc.wait(timeout=10)
            took = time.monotonic() - started
            out = services.output(name)
            assert code == 0, f"{name} exited {code}:\n{out}"
            assert took < 5, f"{name} took {took:.1f}s to stop"
            assert "Traceback" not in out, out
    finally:
        for name in SERVICES:  # back up for the next test, whatever this one found
            services.procs[name].stop()
            services.start(name)
        for name in SERVICES:
            services.wait_ready(name)


def test_gateway_reports_an_unreachable_node_and_opens_its_breaker(
    services: Services, pg_cluster: PgCluster, workdir: Path
) -> None:
    spec = pg_cluster.spec()
    ghost = spec.nodes[0].model_copy(update={"name": "ghost", "port": free_port()})
    with_ghost = spec.model_copy(update={"nodes": (*spec.nodes, ghost)})
    clusters = write_clusters(workdir / "clusters-ghost.yaml", with_ghost)
    env = {
        **services.base_env,
        "LIFEBOAT_CLUSTERS_FILE": str(clusters),
        "LIFEBOAT_BREAKER_FAILURE_THRESHOLD": "2",
    }
    log = services.logs / "gateway-ghost.log"
    proc = launch("gateway", env, name="gateway-ghost", log_file=log)
    url = proc.url
    try:
        wait_until(lambda: answers_ok(f"{url}/health/live"), timeout=30, what="the gateway")
        for _ in range(3):
            resp = httpx.get(f"{url}/health", timeout=10)
        assert resp.status_code == 503
        components = {c["name"]: c for c in resp.json()["components"]}
        ghost_health = components[f"postgres:{spec.name}/ghost"]
        assert ghost_health["status"] == "unhealthy"
        assert "circuit" in ghost_health["message"]
        assert "open" in ghost_health["message"]
        assert components[f"postgres:{spec.name}/node1"]["status"] == "healthy"
        breakers = httpx.get(f"{url}/health/circuit-breakers", timeout=5).json()["breakers"]
        states = {b["name"]: b["state"] for b in breakers}
        assert states[f"postgres:{spec.name}/ghost"] == "open"
        assert states[f"postgres:{spec.name}/node1"] == "closed"
    finally:
        proc.stop()


def test_cli_status_shows_every_component(services: Services) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lifeboat.gateway.cli",
            "--gateway",
            services.url("gateway"),
            "health",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Lifeboat: healthy")
    assert "[ok ] postgres:main/node1" in result.stdout
    unreachable = subprocess.run(
        [
            sys.executable,
            "-m",
            "lifeboat.gateway.cli",
            "--gateway",
            f"http://127.0.0.1:{free_port()}",
            "health",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert unreachable.returncode == 2
    assert "cannot reach the gateway" in unreachable.stderr


async def test_monitor_publishes_node_health_on_nats(services: Services, nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    seen: dict[str, NodeHealth] = {}
    done = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        event = NodeHealth.model_validate_json(msg.data)
        assert msg.subject == event.subject()
        seen[event.node] = event
        if len(seen) == 3:
            done.set()

    sub = await nc.subscribe(subjects.NODE_HEALTH.pattern(cluster="main"), cb=on_msg)
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        await sub.unsubscribe()
        await nc.close()
    assert sorted(e.role for e in seen.values()) == ["primary", "standby", "standby"]
    assert all(e.source.instance == "monitor-test" for e in seen.values())
    async with httpx.AsyncClient(timeout=5) as client:
        stored = (await client.get(f"{services.url('monitor')}/health")).json()
    probing = next(c for c in stored["components"] if c["name"] == "probing")
    assert probing["status"] == "healthy"
