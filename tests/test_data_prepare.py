"""`llmrec prepare` end to end: the folder it writes, meta.json, the CLI and its summary table."""

from __future__ import annotations

import json

import pytest
from data_fixtures import write_grouplens_100k

from llmrec.commands.cli import main
from llmrec.base.config import load_config
from llmrec.data.dataset import ProcessedDataset
from llmrec.data.prepare import PrepareConfig, prepare, resolve_paths


def test_default_paths():
    assert resolve_paths(PrepareConfig()).out.as_posix() == "data/processed/ml-100k-llara"
    assert resolve_paths(PrepareConfig(eval_positions="all")).out.as_posix() == "data/processed/ml-100k-llara-all"
    assert resolve_paths(PrepareConfig(protocol="loo")).out.as_posix() == "data/processed/ml-100k-loo"
    assert resolve_paths(PrepareConfig(dataset="steam")).raw.as_posix() == "data/raw/steam"


def test_meta_json(tmp_path):
    raw = write_grouplens_100k(tmp_path / "raw")
    prepare(PrepareConfig(raw=raw, out=tmp_path / "out", download=False))
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    for key in ("dataset", "domain", "protocol", "eval_positions", "seed", "min_interactions", "max_history",
                "n_candidates", "n_users", "n_items", "n_interactions", "n_samples", "source", "created",
                "llmrec_version", "dropped", "format"):
        assert key in meta, key
    assert meta["n_samples"] == {"train": 40, "valid": 1, "test": 1}
    assert (meta["n_users"], meta["n_items"], meta["n_interactions"]) == (10, 40, 80)
    assert meta["source"]["kind"] == "raw-dir" and len(meta["source"]["files"]["u.data"]) == 64
    assert meta["created"].endswith("+00:00")
    assert meta["dropped"] == {"users_below_min_interactions": 1, "interactions_of_dropped_users": 3}
    # the resolved config is saved beside the tables and loads back
    cfg = load_config(PrepareConfig, tmp_path / "out" / "config.yaml")
    assert cfg.out == tmp_path / "out" and cfg.protocol == "llara"
    ds = ProcessedDataset.load(tmp_path / "out")
    assert ds.n_items == 40 and ds.domain == "movies" and len(ds.train_sequences()) == 8


def test_cli_prepare_prints_summary(tmp_path, capsys):
    raw = write_grouplens_100k(tmp_path / "raw")
    code = main(["prepare", "--dataset", "ml-100k", "--raw", str(raw), "--out", str(tmp_path / "out"),
                 "--protocol", "llara", "--eval-positions", "all", "--seed", "3", "--max-history", "4",
                 "--candidates", "10", "--no-download"])
    out = capsys.readouterr().out
    assert code == 0
    lines = {" ".join(line.split()) for line in out.splitlines()}
    for line in ("users 10 (train 8 / valid 1 / test 1)", "items 40", "interactions 80", "samples train 40",
                 "samples valid 5", "samples test 5", f"source raw-dir ({raw})", f"output {tmp_path / 'out'}"):
        assert line in lines, line
    assert "eval positions all, max history 4, 10 candidates, seed 3" in out
    ds = ProcessedDataset.load(tmp_path / "out")
    assert ds.meta["seed"] == 3 and max(len(h) for h in ds.split("train")["history"]) == 4
    assert all(len(c) == 10 for c in ds.split("test")["candidates"])


def test_domain_override(tmp_path):
    raw = write_grouplens_100k(tmp_path / "raw")
    ds = prepare(PrepareConfig(raw=raw, out=tmp_path / "out", download=False, domain="generic"))
    assert ds.domain == "generic"


@pytest.mark.parametrize("protocol", ["llara", "loo"])
def test_train_sequences_hold_no_valid_or_test_target(tmp_path, protocol):
    """The contract's `train_sequences` (what encoders train on) never contains an evaluation target."""
    raw = write_grouplens_100k(tmp_path / "raw")
    ds = prepare(PrepareConfig(raw=raw, out=tmp_path / "out", download=False, protocol=protocol))
    seqs = ds.user_sequences()
    train = ds.train_sequences()
    if protocol == "loo":
        assert [t.tolist() for t in train] == [s[:-2].tolist() for s in seqs.values()]
        for split in ("valid", "test"):
            for r in ds.split(split).itertuples():
                assert r.position >= len(seqs[r.user_id]) - 2
    else:
        held_out = set(ds.users.loc[ds.users["split"] != "train", "user_id"])
        assert len(train) == 8
        assert sorted(t.tolist() for t in train) == sorted(s.tolist() for u, s in seqs.items() if u not in held_out)
