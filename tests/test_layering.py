"""The import graph keeps its floors: every import runs down, and no module circles back.

The floors, lowest first (docs/architecture.md draws them):

    conf                       config loader, YAML, prompt templates, choice lists
    rewards, synth             pure functions and data
    model_inputs               model inputs from a sample (prompts, image sizes, token ids)
    weight_sync                weights learner -> receivers, both ends
    actors, learner            the shells around vLLM and DeepSpeed
    cluster                    connect, check resources, place and start the roles
    evals                      evaluation procedures and metrics
    driver                     the training loop's parts
    launch, benchmarks, scripts

A package may import its own modules and those of lower floors, never a package beside it
or above it. Imports inside functions and under TYPE_CHECKING count: a lazy import is
still an arrow. The graph is read from the source with `ast`, so the test needs nothing
installed.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

FLOORS = [("conf",), ("rewards", "synth"), ("model_inputs",), ("weight_sync",),
          ("actors", "learner"), ("cluster",), ("evals",), ("driver",),
          ("launch", "benchmarks", "scripts")]
FLOOR = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}
SKIP = (".venv", "tests", ".cache", "outputs", "build", "dist")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    """Every module of the project (tests and build outputs aside), by dotted name."""
    out = {}
    for path in REPO.rglob("*.py"):
        rel = path.relative_to(REPO)
        if rel.parts[0].startswith(".") or rel.parts[0] in SKIP:
            continue
        out[_module_name(path)] = path
    return out


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                wanted = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from pkg import sub` imports the module pkg.sub; `from pkg import name`
                # the package itself.
                wanted = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                          else node.module for a in node.names]
            else:
                continue
            for target in wanted:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def _room(module: str) -> str:
    return module.split(".")[0]


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a package beside or above the importer's floor."""
    bad = []
    for source, targets in graph.items():
        for target in targets:
            a, b = _room(source), _room(target)
            if a != b and FLOOR[b] >= FLOOR[a]:
                bad.append(f"{source} -> {target} ({a} floor {FLOOR[a]}, {b} floor {FLOOR[b]})")
    return sorted(bad)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_package_has_a_floor():
    rooms = {_room(m) for m in project_modules()}
    assert rooms - set(FLOOR) == set(), "add the new package to FLOORS (and the docs)"


def test_imports_only_run_down():
    assert upward_arrows(import_graph(project_modules())) == []


def test_no_module_imports_itself_round_a_circle():
    assert circles(import_graph(project_modules())) == []


def test_the_checks_catch_what_they_look_for():
    # Hand-made graphs: an arrow up from conf, one sideways between actors and learner,
    # and a two-module circle inside one package.
    graph = {"conf.loader": {"rewards.advantages"}, "rewards.advantages": set(),
             "actors.x": {"learner.y"}, "learner.y": set(),
             "driver.a": {"driver.b"}, "driver.b": {"driver.a"}}
    assert len(upward_arrows(graph)) == 2
    assert circles(graph) == [["driver.a", "driver.b"]]
