"""The one evaluator behind the `Ranker` contract: its typed ranked table, a one-choice ranker, the encoder adapter,
and `llmrec evaluate --ckpt ENCODER` giving exactly the numbers `train-encoder` reports."""

from __future__ import annotations

import json
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny import TINY_ENCODER_TRAINING

from llmrec.base.errors import DataError
from llmrec.commands.cli import main
from llmrec.data.dataset import ProcessedDataset
from llmrec.data.sampling import ranked_subset
from llmrec.encoders.checkpoint import load_encoder
from llmrec.encoders.ranker import EncoderRanker
from llmrec.encoders.train import TrainEncoderConfig, run_train_encoder
from llmrec.evaluation.evaluator import catalog_metrics, rank_split, ranking_metrics
from llmrec.evaluation.ranker import CandidateRanking, CatalogRanker, Ranker
from llmrec.evaluation.scores import COLUMN_NAMES, FILE_COLUMNS, INVALID, SCORES_FILE, write_evaluation
from llmrec.llm.ranker import LLMRanker

TINY = {**TINY_ENCODER_TRAINING, "max_epochs": 2, "eval_batch_size": 7}  # several evaluation batches


@pytest.fixture(scope="module")
def trained(synthetic_llara_dir, synthetic_loo_dir, tmp_path_factory) -> dict[str, Path]:
    """Prepared data (llara with every eval position; loo, whose small catalog gives rows of fewer candidates)
    and an encoder trained on each by `train-encoder`."""
    root = tmp_path_factory.mktemp("evaluator")
    out = {"llara": synthetic_llara_dir, "loo": synthetic_loo_dir}
    for data, model in (("llara", "sasrec"), ("llara", "mostpop"), ("loo", "gru4rec")):
        assert run_train_encoder(TrainEncoderConfig(data=out[data], out=root / f"{data}-{model}", model=model,
                                                    **TINY)) == 0
        out[f"{data}-{model}"] = root / f"{data}-{model}"
    return out


def evaluate_cli(*args: str) -> None:
    with redirect_stdout(StringIO()):
        assert main(["evaluate", *args]) == 0


@pytest.mark.parametrize("ckpt, data", [("llara-sasrec", "llara"), ("llara-mostpop", "llara"), ("loo-gru4rec", "loo")])
def test_evaluate_an_encoder_checkpoint_gives_exactly_train_encoders_metrics(trained, tmp_path, ckpt, data):
    own = json.loads((trained[ckpt] / "metrics.json").read_text())["test"]
    evaluate_cli("--ckpt", str(trained[ckpt]), "--data", str(trained[data]), "--split", "test",
                 "--out", str(tmp_path / "eval"))
    got = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    keys = [k for k in own if k != "eval_seconds"]
    assert len(keys) > 20 and any(k.startswith("full/mgu@") for k in keys)
    assert {k: got[k] for k in keys} == {k: own[k] for k in keys}  # exactly, not approximately
    assert got["mode"] == "score" and got["split"] == "test" and got["hr@1"] == own["candidates/hr@1"]
    assert got["model"] == ckpt.split("-")[1]
    table = pd.read_parquet(tmp_path / "eval" / SCORES_FILE)
    assert list(table.columns) == [c.name for c in FILE_COLUMNS] and len(table) == own["n_samples"]


def test_evaluate_an_encoder_on_a_seeded_subset_ranks_the_samples_every_model_ranks(trained, tmp_path):
    evaluate_cli("--ckpt", str(trained["llara-sasrec"]), "--data", str(trained["llara"]), "--max-samples", "7",
                 "--seed", "3", "--out", str(tmp_path / "eval"))
    table = pd.read_parquet(tmp_path / "eval" / SCORES_FILE)
    expected = ranked_subset(ProcessedDataset.load(trained["llara"]).split("test"), 7, 3)
    assert table["user_id"].tolist() == expected["user_id"].tolist()
    assert table["position"].tolist() == expected["position"].tolist()
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n_samples"] == 7


def test_evaluate_refuses_llm_modes_and_options_on_an_encoder(trained, tmp_path, capsys):
    base = ["--ckpt", str(trained["llara-mostpop"]), "--data", str(trained["llara"]), "--out", str(tmp_path / "e")]
    assert main(["evaluate", *base, "--mode", "generate"]) != 0
    assert "is an encoder checkpoint: it ranks in `score` mode only" in capsys.readouterr().err
    assert main(["evaluate", *base, "--score-norm", "mean"]) != 0
    assert "--score-norm apply to LLM checkpoints only" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_the_encoder_adapter_is_a_catalog_ranker_and_the_llm_is_not(trained):
    data = ProcessedDataset.load(trained["llara"])
    ranker = EncoderRanker(load_encoder(trained["llara-sasrec"], data), data)
    assert isinstance(ranker, Ranker) and isinstance(ranker, CatalogRanker)
    llm = LLMRanker(lm=None, mode="generate")  # type: ignore[arg-type]
    assert isinstance(llm, Ranker) and not isinstance(llm, CatalogRanker)


class ChoiceRanker:
    """A one-choice ranker (as an LLM in generate mode): the first candidate, or no valid output for every
    third sample."""

    mode = "generate"

    def score_candidates(self, samples: pd.DataFrame, label: str) -> CandidateRanking:
        chosen = np.array([INVALID if i % 3 == 2 else int(c[0]) for i, c in enumerate(samples["candidates"])])
        return CandidateRanking(None, chosen, [f"answer {i}" for i in range(len(samples))])


def test_a_one_choice_ranker_through_the_evaluator(trained, tmp_path):
    data = ProcessedDataset.load(trained["llara"])
    evaluation = rank_split(ChoiceRanker(), data, "valid", max_samples=9, seed=1)
    table = evaluation.table
    assert list(table.columns) == list(COLUMN_NAMES) and table.attrs == {"mode": "generate", "split": "valid"}
    assert table["scores"].isna().all() and table["text"].tolist()[:2] == ["answer 0", "answer 1"]
    assert evaluation.catalog is None
    first = np.array([int(c[0]) for c in table["candidates"]])
    valid = np.arange(9) % 3 != 2
    metrics = ranking_metrics(evaluation, data, seed=1)
    assert metrics["valid_ratio"] == pytest.approx(6 / 9) and metrics["n_samples"] == 9
    assert metrics["hr@1"] == pytest.approx(np.mean(valid & (first == table["target"].to_numpy())))
    assert metrics["candidates/ndcg@5"] == metrics["hr@1"] and metrics["mode"] == "generate"
    with pytest.raises(DataError, match="whole catalog"):
        catalog_metrics(evaluation, data, None)
    write_evaluation(tmp_path / "out", metrics, table)
    written = pd.read_parquet(tmp_path / "out" / SCORES_FILE)
    assert list(written.columns) == [c.name for c in FILE_COLUMNS]
    assert written["chosen"].tolist() == table["chosen"].tolist()
