"""Shipped notebooks: committed stripped (no outputs), code that imports real names, and `quickstart.ipynb` executed
top to bottom with nbclient at a toy scale (its `parameters` cell replaced), so the walkthrough cannot rot.

The executed run is offline and hermetic: a toy MovieLens-100K log in the real GroupLens format is written to a
temporary folder and prepared with `download=False`, every output goes under that folder (the kernel's working
directory), and the kernel is a kernelspec written for this interpreter (`sys.executable`) under a private
`JUPYTER_PATH`, with private IPython and Jupyter runtime folders, so a user's own kernels or startup files
are never used.
"""

from __future__ import annotations

import ast
import base64
import importlib
import json
import math
import re
import sys
from pathlib import Path

import pytest
from tiny import TOY_LLAMA
from data_fixtures import write_grouplens_100k

ROOT = Path(__file__).parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
QUICKSTART = ROOT / "notebooks" / "quickstart.ipynb"

# A toy log: each user walks the catalog with stride 1 from a user-specific start, one item a day.
TOY_USERS, TOY_ITEMS, TOY_LENGTH = 30, 48, 8
WORDS = ["Red", "Blue", "Night", "River", "Storm", "Garden", "City", "Moon", "Fire", "Glass", "Stone", "Wolf"]
TOY_TITLES = {i: f"{WORDS[i % 12]} {WORDS[(i * 5 + 3) % 12]} ({1950 + i})" for i in range(1, TOY_ITEMS + 1)}

# The `parameters` cell at toy scale: a 1-layer SASRec for one epoch, a 1-layer 16-wide Llama for 4 steps, every
# test sample ranked (EVAL_SAMPLES None), so the notebook's hr@1 can be checked against the checkpoints' metrics.
TOY_LLM_OPTIONS = {**TOY_LLAMA, "batch_size": 8, "eval_batch_size": 8, "max_steps": 4, "max_valid_samples": 8,
                   "device": "cpu", "progress_bar": False}
TOY_PARAMETERS = """
from pathlib import Path

WORK = Path.cwd()
DATASET = "ml-100k"
RAW = WORK / "raw-ml-100k"
DOWNLOAD = False
CANDIDATES = 8
ENCODER_EPOCHS = 1
ENCODER_OPTIONS = {"hidden_size": 16, "num_layers": 1, "ffn_size": 32, "max_length": 10, "batch_size": 32,
                   "device": "cpu", "progress_bar": False}
LLM_PRESET = "llm-tiny-cpu-small.yaml"
LLM_OPTIONS = """ + repr(TOY_LLM_OPTIONS) + """
MAX_TEST_SAMPLES = None
EVAL_SAMPLES = None
TOP_K = 3
"""
KERNEL = "llmrec-notebook-test"
NUMBER = r"(-?(?:\d+\.\d+|nan|inf))"


# ------------------------------------------------------------------------------------------------ static
def test_there_is_a_notebook() -> None:
    assert QUICKSTART in NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_code_parses_and_imports_exist(path: Path) -> None:
    nb = json.loads(path.read_text())
    assert nb["nbformat"] == 4
    code_cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code_cells, f"{path.name} has no code"
    for cell in code_cells:
        tree = ast.parse("".join(cell["source"]))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llmrec"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{path.name}: {node.module} has no {alias.name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_are_stripped(path: Path) -> None:
    nb = json.loads(path.read_text())
    assert (nb["nbformat"], nb["nbformat_minor"] >= 5) == (4, True), "nbformat 4.5+ (cells carry ids)"
    for i, cell in enumerate(nb["cells"]):
        assert cell.get("id"), f"{path.name} cell {i} has no id"
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"{path.name} cell {i} ({cell['id']}) has outputs: strip them"
            assert cell["execution_count"] is None, f"{path.name} cell {i} ({cell['id']}) has an execution count"
    assert set(nb["metadata"]) <= {"kernelspec", "language_info"}, f"{path.name}: extra notebook metadata"


def assigned_names(source: str) -> set[str]:
    return {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


def test_quickstart_opens_with_a_parameters_cell_the_toy_run_can_replace() -> None:
    nb = json.loads(QUICKSTART.read_text())
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert "parameters" in first["metadata"].get("tags", [])
    # the toy cell sets exactly the names the shipped cell sets, so replacing it cannot leave one undefined
    assert assigned_names("".join(first["source"])) == assigned_names(TOY_PARAMETERS)
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1


# ------------------------------------------------------------------------------------------------ executed
def toy_rows() -> list[tuple[int, int, int, int]]:
    """(user, item, rating, timestamp): user u walks items start, start+1, ... (mod catalog), one a day."""
    rows = []
    for u in range(1, TOY_USERS + 1):
        start = (u * 7) % TOY_ITEMS
        rows += [(u, (start + j) % TOY_ITEMS + 1, 1 + (u + j) % 5, 1_000_000_000 + j * 86400)
                 for j in range(TOY_LENGTH)]
    return rows


def private_kernel(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec running THIS interpreter, found first on a private JUPYTER_PATH; private IPython/runtime dirs."""
    spec = tmp / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "llmrec test kernel", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp / "ipython"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel picks the inline backend (PNG outputs)
    from jupyter_client.kernelspec import KernelSpecManager

    assert KernelSpecManager().get_kernel_spec(KERNEL).argv[0] == sys.executable
    return KERNEL


def text_of(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def one_number(pattern: str, text: str) -> float:
    found = re.findall(pattern, text, flags=re.MULTILINE)
    assert len(found) == 1, f"expected one match of {pattern!r} in:\n{text}"
    return float(found[0])


def test_quickstart_runs_top_to_bottom_at_toy_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -e .[dev])")
    import nbformat
    import pandas as pd

    from llmrec.data.dataset import ProcessedDataset

    run = tmp_path / "run"
    write_grouplens_100k(run / "raw-ml-100k", rows=toy_rows(), titles=TOY_TITLES)
    nb = nbformat.read(QUICKSTART, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = TOY_PARAMETERS.strip()
    notebooks_before = sorted(p.name for p in (ROOT / "notebooks").iterdir())

    client = nbclient.NotebookClient(nb, kernel_name=private_kernel(tmp_path, monkeypatch), timeout=180,
                                     startup_timeout=120, resources={"metadata": {"path": str(run)}})
    client.execute()  # raises CellExecutionError (with the cell's traceback) if any cell fails

    cells = {c.id: c for c in nb.cells}
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.execution_count is not None, f"cell {c.id} did not run"
            assert not [o for o in c.outputs if o.output_type == "error"], f"cell {c.id} failed"

    # prepare: the toy log's users and items (every user has 8 distinct items, all 48 items occur)
    assert re.search(rf"^{TOY_USERS} users, {TOY_ITEMS} items", text_of(cells["prepare"]), flags=re.MULTILINE)
    data = ProcessedDataset.load(run / "data" / "processed" / "notebook-ml-100k-llara-all")
    sample = data.split("test").iloc[0]
    assert sorted(data.titles()[1:]) == sorted(TOY_TITLES.values())
    history_titles = {data.titles()[i] for i in sample.history}
    assert f"target    : {data.titles()[sample.target]}" in text_of(cells["tables"])

    # retrieval: TOP_K items, none of them in the history
    retrieved = re.findall(r"^\s+-?[\d.]+  (.+)$", text_of(cells["retrieve"]), flags=re.MULTILINE)
    assert len(retrieved) == 3 and set(retrieved) <= set(TOY_TITLES.values()) and not set(retrieved) & history_titles

    # evaluation: the notebook re-ranks every test sample with the saved checkpoints, so its numbers must equal
    # what train-llm (score mode) and train-encoder measured on the same samples before saving
    ev = text_of(cells["evaluate"])
    llm = run / "checkpoints" / "notebook" / "llm-hybrid"
    saved = pd.read_parquet(llm / "eval-test-score" / "scores.parquet")
    assert len(saved) == len(data.split("test"))
    score_hr1 = one_number(rf"^LLM score\s+hr@1 = {NUMBER}", ev)
    assert score_hr1 == pytest.approx((saved["chosen"] == saved["target"]).mean(), abs=5e-5)
    generate_hr1 = one_number(rf"^LLM generate\s+hr@1 = {NUMBER}", ev)
    assert 0.0 <= generate_hr1 <= 1.0
    sasrec_hr1 = one_number(rf"^SASRec\s+hr@1 = {NUMBER}", ev)
    encoder_metrics = json.loads((run / "checkpoints" / "notebook" / "sasrec" / "metrics.json").read_text())
    assert sasrec_hr1 == pytest.approx(encoder_metrics["test"]["candidates/hr@1"], abs=5e-5)

    # the plot cell shows a PNG
    pngs = [base64.b64decode(o.data["image/png"]) for o in cells["plot"].outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 1 and pngs[0][:8] == b"\x89PNG\r\n\x1a\n"

    # fairness: MGU/DGU per mode; GH shares over the 5 popularity groups sum to 1
    fair = text_of(cells["fairness"])
    for mode in ("score", "generate"):
        mgu = one_number(rf"^LLM {mode}\s+MGU@1 = {NUMBER}", fair)
        assert math.isnan(mgu) or 0.0 <= mgu <= 1.0  # nan when no generated answer named a candidate
    gh = [float(x) for x in re.findall(r"/ GH ([\d.]+)", fair)]
    assert len(gh) == 10 and sum(gh[:5]) == pytest.approx(1.0, abs=0.03)

    # serving: TOP_K titles of the toy catalog, best first, none from the user's history
    recs = re.findall(rf"^\s*(\d+)\. (.+?)   \(log-prob {NUMBER}\)$", text_of(cells["recommend"]), flags=re.MULTILINE)
    assert [int(r) for r, _, _ in recs] == [1, 2, 3]
    titles = [t for _, t, _ in recs]
    assert set(titles) <= set(TOY_TITLES.values()) and not set(titles) & history_titles and len(set(titles)) == 3
    scores = [float(s) for *_, s in recs]
    assert scores == sorted(scores, reverse=True)

    # everything was written under the run folder, nothing beside the notebook
    assert (llm / "metrics.json").is_file() and (run / "data" / "cache" / "llm").is_dir()
    assert sorted(p.name for p in (ROOT / "notebooks").iterdir()) == notebooks_before
