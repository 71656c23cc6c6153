"""The gateway's API without servers: the projection filled by hand, tokens and roles,
problems (RFC 9457), operations you can follow, history pages, exposure and SLA, metrics,
and the typed client reading it all back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from lifeboat.common.clusters import (
    ClustersFile,
    ClusterSpec,
    FileSetPlacement,
    FileSetSpec,
    NodeSpec,
    dump_clusters,
)
from lifeboat.common.events import (
    BackupCompleted,
    BackupFailed,
    BackupVerified,
    Envelope,
    FailoverCompleted,
    FailoverKind,
    FailoverRequested,
    FailoverStarted,
    NodeDown,
    NodeHealth,
    NodeRejoined,
    NodeRejoinRequested,
    ReplicaState,
    Role,
    Source,
    SwitchoverCompleted,
    SwitchoverFailed,
    SwitchoverRequested,
    UndecodableEventError,
    WalState,
    WalStatus,
    decode_event,
)
from lifeboat.common.state import Topology
from lifeboat.gateway.app import build_app
from lifeboat.gateway.auth import Role as TokenRole
from lifeboat.gateway.auth import TokenBook, TokenFileError, hash_token, parse_line
from lifeboat.gateway.client import GatewayClient, GatewayError
from lifeboat.gateway.deps import Gateway
from lifeboat.gateway.metrics import NAMES
from lifeboat.gateway.projection import Projection, Stored, stream_of, subject_matches
from lifeboat.gateway.schemas import OperationDone, OperationRefused
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
    filesets=(
        FileSetSpec(
            name="uploads",
            root=Path("/srv/uploads"),
            placement=(FileSetPlacement(node="node1"), FileSetPlacement(node="node2", mode="pull")),
        ),
        FileSetSpec(
            name="docs",
            root=Path("/srv/docs"),
            reference_query="select path from documents",
            placement=(FileSetPlacement(node="node1"),),
        ),
    ),
)
TOKENS = {"reader": ("read", "r-token"), "oncall": ("operate", "o-token"), "root": ("admin", "a")}


def token_lines() -> str:
    return "\n".join(
        f"{name}:{role}:{hash_token(token, scheme='scrypt' if name == 'root' else 'sha256')}"
        for name, (role, token) in TOKENS.items()
    )


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name][1]}"}


Publish = Callable[[Envelope], list[Envelope]]


@pytest.fixture
def answers() -> dict[str, Publish]:
    """What the fake failover service answers to a published request (by request type)."""
    return {}


def make_app(tmp_path: Path, answers: dict[str, Publish], **settings: Any) -> TestClient:
    clusters = tmp_path / "clusters.yaml"
    clusters.write_text(dump_clusters(ClustersFile(clusters=(SPEC,))))
    app = build_app(
        GatewaySettings(clusters_file=clusters, tokens=SecretStr(token_lines()), **settings)
    )
    gw: Gateway = app.state.gateway
    gw.projection.set_topology(
        "main", Topology(cluster="main", primary="node1", epoch=4, synchronous=("node2",))
    )
    seq = iter(range(1, 10**6))

    async def publish(event: Envelope) -> None:
        gw.projection.apply(Stored("events", next(seq), event.subject(), event))
        answer_to = answers.get(event.type)
        for answer in answer_to(event) if answer_to else []:
            gw.projection.apply(Stored("events", next(seq), answer.subject(), answer))

    gw.runtime.publisher.publish = publish  # type: ignore[method-assign]
    app.state.seq = seq  # a test adding events of its own takes their sequences from here
    # Not entered as a context manager: no lifespan, so nothing connects to NATS.
    return TestClient(app)


@pytest.fixture
def app(tmp_path: Path, answers: dict[str, Publish]) -> TestClient:
    return make_app(tmp_path, answers)


@pytest.fixture
def api(app: TestClient) -> Iterator[GatewayClient]:
    app.headers.update(auth("oncall"))
    with GatewayClient("http://testserver", http=app, token="") as client:
        yield client


def projection(app: TestClient) -> Projection:
    gw: Gateway = app.app.state.gateway  # type: ignore[attr-defined]
    return gw.projection


def health(node: str, role: Role, **fields: object) -> NodeHealth:
    return NodeHealth(
        cluster="main", node=node, source=MONITOR, reachable=True, role=role, **fields
    )


def test_openapi_documents_problems_and_operations(app: TestClient) -> None:
    paths = app.get("/openapi.json").json()["paths"]
    failover = paths["/clusters/{cluster}/failover"]["post"]["responses"]
    assert set(failover) == {"202", "401", "403", "404", "409", "422"}
    assert "application/problem+json" in failover["409"]["content"]
    assert failover["202"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "OperationView"
    )
    assert "/operations/{operation_id}" in paths
    assert "/events" in paths
    for path in ("exposure", "sla", "history", "pause", "resume"):
        assert f"/clusters/{{cluster}}/{path}" in paths


def test_tokens_are_parsed_hashed_and_checked() -> None:
    book = TokenBook([parse_line(line, "t") for line in token_lines().splitlines()])
    assert book.check("o-token") is not None
    admin = book.check("a")
    assert admin is not None
    assert admin.role is TokenRole.ADMIN
    assert book.check("nope") is None
    for bad in ("x", "a:superuser:sha256:00", "a:read:md5:00", "a:read:sha256:zz"):
        with pytest.raises(TokenFileError):
            parse_line(bad, "t")


def test_mutations_need_operate_and_reads_are_open_on_loopback_only(
    tmp_path: Path, app: TestClient, answers: dict[str, Publish]
) -> None:
    body = {"reason": "x"}
    nobody = app.post("/clusters/main/switchover", json=body)
    assert nobody.status_code == 401
    assert nobody.headers["content-type"] == "application/problem+json"
    assert nobody.headers["www-authenticate"].startswith("Bearer")
    assert "needs a bearer token with role operate" in nobody.json()["detail"]
    unknown = app.post("/clusters/main/pause", json=body, headers={"Authorization": "Bearer no"})
    assert (unknown.status_code, unknown.json()["detail"]) == (401, "the bearer token is not known")
    weak = app.post("/clusters/main/switchover", json=body, headers=auth("reader"))
    assert weak.status_code == 403
    assert weak.json()["detail"] == "reader has role read; this needs operate or more"
    for path in ("/clusters/main/failover", "/clusters/main/nodes/node1/rejoin"):
        assert app.post(path, json=body, headers=auth("reader")).status_code == 403
    for path in ("/clusters/main/pause", "/clusters/main/resume"):
        assert app.post(path, json=body).status_code == 401
    assert app.get("/clusters/main").status_code == 200  # loopback: reads are open
    assert app.get("/auth/whoami").json() == {
        "name": "anonymous",
        "role": "read",
        "authenticated": False,
    }
    assert app.get("/auth/whoami", headers=auth("root")).json()["role"] == "admin"

    public = make_app(tmp_path, answers, http_host="0.0.0.0")
    assert public.get("/clusters/main").status_code == 401
    assert public.get("/clusters/main/history").status_code == 401
    assert public.get("/clusters/main", headers=auth("reader")).status_code == 200
    # health and the HAProxy role checks stay open
    assert public.get("/health/live").status_code == 200
    assert public.get("/clusters/main/nodes/node1/primary").status_code == 503
    closed = make_app(tmp_path, answers, reads_open=False)
    assert closed.get("/clusters").status_code == 401


def test_errors_are_problems(app: TestClient, api: GatewayClient) -> None:
    missing = app.get("/clusters/nope")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    problem = missing.json()
    assert problem["title"] == "Not Found"
    assert problem["detail"] == "no cluster named 'nope' (known: main)"
    assert problem["instance"] == "/clusters/nope"
    with pytest.raises(GatewayError) as node:
        api.is_primary("main", "node9")
    assert node.value.detail == "cluster main has no node 'node9' (known: node1, node2)"
    with pytest.raises(GatewayError) as target:
        api.submit("switchover", "main", reason="x", target="node9")
    assert target.value.status_code == 404
    invalid = app.post("/clusters/main/switchover", json={"reason": "", "wait_seconds": 99})
    assert invalid.status_code == 422
    fields = {e["field"]: e["reason"] for e in invalid.json()["errors"]}
    assert set(fields) == {"body.reason", "body.wait_seconds"}
    assert "at least 1 character" in fields["body.reason"]
    unknown_op = app.get("/operations/6f1c2a4e-8a43-4a53-9d7e-2c1e1d3b9f10")
    assert unknown_op.status_code == 404
    assert app.get("/operations/not-a-uuid").status_code == 422


def _completed(request: Envelope) -> list[Envelope]:
    assert isinstance(request, SwitchoverRequested)
    common: dict[str, Any] = {
        "cluster": "main",
        "source": FAILOVER,
        "kind": FailoverKind.SWITCHOVER,
        "correlation_id": request.correlation_id,
    }
    return [
        FailoverStarted(**common, old_primary="node1", candidate="node2", reason="x"),
        SwitchoverCompleted(
            **common, old_primary="node1", new_primary="node2", reason="x", total_seconds=0.7
        ),
    ]


def test_an_operation_answers_202_and_is_followed_to_its_outcome(
    app: TestClient, api: GatewayClient, answers: dict[str, Publish]
) -> None:
    answers["switchover.requested"] = _completed
    resp = app.post("/clusters/main/switchover", json={"reason": "patching", "target": "node2"})
    assert resp.status_code == 202, resp.text
    view = resp.json()
    assert resp.headers["location"] == f"/operations/{view['id']}" == view["location"]
    assert view["state"] == "completed"
    assert view["requested_by"] == "oncall"  # from the token, never the body
    assert [e["type"] for e in view["events"]] == ["failover.started", "switchover.completed"]
    assert all(e["correlation_id"] == view["id"] for e in view["events"])
    request = projection(app).history("main", types=frozenset({"switchover.requested"}))
    published = request[-1].event
    assert isinstance(published, SwitchoverRequested)
    assert published.correlation_id is not None
    assert published.requested_by == "oncall"

    followed = app.get(f"/operations/{view['id']}", params={"wait": 5}).json()
    assert followed["state"] == "completed"
    assert followed["done"] is True
    done = api.operate("switchover", "main", reason="again", requested_by="ignored")
    assert isinstance(done, OperationDone)
    assert isinstance(done.event, SwitchoverCompleted)
    assert done.event.new_primary == "node2"
    assert [o.kind for o in api.operations()] == ["switchover", "switchover"]


def test_a_refusal_is_409_with_the_reason_and_pending_ones_long_poll(
    app: TestClient, api: GatewayClient, answers: dict[str, Publish]
) -> None:
    def refuse(request: Envelope) -> list[Envelope]:
        return [
            SwitchoverFailed(
                cluster="main",
                source=FAILOVER,
                kind=FailoverKind.SWITCHOVER,
                target="node1",
                reason="node1 is already the primary",
                correlation_id=request.correlation_id,
            )
        ]

    answers["switchover.requested"] = refuse
    resp = app.post("/clusters/main/switchover", json={"reason": "x", "target": "node1"})
    assert resp.status_code == 409
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    assert body["detail"] == body["reason"] == "node1 is already the primary"
    assert body["operation"]["state"] == "refused"
    refused = api.operate("switchover", "main", reason="x", target="node1")
    assert isinstance(refused, OperationRefused)
    assert refused.reason == "node1 is already the primary"

    # No answer: 202 pending; an answer without a correlation id still finds its operation.
    started = datetime.now(UTC)
    resp = app.post("/clusters/main/failover", json={"reason": "x", "wait_seconds": 0})
    assert resp.status_code == 202
    view = resp.json()
    assert view["state"] == "pending"
    late = FailoverCompleted(
        cluster="main",
        source=FAILOVER,
        kind=FailoverKind.MANUAL,
        old_primary="node1",
        new_primary="node2",
        reason="x",
        total_seconds=1.5,
        occurred_at=started + timedelta(seconds=1),
    )
    projection(app).apply(Stored("events", 10**6, late.subject(), late))
    assert app.get(f"/operations/{view['id']}").json()["state"] == "completed"
    timed = app.get(f"/operations/{view['id']}", params={"wait": 0.1})
    assert timed.status_code == 200

    rejoin = app.post("/clusters/main/nodes/node1/rejoin")
    assert rejoin.status_code == 202
    assert rejoin.json()["kind"] == "rejoin"
    assert rejoin.json()["target"] == "node1"


def test_operations_are_rebuilt_from_the_history_alone() -> None:
    p = Projection()
    request = NodeRejoinRequested(cluster="main", node="node3", source=MONITOR, requested_by="a")
    p.apply(Stored("events", 1, request.subject(), request))
    other = NodeRejoined(
        cluster="main", node="node2", source=FAILOVER, method="pg_rewind", upstream="node1"
    )
    p.apply(Stored("events", 2, other.subject(), other))
    assert p.operations[request.event_id].state == "pending"
    mine = other.model_copy(update={"node": "node3", "event_id": request.event_id})
    p.apply(Stored("events", 3, mine.subject(), mine))
    assert p.operations[request.event_id].state == "completed"
    p.apply(Stored("events", 3, mine.subject(), mine))  # a repeat is ignored
    assert len(p.events) == 3


def _fill_history(p: Projection) -> list[Envelope]:
    now = datetime.now(UTC)
    events: list[Envelope] = []
    for i in range(30):
        events.append(
            FailoverRequested(
                cluster="main",
                source=MONITOR,
                reason=f"r{i}",
                occurred_at=now - timedelta(minutes=30 - i),
            )
        )
    events.append(NodeDown(cluster="main", node="node1", source=MONITOR, reason="gone"))
    events.append(
        FailoverCompleted(
            cluster="main",
            source=FAILOVER,
            kind=FailoverKind.AUTOMATIC,
            old_primary="node1",
            new_primary="node2",
            reason="x",
            total_seconds=4.0,
        )
    )
    backup: dict[str, Any] = {"cluster": "main", "source": FAILOVER}
    events.append(
        BackupCompleted(
            **backup,
            backup_id="b1",
            kind="physical",
            node="node2",
            size_bytes=100,
            duration_seconds=3,
            manifest_key="k",
            sha256="ab" * 32,
        )
    )
    events.append(BackupFailed(**backup, kind="logical", reason="pg_dump exited 1"))
    events.append(
        BackupVerified(**backup, backup_id="b1", ok=True, detail="ok", restore_seconds=12.5)
    )
    for seq, e in enumerate(events, 1):
        p.apply(Stored("events", seq, e.subject(), e))
    return events


def test_history_pages_by_sequence_and_filters_by_kind_and_time(app: TestClient) -> None:
    _fill_history(projection(app))
    first = app.get("/clusters/main/history", params={"limit": 10}).json()
    assert [e["seq"] for e in first["events"]] == [*range(22, 31), 32]
    assert first["last_seq"] == 35
    before = app.get(
        "/clusters/main/history", params={"limit": 10, "before": first["next_before"]}
    ).json()
    assert [e["seq"] for e in before["events"]] == list(range(12, 22))
    kinds = app.get(
        "/clusters/main/history", params={"kind": ["backup.failed", "node.down"]}
    ).json()
    assert [e["event"]["type"] for e in kinds["events"]] == ["node.down", "backup.failed"]
    recent = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    times = app.get("/clusters/main/history", params={"since": recent}).json()
    assert [e["event"].get("reason") for e in times["events"]][:3] == ["r26", "r27", "r28"]
    after = app.get("/clusters/main/history", params={"after": 33, "all_kinds": True}).json()
    assert [e["seq"] for e in after["events"]] == [34, 35]


def test_exposure_and_sla_come_from_the_projection(app: TestClient, api: GatewayClient) -> None:
    p = projection(app)
    _fill_history(p)
    p.reports.add(
        health(
            "node1",
            Role.PRIMARY,
            writable=True,
            replicas=(ReplicaState(name="node2", state="streaming", sync_state="sync"),),
        )
    )
    p.reports.add(
        health("node2", Role.STANDBY, wal_receiver="streaming", lag_bytes=4096, lag_seconds=0.2)
    )
    wal = WalStatus(cluster="main", source=FAILOVER, state=WalState.STREAMING, lag_seconds=3.0)
    p.apply(Stored("heartbeats", 1, wal.subject(), wal))
    e = api.exposure("main")
    assert (e.primary, e.synchronous_mode, e.rpo_bytes) == ("node1", True, 0)
    assert e.standbys[0].node == "node2"
    assert e.standbys[0].lag_bytes == 4096
    assert e.wal_archive_lag_seconds == 3.0
    assert (e.last_backup_id, e.last_verified_backup_id, e.restore_seconds) == ("b1", "b1", 12.5)

    s = api.sla("main", days=30)
    assert [(f.kind, f.new_primary) for f in s.failovers] == [("automatic", "node2")]
    assert s.downtime_seconds >= 4.0
    assert 0.99 < s.availability < 1
    assert (s.backups_completed, s.backups_failed, s.backup_success_rate) == (1, 1, 0.5)
    assert s.verification_success_rate == 1.0


def test_pause_shows_in_status_and_metrics(app: TestClient, api: GatewayClient) -> None:
    p = projection(app)
    from lifeboat.common.events import MaintenanceState

    p.set_maintenance("main", MaintenanceState(cluster="main", paused=True, reason="kernel"))
    status = api.cluster("main")
    assert status.paused is True
    assert status.maintenance is not None
    assert [c.paused for c in api.clusters()] == [True]
    p.reports.add(health("node1", Role.PRIMARY, writable=True))
    text = app.get("/metrics").text
    assert 'lifeboat_cluster_paused{cluster="main"} 1.0' in text
    assert 'lifeboat_node_up{cluster="main",node="node1"} 1.0' in text
    assert 'lifeboat_node_role{cluster="main",node="node1",role="primary"} 1.0' in text
    assert "lifeboat_http_request_duration_seconds_bucket" in text
    for name in ("lifeboat_service_info", "lifeboat_event_consumer_lag_seconds"):
        assert name in text
    # Counters start at 0 for every cluster: increase() sees the first failover and fence.
    assert 'lifeboat_fences_total{cluster="main"} 0.0' in text
    for kind in ("automatic", "manual", "switchover"):
        assert f'lifeboat_failovers_total{{cluster="main",kind="{kind}"}} 0.0' in text
    _fill_history(p)
    text = app.get("/metrics").text
    for name in NAMES:
        if name not in ("lifeboat_wal_archive_lag_seconds", "lifeboat_wal_archive_lag_bytes"):
            if name == "lifeboat_filesync_last_sync_age_seconds":
                continue
            assert name in text, name


def test_subjects_match_like_nats_and_pick_their_stream() -> None:
    assert subject_matches(">", "node.health.main.node1")
    assert subject_matches("node.health.*.node1", "node.health.main.node1")
    assert not subject_matches("node.health.*", "node.health.main.node1")
    assert subject_matches("node.health.>", "node.health.main.node1")
    assert not subject_matches("node.health.main.>", "node.health.main")
    assert stream_of("node.health.>") == "heartbeats"
    assert stream_of("wal.status.main") == "heartbeats"
    assert stream_of("failover.>") == "events"
    assert stream_of(">") == "events"


def test_events_are_decoded_into_their_models() -> None:
    event = NodeRejoined(
        cluster="main", node="node1", source=FAILOVER, method="pg_rewind", upstream="node2"
    )
    decoded = decode_event(event.model_dump_json().encode())
    assert decoded == event
    for bad in (b"not json", b"[]", b'{"type": "no.such"}', b'{"type": "node.rejoined"}'):
        with pytest.raises(UndecodableEventError):
            decode_event(bad)


def test_cli_settings_read_the_token_from_env_file_or_the_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("LIFEBOAT_TOKEN", "LIFEBOAT_TOKEN_FILE", "LIFEBOAT_STACK_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LIFEBOAT_CLI_CONFIG", str(tmp_path / "none.toml"))
    assert CliSettings().resolve_token() is None
    stack = tmp_path / ".lifeboat" / "secrets"
    stack.mkdir(parents=True)
    (stack / "lifeboat_token").write_text("from-the-stack\n")
    assert CliSettings().resolve_token() == "from-the-stack"
    (tmp_path / "t").write_text("from-a-file")
    monkeypatch.setenv("LIFEBOAT_TOKEN_FILE", str(tmp_path / "t"))
    assert CliSettings().resolve_token() == "from-a-file"
    monkeypatch.setenv("LIFEBOAT_TOKEN", "from-env")
    assert CliSettings().resolve_token() == "from-env"
    config = tmp_path / "cli.toml"
    config.write_text('gateway_url = "http://gw.example:9000"\n')
    monkeypatch.setenv("LIFEBOAT_CLI_CONFIG", str(config))
    assert CliSettings().gateway_url == "http://gw.example:9000"
    monkeypatch.setenv("LIFEBOAT_GATEWAY_URL", "http://env:1")
    assert CliSettings().gateway_url == "http://env:1"


def test_the_admin_token_file_is_created_once_and_grants_admin(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "lifeboat_token"
    clusters = tmp_path / "clusters.yaml"
    clusters.write_text(dump_clusters(ClustersFile(clusters=(SPEC,))))
    book = TokenBook.from_settings(GatewaySettings(clusters_file=clusters, admin_token_file=path))
    token = path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600
    principal = book.check(token)
    assert principal is not None
    assert principal.role is TokenRole.ADMIN
    again = TokenBook.from_settings(GatewaySettings(clusters_file=clusters, admin_token_file=path))
    assert path.read_text() == token
    assert again.check(token) is not None


def test_the_gateway_neither_imports_the_dev_stack_nor_reads_the_environment() -> None:
    for path in (ROOT / "services" / "gateway" / "src").rglob("*.py"):
        text = path.read_text()
        assert "lifeboat.devstack" not in text, path
        assert "os.environ" not in text, path
        assert "getenv" not in text, path


def test_the_fast_path_answers_what_the_route_answers(tmp_path: Path, app: TestClient) -> None:
    projection(app).reports.add(health("node1", Role.PRIMARY, writable=True))
    fast = app.get("/clusters/main")
    routed = app.get("/clusters/main", params={"via": "route"})  # a query: FastAPI answers
    assert fast.status_code == routed.status_code == 200
    assert fast.json() == routed.json()
    assert fast.headers["content-type"] == "application/json"
    assert app.get("/clusters/nope").status_code == 404  # passed on: a problem
    public = make_app(tmp_path, {}, http_host="0.0.0.0")
    assert public.get("/clusters/main").status_code == 401
    assert public.get("/clusters/main", headers={"Authorization": "Bearer no"}).status_code == 401
    assert public.get("/clusters/main", headers=auth("reader")).status_code == 200
    text = app.get("/metrics").text
    assert 'route="/clusters/{cluster}",status="200"' in text


def test_authentication_comes_before_anything_about_the_cluster(app: TestClient) -> None:
    for path in ("/clusters/nope/switchover", "/clusters/nope/pause", "/clusters/main/failover"):
        assert app.post(path, json={"reason": ""}).status_code == 401, path
    assert app.post("/clusters/main/nodes/nope/rejoin").status_code == 401
