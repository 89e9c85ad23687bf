"""`llmrec train-encoder` end to end on tiny synthetic data: outputs, determinism, learning, bad input."""

import dataclasses
import json
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny import TINY_ENCODER_TRAINING

from llmrec.commands.cli import main
from llmrec.base.config import load_yaml_mapping, resolve_config
from llmrec.encoders import load_encoder
from llmrec.encoders.synthetic import synthetic_dataset
from llmrec.encoders.train import TrainEncoderConfig, run_train_encoder
from llmrec.base.errors import CheckpointError, ConfigError, DataError

TINY = {**TINY_ENCODER_TRAINING, "patience": 5}


def train(data: Path, out: Path, **kw) -> dict:
    config = TrainEncoderConfig(data=data, out=out, **{**TINY, **kw})
    assert run_train_encoder(config) == 0
    return json.loads((out / "metrics.json").read_text())


def test_sasrec_on_loo_learns_and_writes_a_complete_checkpoint(tmp_path, synthetic_loo_dir):
    m = train(synthetic_loo_dir, tmp_path / "sas", model="sasrec", max_epochs=6, lr=5e-3)
    out = tmp_path / "sas"
    assert {"encoder.safetensors", "config.yaml", "metrics.json", "items.faiss", "logs"} <= {
        p.name for p in out.iterdir()}
    for split in ("valid", "test"):
        assert {"full/hr@10", "full/ndcg@10", "full/ndcg@20", "candidates/hr@1", "candidates/ndcg@5",
                "n_samples"} <= set(m[split])
    assert m["protocol"] == "loo" and m["seed"] == 42 and m["monitor"] == "valid/full/ndcg@10"
    assert 0 <= m["best_epoch"] < 6 and m["train_seconds"] > 0
    # the kept epoch is the first best one on VALID, and the reported valid metrics are that epoch's
    history = json.loads((out / "logs" / "valid_history.json").read_text())
    ndcg = [h["full/ndcg@10"] for h in history]
    assert m["best_epoch"] == history[ndcg.index(max(ndcg))]["epoch"]
    assert m["valid"]["full/ndcg@10"] == pytest.approx(max(ndcg), abs=1e-6)
    # the loss falls, and the stride pattern is learned far beyond popularity
    log = pd.read_csv(out / "logs" / "csv" / "metrics.csv")
    losses = log["train/loss_epoch"].dropna().to_list()
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0]
    pop = train(synthetic_loo_dir, tmp_path / "pop", model="mostpop")
    assert m["valid"]["full/ndcg@10"] > pop["valid"]["full/ndcg@10"] + 0.1
    # the saved checkpoint reproduces the reported test metrics
    from llmrec.data.dataset import ProcessedDataset
    from llmrec.encoders.ranker import evaluate_encoder

    data = ProcessedDataset.load(synthetic_loo_dir)
    enc = load_encoder(out, data)
    again = evaluate_encoder(enc, data, "test")
    assert again["full/ndcg@10"] == pytest.approx(m["test"]["full/ndcg@10"], abs=1e-9)


def test_evaluation_does_not_depend_on_batching(synthetic_llara_dir):
    from llmrec.data.dataset import ProcessedDataset
    from llmrec.encoders import build_encoder
    from llmrec.encoders.evaluate import build_eval_set
    from llmrec.encoders.ranker import evaluate_encoder

    data = ProcessedDataset.load(synthetic_llara_dir)
    torch.manual_seed(0)
    enc = build_encoder("sasrec", data.n_items, hidden_size=8, max_length=6)
    eval_set = build_eval_set(data, "test", enc.max_length)
    assert all(len(h) <= 6 for h in eval_set.histories)
    a, b = evaluate_encoder(enc, data, "test", batch_size=3), evaluate_encoder(enc, data, "test", batch_size=1000)
    a.pop("eval_seconds"), b.pop("eval_seconds")
    assert a == pytest.approx(b)


def test_same_seed_gives_identical_metrics(tmp_path, synthetic_loo_dir):
    a = train(synthetic_loo_dir, tmp_path / "a", model="gru4rec", max_epochs=2, seed=3)
    b = train(synthetic_loo_dir, tmp_path / "b", model="gru4rec", max_epochs=2, seed=3)
    drop = ("eval_seconds",)
    for split in ("valid", "test"):
        assert {k: v for k, v in a[split].items() if k not in drop} == \
               {k: v for k, v in b[split].items() if k not in drop}
    wa = load_encoder(tmp_path / "a").state_dict()
    wb = load_encoder(tmp_path / "b").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_llara_all_reports_candidates_and_the_last_position(tmp_path, synthetic_llara_dir):
    m = train(synthetic_llara_dir, tmp_path / "caser", model="caser", max_length=3, max_epochs=2, loss="bce",
              num_negatives=2)
    assert m["monitor"] == "valid/candidates/hr@1" and m["eval_positions"] == "all"
    t = m["test"]
    assert {"candidates/hr@1", "candidates/ndcg@5", "candidates/hr@1_last", "full/ndcg@10"} <= set(t)
    assert t["n_samples_last"] == 5 < t["n_samples"]  # 5 test users, each with several positions
    pop = train(synthetic_llara_dir, tmp_path / "pop", model="mostpop")
    assert 0 <= pop["test"]["candidates/hr@1"] <= 1


def test_existing_folder_that_is_not_a_checkpoint_is_refused(tmp_path, synthetic_loo_dir):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("keep me")
    with pytest.raises(CheckpointError, match="not an encoder checkpoint; refusing to overwrite"):
        run_train_encoder(TrainEncoderConfig(data=synthetic_loo_dir, out=tmp_path / "out", model="mostpop"))
    assert (tmp_path / "out" / "thesis.tex").read_text() == "keep me"
    # a previous encoder checkpoint is replaced
    train(synthetic_loo_dir, tmp_path / "ckpt", model="mostpop")
    train(synthetic_loo_dir, tmp_path / "ckpt", model="mostpop", seed=7)
    assert json.loads((tmp_path / "ckpt" / "metrics.json").read_text())["seed"] == 7


def test_data_folder_that_is_not_a_prepare_output(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "u.data").write_text("1\t1\t5\t0\n")
    with pytest.raises(DataError, match="llmrec prepare"):
        run_train_encoder(TrainEncoderConfig(data=tmp_path / "raw", out=tmp_path / "out"))
    code = main(["train-encoder", "--data", str(tmp_path / "raw"), "--out", str(tmp_path / "out")])
    assert code == 2 and "llmrec prepare" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_rejects_unknown_model_and_missing_options(tmp_path, synthetic_loo_dir, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train-encoder", "--data", str(synthetic_loo_dir), "--model", "bert4rec", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "invalid choice: 'bert4rec'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: bert4rec\n")
    with pytest.raises(ConfigError, match="bad.yaml.*'model'.*bert4rec"):
        resolve_config(TrainEncoderConfig, {}, bad)
    with pytest.raises(ConfigError, match="--data is required"):
        run_train_encoder(TrainEncoderConfig(out=tmp_path / "o"))
    assert main(["train-encoder", "--data", str(synthetic_loo_dir), "--out", str(tmp_path / "o"), "--model", "sasrec",
                 "--batch-size", "0"]) == 2


def test_checkpoint_with_another_item_count_is_refused(tmp_path, synthetic_loo_dir):
    train(synthetic_loo_dir, tmp_path / "pop", model="mostpop")
    other = synthetic_dataset(n_users=10, n_items=25)
    with pytest.raises(CheckpointError, match="trained on 30 items"):
        load_encoder(tmp_path / "pop", other)


def test_every_shipped_preset_parses():
    folder = resources.files("llmrec") / "configs"
    presets = [p for p in folder.iterdir() if p.name.startswith("encoder-") and p.name.endswith(".yaml")]
    assert {p.name for p in presets} >= {f"encoder-{m}.yaml" for m in ("sasrec", "gru4rec", "caser", "mostpop")}
    for p in presets:
        config = resolve_config(TrainEncoderConfig, {}, Path(str(p)))
        assert config.model == p.name[len("encoder-"):-len(".yaml")].removesuffix("-demo")  # encoder-<model>[-demo]
        assert set(load_yaml_mapping(Path(str(p)))) <= {f.name.replace("_", "-") for f in
                                                        dataclasses.fields(TrainEncoderConfig)} | {
            f.name for f in dataclasses.fields(TrainEncoderConfig)}
