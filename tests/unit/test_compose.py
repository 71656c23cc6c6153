"""docker-compose.yml, checked statically: no Docker engine runs where this suite runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("monitor", "failover", "backup", "filesync", "gateway")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_file_matches_the_compose_specification() -> None:
    checker = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert checker is not None
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_rejects_an_unknown_key(tmp_path: Path) -> None:
    bad = compose()
    bad["services"]["gateway"]["restart_polcy"] = "always"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(bad))
    checker = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert checker is not None
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode != 0


def test_every_lifeboat_service_builds_from_the_workspace_and_runs_its_module() -> None:
    services = compose()["services"]
    for name in SERVICES:
        svc = services[name]
        build = svc["build"]
        context = ROOT / build["context"]
        assert context.is_dir()
        assert (context / build["dockerfile"]).is_file()
        assert build["args"]["SERVICE"] == name
        assert (ROOT / "services" / name / "pyproject.toml").is_file()
        assert svc["command"] == ["python", "-m", f"lifeboat.{name}"]
        assert (ROOT / "services" / name / "src" / "lifeboat" / name / "__main__.py").is_file()
        assert "healthcheck" in svc
        for server in ("nats-1", "nats-2", "nats-3"):
            assert svc["depends_on"][server]["condition"] == "service_healthy"
        # No service waits for one particular PostgreSQL node: any may be down at start.
        assert not any(dep.startswith("pg-") for dep in svc["depends_on"])
        assert svc["restart"] == "unless-stopped"
        env = svc["environment"]
        assert all(key.startswith("LIFEBOAT_") for key in env)
        assert env["LIFEBOAT_NATS_URL"].count("nats://") == 3
        assert env["LIFEBOAT_NATS_REPLICAS"] == "3"


def test_three_monitors_and_a_failover_that_counts_them() -> None:
    services = compose()["services"]
    monitors = [
        s for s in services.values() if s.get("command") == ["python", "-m", "lifeboat.monitor"]
    ]
    assert len({m["environment"]["LIFEBOAT_INSTANCE_ID"] for m in monitors}) == 3
    assert services["failover"]["environment"]["LIFEBOAT_MONITORS"] == "3"


def test_mounted_files_exist_and_each_postgres_node_is_its_own_agent() -> None:
    """Three PostgreSQL containers, each the agent's image running the node entrypoint:
    one marked as the cluster's first primary, every node named in the cluster file, and
    each agent told where the other two answer (failsafe)."""
    services = compose()["services"]
    for svc in services.values():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    nodes = {
        n: s
        for n, s in services.items()
        if s.get("build", {}).get("args", {}).get("SERVICE") == "agent"
    }
    assert sorted(nodes) == ["pg-node1", "pg-node2", "pg-node3"]
    first = [n for n, s in nodes.items() if s["environment"].get("LIFEBOAT_AGENT_FIRST_PRIMARY")]
    assert first == ["pg-node1"]
    clusters = yaml.safe_load((ROOT / "docker" / "clusters.yaml").read_text())
    spec = {n["name"]: n["host"] for n in clusters["clusters"][0]["nodes"]}
    for name, svc in nodes.items():
        assert svc["command"] == ["/app/docker/node/entrypoint.sh"]
        assert (ROOT / "docker" / "node" / "entrypoint.sh").is_file()
        assert svc["build"]["args"]["RUN_AS"] == "postgres"
        env = svc["environment"]
        assert spec[env["LIFEBOAT_AGENT_NODE"]] == name
        peers = json.loads(env["LIFEBOAT_AGENT_PEERS"])
        assert sorted(peers) == sorted(set(spec) - {env["LIFEBOAT_AGENT_NODE"]})
        assert not any(dep.startswith("pg-") for dep in svc["depends_on"])
