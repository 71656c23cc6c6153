"""The code style the project holds itself to: ruff-clean, formatted, mypy --strict clean,
and the boundaries between packages (import-linter contracts in pyproject.toml)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "argv",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy", "libs", "services", "tests", "bench"],
        ["lint-imports"],
    ],
    ids=["ruff", "ruff-format", "mypy", "import-contracts"],
)
def test_clean(argv: list[str]) -> None:
    result = subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


SERVICES = ("monitor", "failover", "backup", "filesync", "gateway")
# What benchmarks and the dev stack may import of a service: its package (whose __init__
# names its entry points), its settings and the gateway's API client.
# A service's settings model is public too: it is its configuration.
PUBLIC = {f"lifeboat.{s}" for s in SERVICES} | {f"lifeboat.{s}.settings" for s in SERVICES}
PUBLIC |= {"lifeboat.gateway.client"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_bench_and_devstack_use_only_public_entry_points() -> None:
    files = [*(ROOT / "bench").glob("*.py"), *(ROOT / "libs/devstack/src").rglob("*.py")]
    private = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in files
        for module in _imports(path)
        if module.split(".")[:2] in (["lifeboat", s] for s in SERVICES) and module not in PUBLIC
    }
    assert not private, sorted(private)
