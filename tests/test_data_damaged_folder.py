"""A damaged parquet file in an input folder is named, called damaged, and the way to rebuild it is given --
never a pyarrow traceback (issue 9, class 9, the data part). Following the advice in the message must work."""

from __future__ import annotations

import re
import shlex
import shutil

import pytest
from data_fixtures import CUSTOM_COLUMNS, write_custom, write_grouplens_100k

from llmrec.base.atomic import OUTPUT_MARKER
from llmrec.commands.cli import main
from llmrec.data.dataset import ProcessedDataset
from llmrec.data.prepare import PrepareConfig, prepare
from llmrec.base.errors import DataError


def _damage(out, kind: str) -> None:
    if kind == "truncated":
        f = out / "samples_train.parquet"
        f.write_bytes(f.read_bytes()[:200])  # an interrupted copy
    elif kind == "not-parquet":
        (out / "items.parquet").write_text("title\nToy Story\n")
    elif kind == "rows":  # readable, but another table than the one prepare wrote
        ds = ProcessedDataset.load(out)
        ds.items.iloc[:-1].to_parquet(out / "items.parquet", index=False)
    elif kind == "meta":
        (out / "meta.json").write_text('{"format": "llmrec-processed-dat')
    elif kind == "meta-legacy":  # a folder written before llmrec's output marker existed
        (out / OUTPUT_MARKER).unlink()
        (out / "meta.json").write_text('{"format": "llmrec-processed-dat')
    elif kind == "missing":
        (out / "users.parquet").unlink()


def _follow(message: str, out) -> int:
    """Do what the message says: move the named file or folder away, then run the quoted command."""
    moved_file = re.search(r"move (\S+) out of the folder", message)
    if moved_file:
        (out / moved_file.group(1)).rename(out.parent / moved_file.group(1))
    moved_folder = re.search(r"move the folder away \(e\.g\. to (\S+)\)", message)
    if moved_folder:
        shutil.move(str(out), moved_folder.group(1))
    command = re.search(r"`llmrec (prepare [^`]*)`", message).group(1)
    return main(shlex.split(command))


@pytest.mark.parametrize("kind,message", [
    ("truncated", (r"out/samples_train.parquet is damaged \(not a readable parquet file: .*magic bytes.*\); it "
                   r"was written by `llmrec prepare`: move samples_train.parquet out of the folder \(or delete "
                   r"it\), then re-run `llmrec prepare --config .*out/config.yaml` to rebuild the folder")),
    ("not-parquet", r"out/items.parquet is damaged \(not a readable parquet file"),
    ("rows", (r"out/items.parquet has 39 rows but .*out/meta.json records 40: the folder was damaged or edited "
              r"after `llmrec prepare` wrote it; .*move items.parquet out of the folder")),
    ("meta", (r"out/meta.json: damaged \(not valid JSON: .*\); expected a prepared dataset written by `llmrec "
              r"prepare`; it was written by `llmrec prepare`: move meta.json out of the folder")),
    ("meta-legacy", (r"out/meta.json: damaged \(not valid JSON: .*\); expected a prepared dataset written by "
                     r"`llmrec prepare`; move the folder away \(e.g. to "
                     r".*out.damaged\), then re-run `llmrec prepare --config .*out.damaged/config.yaml`")),
    ("missing", (r"out/users.parquet is missing: .*out is an incomplete prepare output; it was written by "
                 r"`llmrec prepare`: re-run `llmrec prepare --config .*out/config.yaml` to complete it")),
])
def test_damaged_prepared_folder_is_named_and_the_advice_rebuilds_it(tmp_path, kind, message, capsys):
    raw, out = write_grouplens_100k(tmp_path / "raw"), tmp_path / "out"
    prepare(PrepareConfig(raw=raw, out=out, download=False))
    _damage(out, kind)
    with pytest.raises(DataError, match=message) as e:
        ProcessedDataset.load(out)
    assert "\n" not in str(e.value)
    assert _follow(str(e.value), out) == 0, capsys.readouterr().err
    ds = ProcessedDataset.load(out)
    assert ds.n_items == 40 and len(ds.split("train")) == 40


def test_damaged_data_folder_on_the_command_line_is_one_line_not_a_traceback(tmp_path, capsys):
    raw, out = write_grouplens_100k(tmp_path / "raw"), tmp_path / "out"
    prepare(PrepareConfig(raw=raw, out=out, download=False, protocol="loo"))
    _damage(out, "truncated")
    code = main(["train-encoder", "--data", str(out), "--out", str(tmp_path / "enc"), "--model", "mostpop"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith("llmrec train-encoder: error: ") and "samples_train.parquet is damaged" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("target", ["interactions", "items"])
def test_damaged_raw_parquet_is_named_and_called_damaged(tmp_path, target):
    paths = dict(zip(("interactions", "items"), write_custom(tmp_path / "raw", "parquet")))
    data = paths[target].read_bytes()
    paths[target].write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"{target}.parquet is damaged or not a parquet file \(pyarrow: .*\); "
                                        r"expected a complete parquet file: write it again"):
        prepare(PrepareConfig(dataset="custom", raw=tmp_path / "raw", out=tmp_path / "out", **CUSTOM_COLUMNS))
