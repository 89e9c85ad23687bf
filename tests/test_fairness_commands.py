"""The fairness stage wired into commands: metrics of saved rankings (`llmrec.evaluation.ranked_metrics`), `rerank`,
`report`, the encoders' fairness metrics, and one-line errors for bad input. Tiny data, no network."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_llm_support import tiny_config, tiny_dataset

from llmrec.base.config import resolve_config
from llmrec.data.dataset import ProcessedDataset
from llmrec.data.fingerprint import split_fingerprint
from llmrec.base.errors import CheckpointError, ConfigError, DataError, LlmrecError
from llmrec.evaluation.ranked_metrics import ranked_fairness, split_metrics
from llmrec.evaluation.scores import read_scores, write_scores
from llmrec.evaluation.groups import ItemGroups, item_groups, popularity_groups
from llmrec.fairness.report import (
    MARKER,
    ReportConfig,
    ReportEntry,
    run_report,
    write_report,
)
from llmrec.fairness.rerank_command import RerankConfig, run_rerank
from llmrec.llm import checkpoint as llm_checkpoint
from llmrec.llm.facts import BaseModelFacts, LLMFacts

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------ helpers
def ranked_table(data: ProcessedDataset, split: str, scores: list[list[float]] | None = None,
                 chosen: list[int] | None = None, mode: str = "score") -> pd.DataFrame:
    """A ranked table (`llmrec.evaluation.scores`), with the given scores (score mode) or choices."""
    s = data.split(split)
    n = len(s)
    if mode == "score":
        assert scores is not None
        chosen = [int(np.asarray(c)[int(np.argmax(sc))]) for c, sc in zip(s["candidates"], scores)]
    out = pd.DataFrame({"user_id": s["user_id"].to_numpy(), "position": s["position"].to_numpy(),
                        "target": s["target"].to_numpy(), "candidates": [list(map(int, c)) for c in s["candidates"]],
                        "scores": scores if mode == "score" else [None] * n,
                        "chosen": np.asarray(chosen, dtype=np.int64),
                        "is_last": s.groupby("user_id")["position"].transform("max").to_numpy() == s["position"],
                        "text": [""] * n})
    out.attrs.update({"mode": mode, "split": split})
    return out


def write_eval(folder: Path, ranked: pd.DataFrame, data_dir: Path, ckpt: Path) -> Path:
    """An `llmrec evaluate` output folder: metrics.json, scores.parquet and a config.yaml naming data and ckpt."""
    folder.mkdir(parents=True)
    metrics = split_metrics(ranked, ranked.attrs["mode"])
    metrics.update({"seed": 0, "mode": ranked.attrs["mode"], "split": ranked.attrs["split"]})
    (folder / "metrics.json").write_text(json.dumps(metrics))
    write_scores(folder, ranked)
    (folder / "config.yaml").write_text(yaml.safe_dump({"ckpt": str(ckpt), "data": str(data_dir),
                                                        "mode": ranked.attrs["mode"]}))
    return folder


def fake_checkpoint(folder: Path, data: ProcessedDataset, data_dir: Path) -> Path:
    """The facts `read_facts` checks (format, catalog and split fingerprints) of a checkpoint trained on `data`;
    the rerank and report commands read nothing else of a checkpoint (they never run the model)."""
    folder.mkdir(parents=True)
    facts = LLMFacts(finetune="full", prompt="text", max_length=64, seed=0, protocol=data.protocol,
                     catalog_fingerprint=data.catalog_fingerprint(), split=split_fingerprint(data),
                     base=BaseModelFacts(path="unused", fingerprint={}), first_new_row=0, embedding_rows=8,
                     vocab_size=8)
    (folder / llm_checkpoint.FACTS).write_text(json.dumps(facts.to_dict()))
    (folder / "config.yaml").write_text(yaml.safe_dump({"data": str(data_dir)}))
    return folder


def popularity_scores(data: ProcessedDataset, split: str, target_bonus: float, seed: int) -> list[list[float]]:
    """Scores that favour popular items (training counts) plus `target_bonus` for the target: a model that
    over-recommends the popular groups."""
    counts = np.bincount(np.concatenate(data.train_sequences()), minlength=data.n_items + 1).astype(float)
    rng = np.random.default_rng(seed)
    out = []
    for cands, target in zip(data.split(split)["candidates"], data.split(split)["target"]):
        c = np.asarray(cands)
        out.append((counts[c] + rng.normal(0, 0.1, len(c)) + target_bonus * (c == target)).tolist())
    return out


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text and text
    return text


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[ProcessedDataset, Path]:
    data = tiny_dataset(n_users=36, n_items=40, seq_len=12)
    path = data.save(tmp_path_factory.mktemp("data") / "tiny")
    return ProcessedDataset.load(path), path


def make_ckpt(root: Path, tiny, valid_scores=None, test_scores=None, target_bonus: float = 30.0) -> Path:
    data, data_dir = tiny
    ckpt = fake_checkpoint(root / "ckpt", data, data_dir)
    for split, given in (("valid", valid_scores), ("test", test_scores)):
        scores = given or popularity_scores(data, split, target_bonus, seed=1 if split == "valid" else 2)
        write_eval(ckpt / f"eval-{split}-score", ranked_table(data, split, scores), data_dir, ckpt)
    return ckpt


def rerank(**values) -> dict:
    run_rerank(resolve_config(RerankConfig, {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}))
    out = Path(values.get("out") or Path(values["scores"]) / f"rerank-{values.get('grouping', 'popularity')}")
    return json.loads((out / "metrics.json").read_text())


# ------------------------------------------------------------------------------------------------ metrics
def toy() -> tuple[ProcessedDataset, ItemGroups]:
    """Items 1-6 in groups A {1, 2}, B {3, 4}, C {5, 6}; two test samples."""
    groups = ItemGroups(names=["A", "B", "C"], kind="genre", membership=np.array(
        [[0, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]], dtype=float))
    test = pd.DataFrame({"user_id": [1, 2], "position": [3, 2], "history": [np.array([1, 2, 3]), np.array([5, 6])],
                         "target": [4, 2], "candidates": [np.array([4, 5, 1]), np.array([2, 6, 3])]})
    empty = test.iloc[:0]
    data = ProcessedDataset(meta={"protocol": "llara", "n_items": 6, "n_users": 2}, items=pd.DataFrame(),
                            interactions=pd.DataFrame(), users=pd.DataFrame(),
                            samples={"train": empty, "valid": empty, "test": test})
    return data, groups


def test_ranked_fairness_of_scores_by_hand():
    data, groups = toy()
    # Sample 1 scores (0.1, 0.9, 0.9) for (4, 5, 1): 5 and 1 tie, the stored order keeps 5 first -> 5, 1, 4.
    # Sample 2 scores (2, -1, 2) for (2, 6, 3) -> 2, 3, 6.  GH over histories [1 2 3], [5 6]: A 2/5, B 1/5, C 2/5.
    ranked = ranked_table(data, "test", scores=[[0.1, 0.9, 0.9], [2.0, -1.0, 2.0]])
    out = ranked_fairness(ranked, data, groups, ks=(1, 2))
    assert [out["gh/A"], out["gh/B"], out["gh/C"]] == pytest.approx([0.4, 0.2, 0.4])
    # K=1: items 5 (C) and 2 (A): GP (1/2, 0, 1/2), GU (0.1, -0.2, 0.1).
    assert [out["gu@1/A"], out["gu@1/B"], out["gu@1/C"]] == pytest.approx([0.1, -0.2, 0.1])
    assert out["mgu@1"] == pytest.approx(0.4 / 3) and out["dgu@1"] == pytest.approx(0.3)
    # K=2: items 5, 1, 2, 3: GP (2/4, 1/4, 1/4), GU (0.1, 0.05, -0.15).
    assert [out["gu@2/A"], out["gu@2/B"], out["gu@2/C"]] == pytest.approx([0.1, 0.05, -0.15])
    assert out["mgu@2"] == pytest.approx(0.1) and out["dgu@2"] == pytest.approx(0.25)
    # default K for score mode: those of 1, 5, 10 that fit the 3 candidates
    assert {k for k in ranked_fairness(ranked, data, groups) if k.startswith("mgu@")} == {"mgu@1"}


def test_ranked_fairness_of_choices_counts_invalid_outputs_as_no_slot():
    data, groups = toy()
    ranked = ranked_table(data, "test", chosen=[4, -1], mode="generate")
    out = ranked_fairness(ranked, data, groups)
    # One valid choice, item 4 (B): GP@1 = (0, 1, 0); GU = (-0.4, 0.8, -0.4).
    assert [out["gu@1/A"], out["gu@1/B"], out["gu@1/C"]] == pytest.approx([-0.4, 0.8, -0.4])
    assert out["mgu@1"] == pytest.approx(1.6 / 3) and out["dgu@1"] == pytest.approx(1.2)
    assert not any(k.startswith("mgu@5") for k in out)
    with pytest.raises(ConfigError, match=r"^K=5 is not defined for `generate` mode") as e:
        ranked_fairness(ranked, data, groups, ks=(1, 5))
    one_line(e)


def test_ranked_rows_must_be_samples_of_the_data():
    data, groups = toy()
    ranked = ranked_table(data, "test", scores=[[0.1, 0.9, 0.9], [2.0, -1.0, 2.0]])
    ranked.loc[1, "target"] = 6
    with pytest.raises(DataError, match=r"ranked row 1 \(user 2, position 2\): its target or candidates differ") as e:
        ranked_fairness(ranked, data, groups)
    one_line(e)
    ranked.loc[1, "position"] = 7
    with pytest.raises(DataError, match="is not a test sample"):
        ranked_fairness(ranked, data, groups)


# ------------------------------------------------------------------------------------------------ rerank
def test_rerank_alpha_zero_changes_nothing(tmp_path, tiny):
    data, _ = tiny
    rng = np.random.default_rng(0)
    rand = {s: (rng.normal(size=(len(data.split(s)), 20)) * 20 - 100).tolist() for s in ("valid", "test")}
    ckpt = make_ckpt(tmp_path, tiny, rand["valid"], rand["test"])
    m = rerank(scores=ckpt, alpha="0")
    assert m["alpha"] == 0.0 and m["alpha_choice"] == "given"
    keys = [k for k in m["before"] if k.startswith(("hr@", "candidates/", "mgu@", "dgu@", "gu@", "gh/"))]
    assert len(keys) > 20
    assert {k: m[k] for k in keys} == {k: m["before"][k] for k in keys}
    assert m["valid"]["before"] == m["valid"]["after"]
    table = read_scores(ckpt / "rerank-popularity")
    assert [list(s) for s in table["scores"]] == [list(s) for s in table["model_scores"]] == rand["test"]
    before = read_scores(ckpt / "eval-test-score")
    assert table["chosen"].tolist() == before["chosen"].tolist()
    # The reported "before" metrics are those `llmrec evaluate` wrote for the test ranking.
    evaluated = json.loads((ckpt / "eval-test-score" / "metrics.json").read_text())
    assert m["before"]["hr@1"] == evaluated["hr@1"] and m["before"]["candidates/ndcg@5"] == evaluated[
        "candidates/ndcg@5"]
    cfg = yaml.safe_load((ckpt / "rerank-popularity" / "config.yaml").read_text())
    assert cfg["data"] == str(tiny[1]) and cfg["alpha"] == "0" and cfg["ckpt"] == str(ckpt)


def test_rerank_lowers_mgu_of_a_model_that_over_recommends_popular_items(tmp_path, tiny):
    # Scores = training popularity (+ the target far ahead): positions 2.. are filled by the popular groups.
    ckpt = make_ckpt(tmp_path, tiny, target_bonus=30.0)
    m = rerank(scores=ckpt, alpha="auto")
    assert m["alpha_choice"] == "auto" and m["alpha"] > 0
    # U_G: the most popular group is the most over-recommended on valid (U = 1 after normalising).
    u = m["group_adjustment"]
    assert max(u, key=u.get) == "pop4" and u["pop4"] == pytest.approx(1.0) and u["pop0"] < 0
    for k in (5, 10):
        assert m[f"mgu@{k}"] < m["before"][f"mgu@{k}"] - 0.02
        assert m["valid"]["after"][f"mgu@{k}"] < m["valid"]["before"][f"mgu@{k}"]
    # accuracy kept (the target's standardised score is far ahead of any adjustment)
    assert m["hr@1"] == m["before"]["hr@1"] == 1.0
    assert m["groups"]["kind"] == "popularity" and len(m["groups"]["edges"]) == 5
    assert m["valid_scores"] == str(ckpt / "eval-valid-score")
    # The re-ranked scores are the standardised model scores minus alpha * the item's group adjustment.
    table = read_scores(ckpt / "rerank-popularity")
    groups = item_groups(tiny[0], "popularity")
    row = 0
    s = np.asarray(table["model_scores"].iloc[row])
    z = (s - s.mean()) / s.std()
    adj = np.array([u[groups.names[int(np.argmax(groups.membership[c]))]] for c in table["candidates"].iloc[row]])
    np.testing.assert_allclose(table["scores"].iloc[row], z - m["alpha"] * adj, rtol=1e-9)
    assert table["chosen"].iloc[row] == table["candidates"].iloc[row][int(np.argmax(table["scores"].iloc[row]))]


def test_auto_alpha_keeps_valid_hr1_within_five_percent(tmp_path, tiny):
    # A model whose only hits are targets of the most popular group, which it also favours among the other
    # candidates: pushing that group down makes it fairer but, pushed far enough, costs its hits.
    data, _ = tiny
    top = item_groups(data, "popularity").membership[:, -1] > 0
    rng = np.random.default_rng(1)
    scores = {}
    for split in ("valid", "test"):
        scores[split] = [(rng.normal(0, 1, len(c)) + 1.0 * top[np.asarray(c)] + 2.0 * (np.asarray(c) == t) * top[t]
                          ).tolist() for c, t in zip(data.split(split)["candidates"], data.split(split)["target"])]
    ckpt = make_ckpt(tmp_path, tiny, scores["valid"], scores["test"])
    m = rerank(scores=ckpt, alpha="auto", out=tmp_path / "rr")
    rows = {r["alpha"]: r for r in m["grid"]}
    base = rows[0.0]["hr@1"]
    assert base > 0.1
    for r in m["grid"]:
        assert r["eligible"] == (r["hr@1"] >= 0.95 * base - 1e-12)
    fairest = min(m["grid"], key=lambda r: r["mgu"])
    assert not fairest["eligible"]  # the bound did matter: the fairest alpha costs too many hits
    assert rows[m["alpha"]]["eligible"] and m["alpha"] > 0
    assert rows[m["alpha"]]["mgu"] == min(r["mgu"] for r in m["grid"] if r["eligible"]) < rows[0.0]["mgu"]
    assert m["valid"]["after"]["hr@1"] == pytest.approx(rows[m["alpha"]]["hr@1"])
    assert m["valid"]["after"]["hr@1"] >= 0.95 * m["valid"]["before"]["hr@1"] - 1e-12
    assert m["valid"]["after"]["mgu@5"] == pytest.approx(rows[m["alpha"]]["mgu@5"])


def test_rerank_accepts_an_evaluation_folder_and_says_which_valid_command_is_missing(tmp_path, tiny):
    ckpt = make_ckpt(tmp_path, tiny)
    m = rerank(scores=ckpt / "eval-test-score", alpha="0.5", out=tmp_path / "a")
    assert m["alpha"] == 0.5 and m["ckpt"] == str(ckpt)
    shutil.rmtree(ckpt / "eval-valid-score")
    with pytest.raises(CheckpointError) as e:
        rerank(scores=ckpt, alpha="auto")
    text = one_line(e)
    assert "eval-valid-score/scores.parquet is missing" in text
    assert f"run `llmrec evaluate --ckpt {ckpt} --data {tiny[1]} --split valid --mode score` first" in text


def test_rerank_bad_input_is_a_one_line_error(tmp_path, tiny):
    data, data_dir = tiny
    ckpt = make_ckpt(tmp_path, tiny)
    with pytest.raises(ConfigError, match=r"^re-ranking alpha must be >= 0, got -0\.5$") as e:
        rerank(scores=ckpt, alpha="-0.5")
    one_line(e)
    with pytest.raises(ConfigError, match=r"^option --alpha: got 'much', expected `auto` or a number >= 0$"):
        rerank(scores=ckpt, alpha="much")
    with pytest.raises(ConfigError, match=r"^option --grouping: got 'brand', expected one of popularity, genre$"):
        rerank(scores=ckpt, grouping="brand")
    with pytest.raises(ConfigError, match=r"option --grouping: got 'brand'"):  # the Python API checks it too
        run_rerank(RerankConfig(scores=ckpt, grouping="brand"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^K=25 exceeds the 20 ranked items per sample") as e:
        rerank(scores=ckpt, ks=[1, 5, 10, 25])
    one_line(e)

    # genre grouping on a catalog without genres (same catalog and split, so it gets that far)
    no_genres = dataclasses.replace(data, items=data.items.assign(genres=[[] for _ in range(data.n_items)]))
    no_genres.save(tmp_path / "no-genres")
    with pytest.raises(ConfigError, match=r"^genre grouping needs genres in items\.parquet") as e:
        rerank(scores=ckpt, grouping="genre", data=tmp_path / "no-genres")
    one_line(e)

    # scores from another split: the same catalog, but two users swapped between valid and test
    users = data.users.copy()
    v, t = users.index[users["split"] == "valid"][0], users.index[users["split"] == "test"][0]
    users.loc[[v, t], "split"] = ["test", "valid"]
    dataclasses.replace(data, users=users).save(tmp_path / "other-split")
    with pytest.raises(CheckpointError, match=r"are from another split than .*other-split: its training users "
                                              r"differ") as e:
        rerank(scores=ckpt, data=tmp_path / "other-split")
    one_line(e)

    # a folder named eval-test-score that holds the valid ranking
    shutil.rmtree(ckpt / "eval-test-score")
    shutil.copytree(ckpt / "eval-valid-score", ckpt / "eval-test-score")
    with pytest.raises(DataError, match=r"eval-test-score/scores\.parquet holds the valid split, expected test") as e:
        rerank(scores=ckpt)
    one_line(e)

    # a generate-mode ranking has no scores to re-rank
    shutil.rmtree(ckpt / "eval-test-score")
    write_eval(ckpt / "eval-test-score", ranked_table(data, "test", chosen=data.split("test")["target"].tolist(),
                                                      mode="generate"), data_dir, ckpt)
    with pytest.raises(ConfigError, match=r"holds a `generate` ranking") as e:
        rerank(scores=ckpt)
    one_line(e)

    with pytest.raises(CheckpointError, match="is not an LLM checkpoint"):
        rerank(scores=data_dir)


# ------------------------------------------------------------------------------------------------ report
def _png_ok(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_write_report_shows_the_hand_computed_shares(tmp_path):
    data, groups = toy()
    score = {**split_metrics(ranked_table(data, "test", scores=[[0.1, 0.9, 0.9], [2.0, -1.0, 2.0]]), "score"),
             **ranked_fairness(ranked_table(data, "test", scores=[[0.1, 0.9, 0.9], [2.0, -1.0, 2.0]]), data, groups)}
    choice = {"hr@1": 0.0, "valid_ratio": 0.5, "candidates/ndcg@5": 0.0,
              **ranked_fairness(ranked_table(data, "test", chosen=[4, -1], mode="generate"), data, groups)}
    path = write_report(tmp_path / "r", [ReportEntry("scorer", score), ReportEntry("generator", choice)])
    text = path.read_text()
    assert text.startswith(MARKER)
    # The table: hr@1 0 (sample 2's target ties with item 3: ties count against the model), NDCG@5 of ranks
    # 2 and 1 = (1/log2(4) + 1/log2(3)) / 2, MGU@1 0.4/3, DGU@1 0.3; the generator has no MGU@5.
    ndcg = (1 / np.log2(4) + 1 / np.log2(3)) / 2
    assert f"| scorer | 0.0000 | 1.0000 | {ndcg:.4f} | {0.4 / 3:.4f} | – | – | 0.3000 |" in text
    assert "| generator | 0.0000 | 0.5000 | 0.0000 | 0.5333 | – | – | 1.2000 | – |" in text  # no sample count known
    assert f"| scorer | 0.0000 | 1.0000 | {ndcg:.4f} | {0.4 / 3:.4f} | – | – | 0.3000 | 2 |" in text  # split_metrics'
    assert "| model | hr@1 | valid_ratio | candidates/ndcg@5 | mgu@1 | mgu@5 | mgu@10 | dgu@1 | n_samples |" in text
    assert "`n_samples` is how many samples each row was ranked on" in text
    counted = write_report(tmp_path / "n", [ReportEntry("subset", {**choice, "n_samples": 30}),
                                            ReportEntry("whole", choice, n_samples=9282)]).read_text()
    assert "| 1.2000 | 30 |" in counted and "| whole | 0.0000 | 0.5000 | 0.0000 | 0.5333 | – | – | 1.2000 | 9282 |" \
        in counted
    # GP@1 rows: scorer (1/2, 0, 1/2), generator (0, 1, 0); GH common to both.
    assert "| GH | 0.4000 | 0.2000 | 0.4000 |" in text
    assert "| scorer: GP@1 | 0.5000 | 0.0000 | 0.5000 |" in text
    assert "| generator: GP@1 | 0.0000 | 1.0000 | 0.0000 |" in text
    assert "![GP@1 vs GH per group](gp-gh.png)" in text and "![MGU@K against K](mgu-k.png)" in text
    assert "GP@20 is then the candidate distribution whatever the model does" in text
    assert "standardised over its candidates" in text
    for name in ("gp-gh.png", "mgu-k.png"):
        _png_ok(tmp_path / "r" / name)


def test_report_command_on_checkpoint_rerank_and_encoder_folders(tmp_path, tiny):
    from llmrec.encoders.train import TrainEncoderConfig, run_train_encoder

    ckpt = make_ckpt(tmp_path, tiny)
    rr = rerank(scores=ckpt, alpha="auto")
    run_train_encoder(TrainEncoderConfig(data=tiny[1], out=tmp_path / "mostpop", model="mostpop"))
    enc = json.loads((tmp_path / "mostpop" / "metrics.json").read_text())["test"]
    out = tmp_path / "report"
    run_report(resolve_config(ReportConfig, {"dirs": [str(ckpt), str(tmp_path / "mostpop"),
                                                      str(ckpt / "rerank-popularity")], "out": str(out)}))
    text = (out / "report.md").read_text()
    # each ranking once: the checkpoint's test ranking, its re-ranking (named twice), the encoder
    rows = [line for line in text.splitlines() if line.startswith(("| ckpt", "| mostpop"))]
    labels = [r.split(" | ")[0][2:] for r in rows if r.count("|") == 10]
    assert labels == ["ckpt score", f"ckpt re-ranked (popularity, alpha={rr['alpha']:g})", "mostpop (mostpop)"]
    assert f"| {rr['before']['mgu@5']:.4f} |" in rows[0] and f"| {rr['mgu@5']:.4f} |" in rows[1]
    assert rows[2].startswith(f"| mostpop (mostpop) | {enc['candidates/hr@1']:.4f} | 1.0000 | "
                              f"{enc['candidates/ndcg@5']:.4f} | {enc['candidates/mgu@1']:.4f} |")
    n_test = len(read_scores(ckpt / "eval-test-score"))  # each row with the count it was ranked on
    assert rows[0].endswith(f" | {n_test} |") and rows[1].endswith(f" | {n_test} |")
    assert rows[2].endswith(f" | {enc['n_samples']} |")
    assert "least popular first: `pop0`" in text and f"alpha = {rr['alpha']:g} (chosen on valid)" in text
    for name in ("gp-gh.png", "mgu-k.png"):
        assert f"]({name})" in text
        _png_ok(out / name)
    # written again over itself; a folder that is not a report is refused
    run_report(resolve_config(ReportConfig, {"dirs": [str(ckpt)], "out": str(out)}))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="is not empty and is not a previous `llmrec report` output"):
        run_report(resolve_config(ReportConfig, {"dirs": [str(ckpt)], "out": str(tmp_path / "mine")}))


def test_report_bad_input_is_a_one_line_error(tmp_path, tiny):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="is not an evaluation, LLM checkpoint, encoder or rerank folder") as e:
        run_report(ReportConfig(dirs=[tmp_path / "empty"], out=tmp_path / "r"))
    one_line(e)
    with pytest.raises(ConfigError, match="report needs one folder at least"):
        run_report(ReportConfig(out=tmp_path / "r"))
    with pytest.raises(ConfigError, match=r"option --bars-k: got 0"):
        run_report(ReportConfig(dirs=[tmp_path / "empty"], bars_k=0))
    # an evaluation folder whose data is gone and that stores no fairness metrics
    data, _ = tiny
    ckpt = fake_checkpoint(tmp_path / "ckpt", data, tmp_path / "gone")
    rng = np.random.default_rng(0)
    write_eval(ckpt / "eval-test-score", ranked_table(data, "test", rng.normal(size=(len(data.split("test")), 20))
                                                      .tolist()), tmp_path / "gone", ckpt)
    with pytest.raises(LlmrecError, match="no fairness metrics stored and no data folder recorded .*pass --data") as e:
        run_report(ReportConfig(dirs=[ckpt], out=tmp_path / "r"))
    one_line(e)
    run_report(ReportConfig(dirs=[ckpt], out=tmp_path / "r", data=tiny[1]))  # --data fixes it
    assert "| ckpt score |" in (tmp_path / "r" / "report.md").read_text()


# ------------------------------------------------------------------------------------------------ encoders
def test_encoder_metrics_report_fairness_of_full_and_candidate_ranking(tmp_path, synthetic_llara_dir):
    from llmrec.encoders.train import TrainEncoderConfig, run_train_encoder

    path = synthetic_llara_dir
    data = ProcessedDataset.load(path)
    run_train_encoder(TrainEncoderConfig(data=path, out=tmp_path / "pop", model="mostpop"))
    m = json.loads((tmp_path / "pop" / "metrics.json").read_text())
    assert m["test"]["candidates/hr@1"] >= 0 and "full/ndcg@10" in m["test"]  # existing keys kept

    # By hand: MostPop ranks by training count (ties: lower id first); full ranking drops the items seen
    # before the target (the target itself stays), candidates are ranked among themselves.
    counts = np.bincount(np.concatenate(data.train_sequences()), minlength=data.n_items + 1)
    groups = popularity_groups(data.train_sequences(), data.n_items, 5)
    group_of = groups.membership.argmax(axis=1)
    order = sorted(range(1, data.n_items + 1), key=lambda i: (-counts[i], i))
    test = data.split("test")
    gh = np.bincount(group_of[np.concatenate(test["history"].tolist())], minlength=5) / sum(
        len(h) for h in test["history"])
    full_top, cand_top = [], []
    for u, p, target, cands in zip(test["user_id"], test["position"], test["target"], test["candidates"]):
        seen = set(data.user_sequence(u)[:p].tolist()) - {int(target)}
        full_top.append([i for i in order if i not in seen][:20])
        cand_top.append(sorted(cands, key=lambda i: (-counts[i], i))[:10])
    for prefix, tops, ks in (("full/", full_top, (1, 5, 10, 20)), ("candidates/", cand_top, (1, 5, 10))):
        for k in ks:
            slots = np.concatenate([t[:k] for t in tops])  # fewer than k when few unseen items are left
            gp = np.bincount(group_of[slots], minlength=5) / len(slots)
            gu = gp - gh
            assert m["test"][f"{prefix}mgu@{k}"] == pytest.approx(np.abs(gu).mean()), (prefix, k)
            assert m["test"][f"{prefix}dgu@{k}"] == pytest.approx(gu.max() - gu.min()), (prefix, k)
            assert [m["test"][f"{prefix}gu@{k}/pop{g}"] for g in range(5)] == pytest.approx(gu.tolist())
    assert [m["test"][f"gh/pop{g}"] for g in range(5)] == pytest.approx(gh.tolist())
    assert "candidates/mgu@20" not in m["test"] and "full/mgu@20" in m["test"]
    # MostPop over-recommends the most popular group everywhere
    assert m["test"]["candidates/gu@1/pop4"] > 0.3 and m["valid"]["full/gu@1/pop4"] > 0.3


# ------------------------------------------------------------------------------------------------ end to end
def test_trained_checkpoint_evaluate_rerank_report(tmp_path, tiny):
    """A real (tiny) train-llm checkpoint: evaluate valid, re-rank its saved scores, report."""
    from llmrec.commands.evaluate import EvaluateConfig, run_evaluate
    from llmrec.llm.train import run_train_llm

    data_dir = tiny[1]
    ckpt = tmp_path / "ckpt"
    run_train_llm(tiny_config(tmp_path, data=data_dir, out=ckpt, prompt="text", max_steps=1, max_test_samples=12,
                              max_valid_samples=4))
    with pytest.raises(CheckpointError, match="--split valid --mode score` first"):
        run_rerank(RerankConfig(scores=ckpt))
    run_evaluate(EvaluateConfig(ckpt=ckpt, data=data_dir, split="valid", device="cpu", max_samples=12))
    m = rerank(scores=ckpt, alpha="auto")
    test = json.loads((ckpt / "eval-test-score" / "metrics.json").read_text())
    assert m["before"]["hr@1"] == pytest.approx(test["hr@1"]) and m["n_samples"] == 12
    assert m["valid"]["after"]["hr@1"] >= 0.95 * m["valid"]["before"]["hr@1"] - 1e-12
    run_report(ReportConfig(dirs=[ckpt], out=tmp_path / "report"))
    text = (tmp_path / "report" / "report.md").read_text()
    assert f"| ckpt score | {test['hr@1']:.4f} |" in text and "| ckpt re-ranked (popularity" in text
    _png_ok(tmp_path / "report" / "mgu-k.png")
