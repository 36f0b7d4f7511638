"""The package's import graph: layers import strictly downward and no tqsnap modules form a cycle.

Layers, top to bottom: faces -> adapters -> engine -> format -> store. ``tqsnap.errors`` sits
below them all (every layer raises its errors) and imports nothing of tqsnap. The package root
and the ``tqsnap.tq`` / ``tqsnap.dcp`` shims are the public face, so they count as faces.

The graph is read from the source with ``ast`` rather than from ``sys.modules``, so an import
inside a function (a lazy import) counts as much as one at the top: it still breaks at runtime
when the layer below changes.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tqsnap

PACKAGE_DIR = Path(tqsnap.__file__).parent

#: Rank of each layer: a module may import its own rank or lower, never higher.
LAYER_RANK = {"errors": 0, "store": 1, "format": 2, "engine": 3, "adapters": 4, "testing": 5, "faces": 6}

#: Top-level modules that are not in a layer package, and the layer they belong to.
TOP_LEVEL = {
    "tqsnap": "faces",
    "tqsnap.__main__": "faces",
    "tqsnap.tq": "faces",
    "tqsnap.dcp": "faces",
    "tqsnap.hyper_parallel": "faces",
    "tqsnap.job": "faces",
    "tqsnap.errors": "errors",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _all_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


MODULES = _all_modules()


def layer_of(module: str) -> str:
    if module in TOP_LEVEL:
        return TOP_LEVEL[module]
    part = module.split(".")[1]
    if part not in LAYER_RANK:
        raise AssertionError(
            f"{module} is in no known layer; add tqsnap.{part} to LAYER_RANK in tests/test_layers.py"
        )
    return part


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``from X import ...`` names (relative forms resolved)."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> set[str]:
    """Every tqsnap module ``module`` imports, at top level or inside functions.

    ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module (it is
    what gets loaded), else of ``pkg``.
    """
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path.name == "__init__.py", node)
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names]
        else:
            continue
        for name in names:
            # `import tqsnap.store.s3` names the deepest module that exists
            while name and name not in MODULES and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in MODULES and name != module:
                found.add(name)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def upward_imports() -> list[str]:
    bad = []
    for module, targets in GRAPH.items():
        rank = LAYER_RANK[layer_of(module)]
        for target in sorted(targets):
            if LAYER_RANK[layer_of(target)] > rank:
                bad.append(f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})")
    return bad


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_every_module_is_in_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


def test_no_module_imports_a_higher_layer() -> None:
    assert upward_imports() == []


def test_no_import_cycle_between_tqsnap_modules() -> None:
    assert import_cycles(GRAPH) == []


def test_errors_import_nothing_of_tqsnap() -> None:
    assert GRAPH["tqsnap.errors"] == set()


@pytest.mark.parametrize(
    ("graph", "expect_cycle"),
    [({"a": {"b"}, "b": {"a"}}, True), ({"a": {"b"}, "b": {"c"}, "c": set()}, False)],
)
def test_the_cycle_finder_finds_cycles(graph: dict[str, set[str]], expect_cycle: bool) -> None:
    """The check above would be worthless if the finder could not see a cycle."""
    assert bool(import_cycles(graph)) is expect_cycle


def test_the_import_reader_sees_lazy_and_relative_imports() -> None:
    """A function-level import must count, or lazy imports would hide cycles."""
    assert "tqsnap.faces.demo" in GRAPH["tqsnap.faces.cli_tq"]  # imported inside register()
    assert "tqsnap.errors" in GRAPH["tqsnap.faces.cli_errors"]  # `from .. import errors`


def test_importing_tqsnap_or_its_command_loads_neither_torch_nor_ray() -> None:
    """``import tqsnap`` and ``tqsnap --help`` stay fast: the heavy adapters load on first use,
    and numpy only when a columnar manifest body is read or written."""
    code = (
        "import sys, tqsnap, tqsnap.faces.cli, tqsnap.faces.scheduler; "
        "print(sorted(m for m in ('torch', 'ray', 'transfer_queue', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_gc_and_check_in_a_process_without_ray_do_not_import_it(tmp_path: Path) -> None:
    """The sweep's executor defaults to Ray only where Ray runs; finding out must not import it."""
    code = (
        "import sys; from tqsnap.engine import Repository; from tqsnap.engine.gc import GarbageCollector; "
        "from tqsnap.engine.check import check_repository; "
        f"repo = Repository.init({str(tmp_path / 'repo')!r}); "
        "GarbageCollector(repo, dry_run=True).run(); check_repository(repo); "
        "print(sorted(m for m in ('torch', 'ray', 'transfer_queue') if m in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_tqsnap_tq_is_the_faces_module_under_its_short_name() -> None:
    text = (PACKAGE_DIR / "tq.py").read_text()
    tree = ast.parse(text)
    code = [n for n in tree.body if not isinstance(n, ast.Expr | ast.ImportFrom | ast.Assign)]
    assert code == [], "tqsnap/tq.py only re-exports tqsnap.faces.tq"
    assert GRAPH["tqsnap.tq"] == {"tqsnap.faces.tq"}
