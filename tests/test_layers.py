"""The layer order of the design (envs -> data -> nets -> world_model -> agents -> evaluate ->
experts -> stages -> entry points; docs/pipeline.md) on the real import graph: every `import` in aime_jax/,
configs/, experiments/ and benchmarks/, at module level or inside a function, read with `ast`.
No module imports a higher layer, and no modules import each other in a cycle."""
from __future__ import annotations

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lowest first. A module belongs to the layer of the longest name here that is it or a package
# above it; "aime_jax" stands for its __init__ alone, so a new module at the top of the package
# fails the test until it is given a layer. The base layer is shared infrastructure that imports nothing above it; the entry
# points (and the config files) may import anything.
LAYERS = (
    ("base", ("aime_jax", "aime_jax.errors", "aime_jax.atomic", "aime_jax.locks", "aime_jax.hostmem",
              "aime_jax.parallel", "aime_jax.checkpoint", "aime_jax.logging")),
    ("envs", ("aime_jax.envs",)),
    ("data", ("aime_jax.data",)),
    ("nets", ("aime_jax.nets",)),
    ("world_model", ("aime_jax.world_model",)),
    ("agents", ("aime_jax.agents",)),
    ("evaluate", ("aime_jax.evaluate",)),
    ("experts", ("aime_jax.experts",)),
    ("stages", ("aime_jax.stages", "aime_jax.results", "aime_jax.reproduce", "aime_jax.report", "aime_jax.config")),
    ("entry points", ("experiments", "benchmarks", "configs")),
)
SCANNED = ("aime_jax", "experiments", "benchmarks", "configs")


def module_files(root: str = REPO) -> dict[str, str]:
    """{dotted module name: path} of every .py file under the scanned folders."""
    files = {}
    for top in SCANNED:
        for folder, _, names in os.walk(os.path.join(root, top)):
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                    files[dotted.removesuffix(".__init__")] = path
    return files


def imports_of(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The known modules `source` imports anywhere in its body (functions included): `from a
    import b` counts as a.b when that is a module, else as a."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import a.b.c` of a package folder: its nearest module
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph(root: str = REPO) -> dict[str, set[str]]:
    files = module_files(root)
    known = set(files)
    graph = {}
    for module, path in files.items():
        with open(path) as f:
            graph[module] = imports_of(f.read(), module, path.endswith("__init__.py"), known)
    return graph


def layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module.startswith(prefix + ".") and prefix != "aime_jax"
            if (module == prefix or inside) and len(prefix) > best_len:
                best, best_len = rank, len(prefix)
    return best


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """One line per import of a higher layer (or of a module placed in no layer)."""
    problems = []
    for module in sorted(graph):
        mine = layer_of(module)
        if mine is None:
            problems.append(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")
            continue
        for target in sorted(graph[module]):
            theirs = layer_of(target)
            if theirs is not None and theirs > mine:
                problems.append(f"{module} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]}), a higher layer")
    return problems


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_the_graph_sees_module_and_function_level_imports(graph):
    # A scan that missed imports would pass everything: check edges we know are there.
    assert "aime_jax.experts.sac" in graph["aime_jax.experts.build"]  # module level
    assert "aime_jax.agents.phase1" in graph["aime_jax.stages"]  # inside functions
    assert "aime_jax.stages" in graph["aime_jax.reproduce"]  # `from aime_jax import stages`
    assert "aime_jax.experts.build" in graph["experiments.datasets"]


def test_no_module_imports_a_higher_layer(graph):
    problems = upward_imports(graph)
    assert not problems, "layer order broken:\n" + "\n".join(problems)


def test_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_a_broken_graph():
    broken = {
        "aime_jax.data.collect": {"aime_jax.experts.sac", "aime_jax.envs"},
        "aime_jax.experts.sac": {"aime_jax.evaluate"},
        "aime_jax.evaluate": {"aime_jax.data.collect"},
        "aime_jax.envs": set(),
        "aime_jax.newthing": set(),
    }
    problems = upward_imports(broken)
    assert problems == [
        "aime_jax.data.collect (data) imports aime_jax.experts.sac (experts), a higher layer",
        "aime_jax.newthing is in no layer: add it to LAYERS in tests/test_layers.py",
    ]
    assert find_cycle(broken) == ["aime_jax.data.collect", "aime_jax.experts.sac", "aime_jax.evaluate",
                                  "aime_jax.data.collect"]
    assert find_cycle({k: v - {"aime_jax.data.collect"} for k, v in broken.items()}) is None


def test_imports_are_resolved_like_python_does():
    known = {"aime_jax", "aime_jax.envs", "aime_jax.envs.dmc", "aime_jax.data", "aime_jax.data.episodes"}
    source = ("from aime_jax import envs\nfrom aime_jax.data import episodes, EpisodeStore\n"
              "def f():\n    import aime_jax.envs.dmc\n    from . import episodes\n    from ..envs import make\n")
    assert imports_of(source, "aime_jax.data.store", False, known) == {
        "aime_jax.envs", "aime_jax.data.episodes", "aime_jax.data", "aime_jax.envs.dmc"}
