"""Imports run one way, down the pipeline: no module imports a later layer, function-level imports included.

base <- data <- evaluation (model-free) <- training <- encoders <- llm <- preference <- fairness <- serving
<- commands. Every module of the package belongs to exactly one layer; there is no allow-list.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llmrec"
ORDER = ["base", "data", "evaluation", "training", "encoders", "llm", "preference", "fairness", "serving",
         "commands"]
LAYERS = {name: rank for rank, name in enumerate(ORDER)}
TOP_LEVEL = {"llmrec": LAYERS["base"], "llmrec.__main__": LAYERS["commands"]}  # the package root and `python -m`


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every llmrec module -> the llmrec modules it imports anywhere in its file (function-level too)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llmrec"):
                for alias in node.names:  # `from llmrec.llm import backbone` imports the module llmrec.llm.backbone
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("llmrec")}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def layer(module: str) -> int:
    if module in TOP_LEVEL:
        return TOP_LEVEL[module]
    package = module.split(".")[1]
    assert package in LAYERS, f"{module} is in no layer: add its package to ORDER in this test"
    return LAYERS[package]


def test_every_module_is_in_a_layer_and_the_layers_are_packages():
    graph = import_graph()
    assert len(graph) > 80
    for module in graph:
        layer(module)
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(ORDER)


def test_no_module_imports_a_later_layer():
    graph = import_graph()
    backwards = sorted(f"{m} -> {t}" for m, ts in graph.items() for t in ts if layer(t) > layer(m))
    assert backwards == []


def test_there_is_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # a package's __init__ importing its own submodules is not a cycle worth flagging
    real = [c for c in cycles if not any(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:]))]
    assert real == []
