"""The repository never carries model weights or dataset files (they are built or fetched at run time), and no
module of llmrec unpickles anything (weights, checkpoints, or what its own processes send each other)."""

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".parquet", ".faiss", ".npz", ".zip", ".whl")


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return out.splitlines()


def test_no_weights_or_data_files_are_tracked():
    files = tracked_files()
    assert any(f.endswith("README.md") for f in files)  # the listing really is the repository's
    offending = [f for f in files if f.endswith(FORBIDDEN_SUFFIXES) or f.startswith(("data/raw/", "data/processed/"))]
    assert offending == []


# ------------------------------------------------------------------------------------------------ never unpickle
# llmrec never unpickles, not even what its own processes send each other (a pickle runs code when it is read):
# the calls below unpickle (torch.distributed's *_object collectives pickle the objects and unpickle them on the
# other side); `torch.load` is allowed only with `weights_only=True`, `numpy.load` never with `allow_pickle=True`,
# and a Lightning checkpoint (`ckpt_path=`, `load_from_checkpoint`) is a pickle too.
UNPICKLING_CALLS = frozenset({
    "all_gather_object", "broadcast_object_list", "gather_object", "scatter_object_list", "send_object_list",
    "recv_object_list", "read_pickle", "load_from_checkpoint", "Unpickler",
})
PICKLE_MODULES = frozenset({"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"})


def _call_name(node: ast.Call) -> tuple[str | None, str]:
    """(`module` of a call `module.name(...)` or None, `name`)."""
    func = node.func
    if isinstance(func, ast.Attribute):
        owner = func.value.id if isinstance(func.value, ast.Name) else None
        return owner, func.attr
    return None, func.id if isinstance(func, ast.Name) else ""


def _keyword_is(node: ast.Call, name: str, value: object) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in node.keywords)


def unpickling_places(source: str, filename: str) -> list[str]:
    """`filename:line what` for every place in Python `source` that could unpickle (see above)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found += [f"{filename}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.Call):
            owner, name = _call_name(node)
            if name in UNPICKLING_CALLS:
                found.append(f"{filename}:{node.lineno} calls {name}")
            elif owner == "torch" and name == "load" and not _keyword_is(node, "weights_only", True):
                found.append(f"{filename}:{node.lineno} calls torch.load without weights_only=True")
            elif owner in ("np", "numpy") and name == "load" and not _keyword_is(node, "allow_pickle", False) \
                    and any(k.arg == "allow_pickle" for k in node.keywords):
                found.append(f"{filename}:{node.lineno} calls numpy.load with allow_pickle")
            elif any(k.arg == "ckpt_path" for k in node.keywords):
                found.append(f"{filename}:{node.lineno} passes ckpt_path (a pickled Lightning checkpoint)")
    return found


def test_no_module_unpickles_anything():
    modules = sorted((ROOT / "llmrec").rglob("*.py"))
    assert len(modules) > 50  # the package really was found
    found = [place for path in modules
             for place in unpickling_places(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert found == []


@pytest.mark.parametrize("source, what", [
    ("import torch.distributed as dist\ndist.all_gather_object(out, local)", "calls all_gather_object"),
    ("torch.distributed.broadcast_object_list(objs, src=0)", "calls broadcast_object_list"),
    ("import pickle", "imports pickle"),
    ("from pickle import loads", "imports pickle"),
    ("import joblib", "imports joblib"),
    ("state = torch.load(path)", "calls torch.load without weights_only=True"),
    ("state = torch.load(path, weights_only=False)", "calls torch.load without weights_only=True"),
    ("a = np.load(path, allow_pickle=True)", "calls numpy.load with allow_pickle"),
    ("frame = pd.read_pickle(path)", "calls read_pickle"),
    ("trainer.fit(module, ckpt_path=last)", "passes ckpt_path"),
    ("Module.load_from_checkpoint(path)", "calls load_from_checkpoint"),
])
def test_the_unpickling_check_finds_each_kind(source, what):
    found = unpickling_places(source, "x.py")
    assert len(found) == 1 and found[0].startswith("x.py:") and what in found[0]


def test_the_unpickling_check_lets_safe_loading_through():
    safe = ("state = torch.load(path, weights_only=True)\na = np.load(path)\nb = np.load(path, allow_pickle=False)\n"
            "parts = gather_objects(trainer, value)\nimport json\n")
    assert unpickling_places(safe, "x.py") == []
