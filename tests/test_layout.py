"""The code's shape, checked: strict layering of the packages and size limits.

Layers, each importing only those below it: `cost` < `planner` < `exporters` < `runners`
(`runners.cli`, the command line, is the one place that imports everything, and it sits
in the top layer). Inside `planner` the data path is layered too (`PLANNER_PATH`): graph ->
partition -> schedule -> plan file -> simulate -> sources -> assemble -> api -> whatif. Every `import` and `from ... import`
statement is read from the source (AST), function-level imports included, so a lazy
import cannot hide a back-edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cost", "planner", "exporters", "runners")
MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 120

#: The planner's data path, in order: each group may import `cost` and the groups before it.
PLANNER_PATH = (
    "planner.fmt",
    "planner.config",
    "planner.graph",
    "planner.partition",
    "planner.schedule",
    "planner.plan_file",
    "planner.simulate",
    "planner.sources",
    "planner.assemble",
    "planner.parallel",
    "planner.api",
    "planner.whatif",
)

#: group -> the groups it may import (itself always allowed). A module's group is the
#: longest key that prefixes its dotted name.
ALLOWED: dict[str, set[str]] = {
    "cost": set(),
    **{group: {"cost", *PLANNER_PATH[:i]} for i, group in enumerate(PLANNER_PATH)},
    "planner": {"cost"},  # planner/__init__.py (its exports are lazy, by name)
    "exporters": {"cost", "planner"},
    "runners": {"cost", "planner", "exporters"},
}


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _dotted(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _group(name: str) -> str:
    matches = [g for g in ALLOWED if name == g or name.startswith(g + ".")]
    return max(matches, key=len)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import of our own packages in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.split(".")[0] in PACKAGES]


def _allows(source: str, target: str) -> bool:
    group = _group(source)
    if target == group or target.startswith(group + "."):
        return True
    return any(target == g or target.startswith(g + ".") for g in ALLOWED[group])


def test_every_import_respects_the_layers():
    broken = []
    for path in _modules():
        source = _dotted(path)
        for line, target in _imports(path):
            if not _allows(source, target):
                broken.append(
                    f"{path.relative_to(ROOT)}:{line} ({_group(source)}) imports {target}"
                )
    assert not broken, "back-imports:\n" + "\n".join(broken)


def test_the_layering_check_catches_a_back_import(tmp_path):
    assert not _allows("cost.devices", "planner.errors")
    assert not _allows("planner.graph.load", "planner.partition.problem")
    assert not _allows("planner.partition.ilp.solve", "planner.simulate.engine")
    assert not _allows("exporters.bundle", "runners.launch")
    assert not _allows("planner.api", "runners.cli.app")
    assert _allows("runners.cli.app", "planner.whatif.analysis")
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    from runners.launch import run\n")
    assert _imports(fake) == [(2, "runners.launch")]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_functions_stay_small(path):
    text = path.read_text(encoding="utf-8")
    lines = len(text.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{lines} lines (limit {MAX_MODULE_LINES})"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def test_planner_has_few_top_level_modules():
    top = sorted(p.name for p in (ROOT / "planner").glob("*.py"))
    assert len(top) <= 10, top


def test_planner_exports_resolve_lazily_without_torch():
    import subprocess
    import sys

    code = (
        "import sys, planner\n"
        "assert 'planner.api' not in sys.modules\n"
        "for name in planner.__all__:\n"
        "    getattr(planner, name)\n"
        "from planner import plan, PlanConfig, ShapeBindings, inspect_model, simulate_plan\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
