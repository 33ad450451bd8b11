"""The layers stay apart: lib never imports Prefect; tasks and flows import lib, never the reverse."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_lib_never_imports_prefect_tasks_or_flows() -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(imports(p) & {"prefect", "tasks", "flows"})
        for p in (ROOT / "lib").rglob("*.py")
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"lib/ must stay plain Python: {offenders}"
    assert len(list((ROOT / "lib").rglob("*.py"))) > 10  # the walk really saw the package


def test_tasks_never_import_flows() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "tasks").rglob("*.py") if "flows" in imports(p)]
    assert not offenders


def test_modules_stay_small() -> None:
    big = {
        str(p.relative_to(ROOT)): n
        for d in ("lib", "tasks", "flows")
        for p in (ROOT / d).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 650
    }
    assert not big, f"split these modules by responsibility: {big}"
