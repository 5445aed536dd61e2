"""The package's modules import each other without a circle: every import, including those inside
functions, read from the source (a circle held together by function-level imports is still one)."""

import ast
import os

import nlhf_jax

ROOT = os.path.dirname(nlhf_jax.__file__)


def _modules() -> dict[str, str]:
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                found[rel.removesuffix(".__init__")] = path
    return found


def _imports(path: str, modules) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in modules}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]


def test_no_import_cycles():
    modules = _modules()
    assert "nlhf_jax.train.step" in modules
    edges = {m: _imports(p, modules) for m, p in modules.items()}
    assert _cycles(edges) == []


def test_nothing_below_the_pipelines_imports_them():
    """The tiers (``nlhf_jax.pipelines``' docstring): pipelines run trainers and nothing else
    imports a pipeline, not even ``python -m nlhf_jax.train``, which finds them through the
    package's entry points."""
    modules = _modules()
    assert "nlhf_jax.train.__main__" in modules and "nlhf_jax.pipelines.demo" in modules
    upward = {
        m: sorted(i for i in _imports(p, modules) if i.startswith("nlhf_jax.pipelines"))
        for m, p in modules.items()
        if not m.startswith("nlhf_jax.pipelines")
    }
    assert {m: found for m, found in upward.items() if found} == {}


def test_the_entry_points_are_the_pipelines_and_the_demos_config():
    """setup.py's entry points name every pipeline of ``PIPELINES`` and the demo's config, so a
    pipeline added there and not in setup.py (or the reverse) fails here, not in a user's run."""
    from importlib import metadata

    from nlhf_jax.pipelines import PIPELINES
    from nlhf_jax.pipelines.configs import demo_config

    found = {e.name: e.load() for e in metadata.entry_points(group="nlhf_jax.pipelines")}
    assert found == PIPELINES
    (default,) = metadata.entry_points(group="nlhf_jax.default_config")
    assert default.name == "demo" and default.load() is demo_config
