"""The gateway's API without servers: schemas in OpenAPI, 404s, role checks from the report
book, operation answers, and the typed client and CLI reading them back."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import get_args
from uuid import uuid4

import httpx
import pytest
from fastapi.testclient import TestClient

from lifeboat.common.clusters import ClustersFile, ClusterSpec, NodeSpec, dump_clusters
from lifeboat.common.events import (
    EVENT_TYPES,
    FailoverFailed,
    FailoverKind,
    NodeHealth,
    NodeRejoined,
    Role,
    Source,
    SwitchoverCompleted,
)
from lifeboat.common.state import Topology
from lifeboat.gateway import cli
from lifeboat.gateway.app import build_app
from lifeboat.gateway.client import GatewayClient, GatewayError
from lifeboat.gateway.decode import UndecodableEventError, decode_event
from lifeboat.gateway.deps import Gateway
from lifeboat.gateway.history import HISTORY_TOPICS
from lifeboat.gateway.routes.operations import reply, result
from lifeboat.gateway.schemas import (
    HistoryEvent,
    OperationDone,
    OperationPending,
    OperationRefused,
)
from lifeboat.gateway.settings import CliSettings, GatewaySettings

ROOT = Path(__file__).resolve().parents[2]
FAILOVER = Source(service="failover", instance="f1")
MONITOR = Source(service="monitor", instance="m1")
SPEC = ClusterSpec(
    name="main",
    database="app",
    nodes=(
        NodeSpec(name="node1", host="127.0.0.1", port=1),
        NodeSpec(name="node2", port=2, host="127.0.0.1"),
    ),
)


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    clusters = tmp_path / "clusters.yaml"
    clusters.write_text(dump_clusters(ClustersFile(clusters=(SPEC,))))
    topology = Topology(cluster="main", primary="node1", epoch=4, synchronous=("node2",))

    async def fake_topology(self: Gateway, cluster: str) -> Topology | None:
        return topology if cluster == "main" else None

    monkeypatch.setattr(Gateway, "topology", fake_topology)
    # Not entered as a context manager: no lifespan, so nothing connects to NATS.
    return TestClient(build_app(GatewaySettings(clusters_file=clusters)))


@pytest.fixture
def api(app: TestClient) -> Iterator[GatewayClient]:
    with GatewayClient("http://testserver", http=app) as client:
        yield client


def gateway(app: TestClient) -> Gateway:
    state: Gateway = app.app.state.gateway  # type: ignore[attr-defined]
    return state


def health(node: str, role: Role, **fields: object) -> NodeHealth:
    return NodeHealth(
        cluster="main",
        node=node,
        source=MONITOR,
        reachable=True,
        role=role,
        **fields,
    )


def test_openapi_names_a_model_for_every_answer(app: TestClient) -> None:
    paths = app.get("/openapi.json").json()["paths"]

    def models(path: str, method: str = "get") -> dict[str, str]:
        out = {}
        for code, answer in paths[path][method]["responses"].items():
            schema = answer["content"]["application/json"]["schema"]
            ref = schema.get("$ref") or schema.get("items", {}).get("$ref") or schema["items"]
            out[code] = ref if isinstance(ref, str) else "union"
        return {code: ref.rsplit("/", 1)[-1] for code, ref in out.items()}

    assert models("/health") == {"200": "HealthReport", "503": "HealthReport"}
    assert models("/health/live") == {"200": "Liveness"}
    assert models("/health/ready") == {"200": "Readiness", "503": "Readiness"}
    assert models("/health/circuit-breakers") == {"200": "BreakerReport"}
    assert models("/clusters") == {"200": "ClusterSummary"}
    assert models("/clusters/{cluster}") == {
        "200": "ClusterStatus",
        "404": "ErrorDetail",
        "422": "HTTPValidationError",
    }
    for check, model in (("primary", "PrimaryCheck"), ("replica", "ReplicaCheck")):
        assert models(f"/clusters/{{cluster}}/nodes/{{node}}/{check}") == {
            "200": model,
            "503": model,
            "404": "ErrorDetail",
            "422": "HTTPValidationError",
        }
    operation = {
        "200": "OperationDone",
        "202": "OperationPending",
        "409": "OperationRefused",
        "404": "ErrorDetail",
        "422": "HTTPValidationError",
    }
    assert models("/clusters/{cluster}/failover", "post") == operation
    assert models("/clusters/{cluster}/switchover", "post") == operation
    assert models("/clusters/{cluster}/nodes/{node}/rejoin", "post") == operation
    history = paths["/clusters/{cluster}/history"]["get"]["responses"]["200"]
    items = history["content"]["application/json"]["schema"]["items"]
    assert items["discriminator"]["propertyName"] == "type"


def test_the_history_schema_is_the_models_of_the_history_subjects() -> None:
    union = get_args(HistoryEvent)[0]
    assert set(get_args(union)) == {EVENT_TYPES[t.name] for t in HISTORY_TOPICS}


def test_unknown_clusters_and_nodes_are_404_naming_the_known_ones(api: GatewayClient) -> None:
    with pytest.raises(GatewayError) as missing:
        api.cluster("nope")
    assert missing.value.status_code == 404
    assert missing.value.body == {"detail": "no cluster named 'nope' (known: main)"}
    with pytest.raises(GatewayError) as node:
        api.is_primary("main", "node9")
    assert "cluster main has no node 'node9' (known: node1, node2)" in str(node.value)
    with pytest.raises(GatewayError) as target:
        api.operate("switchover", "main", reason="x", target="node9")
    assert target.value.status_code == 404
    with pytest.raises(GatewayError) as invalid:
        api.operate("switchover", "main", reason="")
    assert invalid.value.status_code == 422


def test_role_checks_and_status_follow_fresh_reports(app: TestClient, api: GatewayClient) -> None:
    assert app.get("/clusters/main/nodes/node1/primary").status_code == 503  # nothing heard
    assert api.is_primary("main", "node1").primary is False
    book = gateway(app).reports
    book.add(health("node1", Role.PRIMARY, writable=True))
    book.add(health("node2", Role.STANDBY, writable=False, wal_receiver="streaming"))
    assert app.get("/clusters/main/nodes/node1/primary").status_code == 200
    assert app.get("/clusters/main/nodes/node2/primary").status_code == 503  # not in topology
    assert app.get("/clusters/main/nodes/node2/replica").status_code == 200
    assert api.is_replica("main", "node2").replica is True
    assert api.is_replica("main", "node1").replica is False

    status = api.cluster("main")
    assert status.topology is not None
    assert (status.topology.primary, status.topology.epoch) == ("node1", 4)
    assert status.dsn.startswith("postgresql://127.0.0.1:1,127.0.0.1:2/app")
    healths = {n.name: n.health for n in status.nodes}
    assert healths["node1"] is not None
    assert (healths["node1"].role, healths["node1"].writable) == (Role.PRIMARY, True)
    assert healths["node2"] is not None
    assert healths["node2"].wal_receiver == "streaming"
    assert [(c.name, c.primary, c.epoch) for c in api.clusters()] == [("main", "node1", 4)]

    stale = health("node1", Role.PRIMARY, writable=True)
    stale = stale.model_copy(update={"occurred_at": datetime.now(UTC) - timedelta(minutes=1)})
    book.forget_silent(datetime.now(UTC) + timedelta(hours=1))
    assert len(book) == 0
    book.add(stale)
    assert app.get("/clusters/main/nodes/node1/primary").status_code == 503
    assert app.get("/clusters/main").json()["nodes"][0]["health"] is None


def test_health_routes_are_the_runtimes(app: TestClient, api: GatewayClient) -> None:
    assert api.live().model_dump() == {"status": "alive", "service": "gateway"}
    ready = app.get("/health/ready")
    assert ready.status_code == 503  # never started: not connected to NATS
    assert ready.json()["ready"] is False
    assert api.ready().service == "gateway"
    assert api.circuit_breakers().breakers == []


def _answered(body: OperationDone | OperationRefused | OperationPending) -> GatewayClient:
    response = reply(body)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(response.status_code, content=bytes(response.body))

    http = httpx.Client(base_url="http://gw", transport=httpx.MockTransport(handler))
    return GatewayClient("http://gw", http=http)


def test_operation_answers_round_trip_through_the_client() -> None:
    request_id = uuid4()
    pending = result(None, request_id)
    assert isinstance(pending, OperationPending)
    assert reply(pending).status_code == 202
    assert _answered(pending).operate("failover", "main", reason="x") == pending

    refusal = FailoverFailed(
        cluster="main",
        source=FAILOVER,
        kind=FailoverKind.SWITCHOVER,
        target="node1",
        reason="node1 is already the primary",
    )
    refused = result(refusal, request_id)
    assert isinstance(refused, OperationRefused)
    assert refused.reason == "node1 is already the primary"
    assert reply(refused).status_code == 409
    assert _answered(refused).operate("switchover", "main", reason="x") == refused

    completed = SwitchoverCompleted(
        cluster="main",
        source=FAILOVER,
        kind=FailoverKind.SWITCHOVER,
        old_primary="node1",
        new_primary="node2",
        reason="patching",
        total_seconds=0.4,
    )
    done = result(completed, request_id)
    assert isinstance(done, OperationDone)
    assert reply(done).status_code == 200
    body = json.loads(bytes(reply(done).body))
    assert (body["status"], body["event"]["new_primary"]) == ("done", "node2")
    assert _answered(done).operate("switchover", "main", reason="x") == done

    rejoined = NodeRejoined(
        cluster="main", node="node1", source=FAILOVER, method="pg_rewind", upstream="node2"
    )
    assert isinstance(result(rejoined, request_id), OperationDone)
    with pytest.raises(TypeError):
        result(health("node1", Role.PRIMARY), request_id)


def test_events_are_decoded_into_their_models() -> None:
    event = NodeRejoined(
        cluster="main", node="node1", source=FAILOVER, method="pg_rewind", upstream="node2"
    )
    decoded = decode_event(event.model_dump_json().encode())
    assert isinstance(decoded, NodeRejoined)
    assert decoded == event
    for bad in (b"not json", b"[]", b'{"type": "no.such"}', b'{"type": "node.rejoined"}'):
        with pytest.raises(UndecodableEventError):
            decode_event(bad)


def _run(
    handler: Callable[[argparse.Namespace, GatewayClient], int],
    body: OperationDone | OperationRefused | OperationPending,
    **args: object,
) -> int:
    return handler(argparse.Namespace(**args), _answered(body))


def test_cli_operations_print_the_answer_and_exit_by_outcome(
    capsys: pytest.CaptureFixture[str],
) -> None:
    refusal = FailoverFailed(
        cluster="main", source=FAILOVER, kind=FailoverKind.MANUAL, reason="no candidate"
    )
    common = {"cluster": "main", "target": None, "reason": "x", "requested_by": "me"}
    assert _run(cli._operate, result(refusal, uuid4()), command="failover", **common) == 1
    assert json.loads(capsys.readouterr().out)["reason"] == "no candidate"
    assert _run(cli._operate, result(None, uuid4()), command="switchover", **common) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "pending"


def test_cli_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFEBOAT_GATEWAY_URL", "http://gw.example:9000")
    monkeypatch.setenv("LIFEBOAT_REQUESTED_BY", "oncall")
    settings = CliSettings()
    assert (settings.gateway_url, settings.requested_by) == ("http://gw.example:9000", "oncall")
    args = cli.parser(settings).parse_args(["status"])
    assert args.gateway == "http://gw.example:9000"
    monkeypatch.delenv("LIFEBOAT_REQUESTED_BY")
    assert CliSettings().requested_by  # the login name, or "cli"


def test_the_gateway_neither_imports_the_dev_stack_nor_reads_the_environment() -> None:
    for path in (ROOT / "services" / "gateway" / "src").rglob("*.py"):
        text = path.read_text()
        assert "lifeboat.devstack" not in text, path
        assert "os.environ" not in text, path
        assert "getenv" not in text, path


def test_cli_cluster_and_history_print_one_line_each(
    app: TestClient,
    api: GatewayClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gateway(app).reports.add(health("node1", Role.PRIMARY, writable=True, lag_bytes=0))
    assert cli._cluster(argparse.Namespace(cluster="main", json=False), api) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "main: primary node1 (epoch 4), synchronous: node2"
    assert lines[1].split() == ["node1", "primary", "writable", "lag", "0"]
    assert lines[2].split() == ["node2", "unreachable", "lag", "-"]

    refusal = FailoverFailed(
        cluster="main", source=FAILOVER, kind=FailoverKind.MANUAL, reason="no candidate"
    )

    async def history(js: object, cluster: str, limit: int) -> list[FailoverFailed]:
        return [refusal][:limit]

    monkeypatch.setattr("lifeboat.gateway.routes.history.read_history", history)
    monkeypatch.setattr(Gateway, "js", property(lambda self: None))  # no NATS here
    assert cli._history(argparse.Namespace(cluster="main", limit=5), api) == 0
    stamp = refusal.model_dump(mode="json")["occurred_at"]
    assert capsys.readouterr().out.split() == [stamp, "failover.failed", "no", "candidate"]
