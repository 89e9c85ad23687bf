"""Imports run one way: data <- encoders <- llm <- preference/fairness <- serving; no module imports itself back."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llmrec"
LAYERS = {"data": 0, "encoders": 1, "llm": 2, "preference": 3, "fairness": 3, "serving": 4}
# The fairness definitions (groups, GP/GH/GU/MGU/DGU, the per-sample weight formula) are science every stage
# uses, like HR and NDCG: pure modules that any stage may import, as long as they themselves import nothing above
# the data layer. The fairness STAGE (re-ranking command, report) stays above the LLM stages.
SHARED_METRICS = {"llmrec.fairness.groups", "llmrec.fairness.metrics", "llmrec.fairness.weights"}


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


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_no_stage_imports_a_later_stage():
    graph = import_graph()
    assert len(graph) > 30
    backwards = [(m, t) for m, ts in graph.items() for t in ts if t not in SHARED_METRICS
                 and layer(m) is not None and layer(t) is not None and layer(t) > layer(m)]
    assert backwards == []
    for shared in SHARED_METRICS & set(graph):
        assert all(layer(t) in (None, 0) or t in SHARED_METRICS for t in graph[shared]), shared


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
