"""The repository never carries model weights or dataset files (they are built or fetched at run time)."""

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
