"""The shipped Prometheus alert rules load, and every expression names metrics Lifeboat
exports (promtool is not available here: the file is parsed and checked by hand), and every
service's runtime serves `/metrics`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import yaml

from lifeboat.common.metrics import ServiceMetrics
from lifeboat.common.runtime import ServiceRuntime
from lifeboat.common.settings import ServiceSettings
from lifeboat.gateway.metrics import NAMES

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
COMMON = {"lifeboat_service_info", "lifeboat_breaker_state", "lifeboat_breaker_failures"}
# What a counter or histogram is scraped as.
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")
PROMQL_WORDS = {"sum", "by", "min", "max", "increase", "rate", "histogram_quantile", "le"}


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _exported(name: str) -> bool:
    known = set(NAMES) | COMMON
    return name in known or any(
        name.endswith(s)
        and name.removesuffix(s) in known | {n.removesuffix("_total") for n in known}
        for s in SUFFIXES
    )


def test_the_rules_load_and_name_real_metrics() -> None:
    rules = _rules()
    names = {r["alert"] for r in rules}
    for wanted in (
        "LifeboatReplicationLagWarning",
        "LifeboatReplicationLagCritical",
        "LifeboatNoRecentBackup",
        "LifeboatWalArchiveLag",
        "LifeboatFailoverHappened",
        "LifeboatBreakerOpen",
    ):
        assert wanted in names
    groups = yaml.safe_load(RULES.read_text())["groups"]
    assert len({g["name"] for g in groups}) == len(groups)
    assert len(names) == len(rules), "an alert name twice"
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"]), rule["alert"]
        if "for" in rule:  # a Prometheus duration
            assert re.fullmatch(r"([0-9]+(ms|s|m|h|d|w|y))+", str(rule["for"])), rule
        assert all(isinstance(v, str) for v in rule["annotations"].values()), rule
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        expr = str(rule["expr"])
        assert expr.count("(") == expr.count(")"), expr
        metrics = set(re.findall(r"\blifeboat_[a-z_]+", expr))
        assert metrics, f"{rule['alert']} names no Lifeboat metric"
        for metric in metrics:
            assert _exported(metric), f"{rule['alert']}: {metric} is not exported"
    thresholds = {r["alert"]: str(r["expr"]) for r in rules}
    assert thresholds["LifeboatReplicationLagWarning"].endswith("> 30")
    assert thresholds["LifeboatReplicationLagCritical"].endswith("> 120")
    assert "26 * 3600" in thresholds["LifeboatNoRecentBackup"]


async def test_every_service_runtime_serves_metrics(tmp_path: Path) -> None:
    settings = ServiceSettings(clusters_file=tmp_path / "none.yaml")
    runtime = ServiceRuntime("backup", settings)
    async with runtime.breakers.guard("s3"):
        pass
    app = runtime.asgi_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://x") as c:
        resp = await c.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    assert 'lifeboat_breaker_state{breaker="s3",service="backup"} 0.0' in resp.text
    assert "lifeboat_service_info" in resp.text
    assert isinstance(runtime.metrics, ServiceMetrics)
