"""The package layout: one folder per verb, a top level of only the CLI, the user-error base and the cache paths;
imports that flow one way, from a higher layer to a lower one (lazy imports inside functions count), so no cycles;
and nothing imports the CLI."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[1] / "more_lightning"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"
TOP_LEVEL_FILES = {"__init__.py", "__main__.py", "cli.py", "errors.py", "paths.py", "progress.py", "child_server.py"}
LAYERS = [
    "errors", "paths", "progress", "child_server", "protocol", "grpo", "policy", "experts", "engines", "rewards",
    "data", "agent", "train", "ops", "demo", "cli",
]  # fmt: skip
"""The package's layers, lowest first, as ``docs/architecture.md`` lists them: a module imports only from its own
layer and lower ones. A layer is a sub-package or a top-level module (``__main__`` belongs to ``cli``)."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """Module → the package modules it imports anywhere in its code (top level or inside functions)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name and t != "more_lightning"}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first = last), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layer_of(module: str) -> str:
    """``more_lightning.data.buffer`` → ``data``; ``more_lightning.cli`` → ``cli``."""
    name = module.split(".")[1] if "." in module else "__init__"
    return "cli" if name == "__main__" else name


def upward_imports(graph: dict[str, set[str]], layers: list[str]) -> list[str]:
    """Every ``importer -> imported`` edge of ``graph`` that goes from a lower layer to a higher one."""
    rank = {name: i for i, name in enumerate(layers)}
    return sorted(
        f"{source} -> {target}"
        for source, targets in graph.items()
        for target in targets
        if rank[layer_of(target)] > rank[layer_of(source)]
    )


def _documented_layers() -> list[str]:
    """The folders and top-level files of the layout block in ``docs/architecture.md``, in order."""
    block = ARCHITECTURE.read_text().split("```\nmore_lightning/", 1)[1].split("```", 1)[0]
    names = re.findall(r"^  ([a-z_]+)(?:/|\.py)", block, re.MULTILINE)
    return ["cli" if name == "__main__" else name for name in names]


def test_imports_flow_down_the_layers():
    assert upward_imports(import_graph(), LAYERS) == [], "imports from a lower layer to a higher one"


def test_the_layer_checker_catches_an_upward_import():
    graph = {
        "more_lightning.rewards.on_policy": {"more_lightning.agent.episodes", "more_lightning.protocol.records"},
        "more_lightning.agent.episodes": {"more_lightning.rewards.on_policy"},
        "more_lightning.protocol.records": set(),
    }
    layers = ["protocol", "rewards", "agent"]
    assert upward_imports(graph, layers) == ["more_lightning.rewards.on_policy -> more_lightning.agent.episodes"]
    assert upward_imports({**graph, "more_lightning.rewards.on_policy": set()}, layers) == []


def test_every_layer_is_placed_and_documented_in_order():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    top_level = {name.removesuffix(".py") for name in TOP_LEVEL_FILES} - {"__init__", "__main__"}
    assert set(LAYERS) == folders | top_level
    assert _documented_layers() == LAYERS


def test_the_package_has_no_import_cycle():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_only_main_imports_the_cli():
    importers = {name for name, targets in import_graph().items() if "more_lightning.cli" in targets}
    assert importers == {"more_lightning.__main__"}


def test_the_top_level_holds_only_the_cli_and_the_paths_besides_the_sub_packages():
    files = {p.name for p in PACKAGE.iterdir() if p.is_file() and p.suffix == ".py"}
    assert files == TOP_LEVEL_FILES
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert {"agent", "data", "demo", "experts", "grpo", "ops", "policy", "protocol", "rewards", "train"} <= folders


def test_every_module_imports():
    for name in sorted(_modules()):
        importlib.import_module(name)


def test_each_subcommand_lives_in_its_verb_module():
    from more_lightning.cli import commands

    where = {name: function.__module__ for name, function in commands().items()}
    assert where["evaluate"] == "more_lightning.agent.evaluate"
    assert where["synthesize"] == "more_lightning.agent.synthesize"
    assert where["demo"] == "more_lightning.demo.run"
    assert all(not module.startswith("more_lightning.cli") for module in where.values())
