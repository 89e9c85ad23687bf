"""Atomic writes leave either the old content or the new one, never a partial file or folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmrec.base.atomic import atomic_directory, atomic_write, atomic_write_text


def test_failed_write_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "weights.bin"
    atomic_write_text(target, "old")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]


def test_directory_replaced_only_on_success(tmp_path: Path) -> None:
    out = tmp_path / "processed"
    with atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(ValueError):
        with atomic_directory(out) as tmp:
            (tmp / "b.txt").write_text("2")
            raise ValueError("interrupted")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["processed"]
    with atomic_directory(out) as tmp:
        (tmp / "c.txt").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["c.txt"]


def test_a_damaged_parquet_file_is_one_line_naming_it_and_what_to_do(tmp_path):
    """`read_scores` and `Catalog.load` read through `base.files.read_parquet`: a truncated file is a CheckpointError
    naming the file and the command to re-run, not a pyarrow traceback."""
    from llmrec.base.errors import CheckpointError
    from llmrec.data.catalog import CATALOG_FILE, Catalog
    from llmrec.evaluation.scores import SCORES_FILE, read_scores

    (tmp_path / SCORES_FILE).write_bytes(b"PAR1 truncated")
    with pytest.raises(CheckpointError, match=rf"{SCORES_FILE}: damaged or not a parquet file \(.+\); "
                                              r"re-run `llmrec evaluate`$"):
        read_scores(tmp_path)
    (tmp_path / CATALOG_FILE).write_bytes(b"not parquet at all")
    with pytest.raises(CheckpointError, match=rf"{CATALOG_FILE}: damaged or not a parquet file \(.+\); "
                                              rf"re-run the command that wrote {tmp_path}$"):
        Catalog.load(tmp_path)
