"""Settings, the cluster description file, secrets and redaction."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from pydantic import SecretStr

from lifeboat.common.clusters import ClusterFileError, load_clusters
from lifeboat.common.log import configure_logging
from lifeboat.common.redact import Dsn, redact
from lifeboat.common.secrets import MissingSecretError
from lifeboat.common.settings import ServiceSettings

CLUSTERS = """
clusters:
  - name: main
    database: app
    nodes:
      - {name: node1, host: 127.0.0.1, port: 55432, priority: 100, location: dc1}
      - {name: node2, host: 127.0.0.1, port: 55433, priority: 90, tags: [nofailover]}
"""


def test_cluster_file_loads(tmp_path: Path) -> None:
    f = tmp_path / "clusters.yaml"
    f.write_text(CLUSTERS)
    cluster = load_clusters(f).cluster("main")
    assert [n.name for n in cluster.nodes] == ["node1", "node2"]
    assert cluster.node("node1").location == "dc1"
    assert not cluster.node("node2").can_be_promoted
    assert cluster.client_dsn() == (
        "postgresql://127.0.0.1:55432,127.0.0.1:55433/app?target_session_attrs=read-write"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("clusters: [", "not valid YAML"),
        ("clusters: []", "at least 1"),
        (
            "clusters: [{name: a, nodes: [{name: n1, host: h}, {name: n1, host: h}]}]",
            "more than once",
        ),
        ("clusters: [{name: 'bad.name', nodes: [{name: n1, host: h}]}]", "pattern"),
        ("clusters: [{name: a, nodes: [{name: n1, host: h, port: 0}]}]", "greater than or equal"),
        ("clusters: [{name: a, nodes: [{name: n1, host: h, colour: red}]}]", "Extra inputs"),
    ],
)
def test_cluster_file_errors_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "clusters.yaml"
    f.write_text(text)
    with pytest.raises(ClusterFileError, match=message):
        load_clusters(f)


def test_missing_cluster_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ClusterFileError, match="cannot read cluster file"):
        load_clusters(tmp_path / "absent.yaml")


def test_settings_from_env_with_prefix_and_password_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cr3t-from-file\n")
    monkeypatch.setenv("LIFEBOAT_NATS_URL", "nats://user:natspass@127.0.0.1:4222")
    monkeypatch.setenv("LIFEBOAT_PG_PASSWORD_FILE", str(pw))
    monkeypatch.setenv("LIFEBOAT_HTTP_PORT", "9999")
    settings = ServiceSettings()
    assert settings.http_port == 9999
    secret = settings.postgres_password()
    assert secret is not None
    assert secret.get_secret_value() == "s3cr3t-from-file"
    assert "s3cr3t" not in repr(settings)
    assert "natspass" not in settings.safe_nats_url()


def test_unreadable_secret_file_is_a_clear_error(tmp_path: Path) -> None:
    settings = ServiceSettings(pg_password_file=tmp_path / "nope")
    with pytest.raises(MissingSecretError, match="cannot read LIFEBOAT_PG_PASSWORD"):
        settings.postgres_password()


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("postgresql://app:hunter2@db:5432/app", "hunter2"),
        ("host=db port=5432 password=hunter2 user=app", "hunter2"),
        ("host=db password='hunter 2' user=app", "hunter 2"),
        ("nats://u:hunter2@127.0.0.1:4222", "hunter2"),
        ("connection to server failed: PASSWORD = hunter2", "hunter2"),
    ],
)
def test_redaction_masks_passwords(text: str, leak: str) -> None:
    out = redact(text)
    assert leak not in out
    assert "***" in out


def test_dsn_shows_no_password_unless_revealed(tmp_path: Path) -> None:
    f = tmp_path / "clusters.yaml"
    f.write_text(CLUSTERS)
    cluster = load_clusters(f).cluster("main")
    dsn = cluster.node_dsn(cluster.nodes[0], SecretStr("hunter2"))
    assert "hunter2" not in str(dsn)
    assert "hunter2" not in repr(dsn)
    assert "hunter2" not in f"{[dsn]}"
    assert "password=hunter2" in dsn.reveal()
    assert Dsn(dsn.reveal()) == dsn


def test_log_lines_carry_service_and_instance_and_never_a_password() -> None:
    configure_logging("backup", "backup-7", level="INFO")
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    handler.setStream(stream)  # type: ignore[attr-defined]
    logging.getLogger("x").info("connecting to %s", "postgresql://app:hunter2@db/app")
    line = stream.getvalue()
    assert "backup[backup-7]" in line
    assert "hunter2" not in line


def test_json_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    configure_logging("gateway", "g-1", fmt="json")
    stream = io.StringIO()
    logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]
    logging.getLogger("y").warning("dsn host=db password=hunter2")
    record = json.loads(stream.getvalue())
    assert record["service"] == "gateway"
    assert record["instance"] == "g-1"
    assert "hunter2" not in record["message"]


def test_committed_configuration_reference_matches_the_settings_models() -> None:
    """docs/configuration.md is generated (`make docs`): it cannot drift from the code."""
    from lifeboat.devstack.configdoc import render

    committed = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    assert committed.read_text() == render(), "docs/configuration.md is stale: run `make docs`"
