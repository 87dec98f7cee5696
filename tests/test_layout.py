"""The package layout: one top-level package, imports that point down the layers, no import circles,
and every subpackage listed for the wheel."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"synthehr": "synthehr", "agent": "synthehr.agent", "tools": "synthehr.tools",
           "configs": "synthehr.configs", "knowledge": "synthehr.knowledge"}
# Higher may import lower or equal; see DESIGN "Layers and layout".
RANKS = [
    (6, ("synthehr.agent.cli", "synthehr.agent.web", "synthehr.agent.surface")),  # faces
    (5, ("synthehr.agent",)),  # agent loop
    (4, ("synthehr.agent.llm",)),  # LLM layer
    (3, ("synthehr.tools",)),  # tool specs
    (2, ("synthehr.tools.engines",)),  # engines
    (1, ("synthehr.tools.store",)),  # storage
    (0, ("synthehr.errors", "synthehr.progress", "synthehr.configs", "synthehr.knowledge")),  # data and kernel
]
FACADE = {"synthehr", "synthehr.__main__"}  # the root re-exports the faces lazily


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, pkg in FOLDERS.items():
        for p in (ROOT / folder).rglob("*.py"):
            parts = list(p.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([pkg, *parts])] = p
    return mods


def _rank(mod: str) -> int:
    best = (-1, None)
    for rank, prefixes in RANKS:
        for pre in prefixes:
            if (mod == pre or mod.startswith(pre + ".")) and len(pre) > best[0]:
                best = (len(pre), rank)
    assert best[1] is not None, f"{mod} is in no layer"
    return best[1]


def _imports(path: Path, mods: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(module-level imports, all imports) of synthehr modules, leaving out `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text())
    top: set[str] = set()
    every: set[str] = set()

    def visit(node: ast.AST, level_top: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for n in node.orelse:
                visit(n, level_top)
            return
        found: set[str] = set()
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "synthehr":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "synthehr"}
        found = {m for m in found if m in mods}
        every.update(found)
        if level_top:
            top.update(found)
        for child in ast.iter_child_nodes(node):
            visit(child, level_top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, True)
    return top, every


def test_imports_point_down_and_never_in_circles() -> None:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    upward = []
    for name, path in mods.items():
        top, every = _imports(path, mods)
        parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = {m for m in top if m != name and m not in parents}
        if name in FACADE:
            continue
        for m in every:
            if m not in parents and m != name and _rank(m) > _rank(name):
                upward.append(f"{name} -> {m}")
    assert not upward, "imports pointing up a layer: " + "; ".join(sorted(upward))
    # no circles among module-level imports (depth-first search)
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if m not in state:
                dfs(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            dfs(n)


def test_every_subpackage_is_listed_for_the_wheel() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {name for name, p in _modules().items() if p.name == "__init__.py"}
    assert found == listed


def test_every_folder_says_what_lives_there() -> None:
    for name, p in _modules().items():
        if p.name == "__init__.py":
            doc = ast.get_docstring(ast.parse(p.read_text()))
            assert doc and len(doc) > 20, f"{p} needs a one-sentence docstring"


def test_only_synthehr_is_importable_from_elsewhere(tmp_path: Path) -> None:
    code = ("import importlib.util, synthehr, synthehr.agent.cli.main\n"
            "print([n for n in ('agent', 'tools', 'knowledge', 'configs') if importlib.util.find_spec(n)])")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as an installed user would run it
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
