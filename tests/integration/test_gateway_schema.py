"""schemathesis against the gateway's OpenAPI document: a real gateway process on real NATS,
called with an operate token (so every command is exercised too), finds no 5xx, no status
code the operation does not declare, and no response that violates its declared schema.

Bounded to well under a minute: few examples per operation, short waits (the commands
publish to NATS and nobody answers them here, which is fine: a 202 with a pending operation).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core import NOT_SET
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from lifeboat.common.clusters import ClusterSpec, FileSetPlacement, FileSetSpec, NodeSpec
from lifeboat.common.events import NodeHealth, Role, Source
from lifeboat.common.kv import TOPOLOGY_BUCKET, open_bucket
from lifeboat.common.state import Topology
from lifeboat.devstack.launch import launch, service_env
from lifeboat.devstack.procs import free_port
from lifeboat.devstack.throwaway import write_clusters
from lifeboat.gateway.auth import hash_token

OPERATE = "operate-token-schema"
AUTH = {"Authorization": f"Bearer {OPERATE}"}
MONITOR = Source(service="monitor", instance="monitor-schema")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Query and body fields that make the gateway wait: kept short so the run stays fast.
WAITS = ("wait", "wait_seconds")
# LIFEBOAT_FUZZ_EXAMPLES=50 for a deeper, random run; by default a few, the same each time.
EXAMPLES = int(os.environ.get("LIFEBOAT_FUZZ_EXAMPLES", "0")) or 6


@dataclass(frozen=True)
class Target:
    url: str
    cluster: str
    nodes: tuple[str, ...]


async def _seed(nats_url: str, spec: ClusterSpec) -> None:
    """A topology in KV and a fresh report per node: the reads have something to show."""
    nc = await nats.connect(nats_url)
    try:
        kv = await open_bucket(nc.jetstream(), TOPOLOGY_BUCKET, history=16)
        topo = Topology(cluster=spec.name, primary="node1", epoch=2, synchronous=("node2",))
        await kv.put(spec.name, topo.model_dump_json().encode())
        for node in spec.nodes:
            primary = node.name == "node1"
            report = NodeHealth(
                cluster=spec.name,
                node=node.name,
                source=MONITOR,
                reachable=True,
                role=Role.PRIMARY if primary else Role.STANDBY,
                writable=primary,
                timeline=1,
                lag_bytes=0 if primary else 1024,
                wal_receiver=None if primary else "streaming",
            )
            await nc.jetstream().publish(report.subject(), report.model_dump_json().encode())
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def target(nats_url: str, workdir: Path) -> Iterator[Target]:
    cluster = f"sch{time.monotonic_ns() % 10**8}"
    base = workdir / cluster
    base.mkdir()
    spec = ClusterSpec(
        name=cluster,
        database="app",
        nodes=tuple(
            NodeSpec(name=f"node{i}", host="127.0.0.1", port=free_port(), location=f"dc{i}")
            for i in (1, 2, 3)
        ),
        filesets=(
            FileSetSpec(
                name="uploads",
                root=base / "uploads",
                placement=(
                    FileSetPlacement(node="node1"),
                    FileSetPlacement(node="node2", mode="pull"),
                ),
            ),
        ),
    )
    tokens = base / "tokens"
    tokens.write_text(f"oncall:operate:{hash_token(OPERATE)}\n")
    env = service_env(
        nats_url=nats_url,
        clusters_file=write_clusters(base / "clusters.yaml", spec),
        pg_password="unused",
        extra={
            "LIFEBOAT_TOKENS_FILE": str(tokens),
            "LIFEBOAT_WEBHOOKS": "[]",
            "LIFEBOAT_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        },
    )
    proc = launch("gateway", env, instance=f"{cluster}-gw", log_file=base / "gateway.log")
    try:
        proc.wait_ready(30)
        asyncio.run(_seed(nats_url, spec))
        yield Target(proc.url, cluster, tuple(n.name for n in spec.nodes))
    finally:
        proc.stop()
    log = proc.output()
    assert OPERATE not in log, "a token reached the log"
    assert "Traceback" not in log, log[-3000:]


def _aim(case: Case[Any], target: Target, known_operations: list[str]) -> None:
    """Mostly the real cluster, nodes, file set and operations, so the routes get past their
    404s; a generated value now and then, so the 404s are checked too. Waits cut short (a
    command left without a body would wait its default second for a refusal)."""
    path = case.path_parameters or {}
    for name, value in list(path.items()):
        pick = zlib.crc32(str(value).encode())
        if pick % 4 == 0:  # a generated value, a quarter of the time
            continue
        if name == "cluster":
            path[name] = target.cluster
        elif name == "node":
            path[name] = target.nodes[pick % len(target.nodes)]
        elif name == "fileset":
            path[name] = "uploads"
        elif name == "operation_id" and known_operations:
            path[name] = known_operations[pick % len(known_operations)]
    if case.method.upper() == "DELETE":
        case.query = {**(case.query or {}), "wait_seconds": 0}
    if case.method.upper() == "POST" and case.operation.path not in (
        "/clusters/{cluster}/pause",
        "/clusters/{cluster}/resume",
    ):
        if not isinstance(case.body, dict):
            if case.body is not NOT_SET and case.body is not None:
                return  # not an object: refused before any wait
            case.body = {}
            case.media_type = "application/json"
        case.body.setdefault("wait_seconds", 0)
    for part in (case.query, case.body):
        if isinstance(part, dict):
            for name in WAITS:
                value = part.get(name)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    part[name] = min(value, 0.05)


def _failures(
    operation: APIOperation[Any, Any, Any, Any],
    declared: set[str],
    target: Target,
    mode: GenerationMode,
    known_operations: list[str],
) -> list[str]:
    """Up to a few examples of `operation` in `mode`: each check that failed, in words. A
    declared 503 (health, readiness, the HAProxy role checks) is an answer, not an error:
    `status_code_conformance` still holds it to the declared codes."""
    found: list[str] = []
    checks = [c for c in CHECKS if c is not not_a_server_error or "503" not in declared]
    try:
        strategy = operation.as_strategy(generation_mode=mode)
    except Exception as exc:  # e.g. nothing to negate in an operation without parameters
        return [] if mode is GenerationMode.NEGATIVE else [f"{operation.label}: {exc!r}"]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize="LIFEBOAT_FUZZ_EXAMPLES" not in os.environ,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(case: Case[Any]) -> None:
        _aim(case, target, known_operations)
        try:
            response = case.call_and_validate(headers=AUTH, checks=checks, timeout=10)
        except (AssertionError, FailureGroup) as exc:  # the checks' failures, grouped
            found.append(f"{case.method} {case.formatted_path} {mode.value}: {exc}")
            return
        if 400 <= response.status_code < 500:
            body: Any = json.loads(response.content)
            if body.get("status") != response.status_code:
                found.append(f"{case.method} {case.formatted_path}: problem says {body}")

    try:
        run()
    except Unsatisfiable:  # nothing to make invalid in an operation without parameters
        if mode is GenerationMode.POSITIVE:
            raise
    return found


def test_the_openapi_document_holds_for_every_answer(target: Target) -> None:
    document = httpx.get(f"{target.url}/openapi.json").json()
    loaded = schemathesis.openapi.from_dict(document)
    loaded.config.update(base_url=target.url)
    operations = []
    for result in loaded.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    assert len(operations) > 30
    started = time.monotonic()
    failures: list[str] = []
    # The commands first: the operations they open are then there to be read back.
    operations.sort(key=lambda op: (op.method != "post", op.path))
    known: list[str] = []
    for operation in operations:
        if operation.path.startswith("/operations"):
            answer = httpx.get(f"{target.url}/operations", headers=AUTH)
            known = [op["id"] for op in answer.json()]
        if operation.path == "/events":
            continue  # a stream that never ends: tested on its own in test_gateway.py
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            declared = set(document["paths"][operation.path][operation.method.lower()]["responses"])
            failures += _failures(operation, declared, target, mode, known)
    assert not failures, "\n\n".join(failures)
    assert time.monotonic() - started < 60 * EXAMPLES / 6
