"""The README is the front page: short, and its module table lists every module there is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PACKAGES = sorted(p for p in ROOT.glob("*/*/src/lifeboat/*") if p.is_dir())


def _row(package: Path) -> str:
    member = package.relative_to(ROOT).parts[:2]
    label = f"| `{'/'.join(member)}`"
    rows = [line for line in README.splitlines() if line.startswith(label)]
    assert rows, f"the README's module table has no row for {'/'.join(member)}"
    return rows[0]


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_the_module_table_lists_every_module(package: Path) -> None:
    row = _row(package)
    modules = {
        str(m.relative_to(package).with_suffix(""))
        for m in package.rglob("*.py")
        if m.name != "__init__.py"
    }
    named = set(re.findall(r"`([\w/]+)`", row))
    missing = {m for m in modules if m not in named and m.split("/")[0] + "/" not in named}
    assert not missing, f"{package.name}: the README's module table does not name {sorted(missing)}"


def test_the_readme_is_a_front_page() -> None:
    assert len(README.splitlines()) <= 200
    for doc in ("failover", "configuration", "architecture", "benchmarks", "operations"):
        assert f"(docs/{doc}.md)" in README
        assert (ROOT / "docs" / f"{doc}.md").exists()
