"""`lifeboat-stack drill`: where it finds the stack, and what it says when there is none.
(The drills themselves run against a real stack: `bench/failover.py`.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from lifeboat.common.clusters import ClustersFile, ClusterSpec, NodeSpec, dump_clusters
from lifeboat.devstack.__main__ import main
from lifeboat.devstack.drill import SCENARIOS, DrillSettings

SPEC = ClusterSpec(name="main", nodes=(NodeSpec(name="node1", host="127.0.0.1"),))


@pytest.fixture
def stack_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("CLUSTERS_FILE", "PG_PASSWORD", "PG_PASSWORD_FILE", "GATEWAY_URL"):
        monkeypatch.delenv(f"LIFEBOAT_{name}", raising=False)
    monkeypatch.setenv("LIFEBOAT_STACK_DIR", str(tmp_path))
    return tmp_path


def test_the_drill_reads_the_stack_make_up_runs(stack_dir: Path) -> None:
    (stack_dir / "secrets").mkdir()
    (stack_dir / "secrets" / "pg_password").write_text("s3cret\n")
    (stack_dir / "clusters.yaml").write_text(dump_clusters(ClustersFile(clusters=(SPEC,))))
    settings = DrillSettings()
    assert settings.postgres_password() == "s3cret"
    assert settings.cluster("main").nodes[0].name == "node1"
    assert settings.gateway_url == "http://127.0.0.1:8000"
    given = DrillSettings(pg_password=SecretStr("direct"))
    assert given.postgres_password() == "direct"


def test_without_a_stack_the_drill_says_so(
    stack_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["drill", "kill-primary"]) == 2
    err = capsys.readouterr().err
    assert "cannot read cluster file" in err
    assert "make up" in err


def test_the_drill_scenarios_are_on_the_stack_command_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["drill", "--help"])
    out = capsys.readouterr().out
    assert all(s in out for s in SCENARIOS)
    assert "--runs" in out
