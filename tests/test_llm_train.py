"""LLM stage, training and checkpoints: Lightning fit, LoRA, save/load, mismatches, CLI end to end (tiny)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_llm_support import save_hf_folder, saved_encoder, tiny_config, tiny_dataset
from tiny import SMALL_DATA, TINY_LLAMA, yaml_lines

from llmrec.data.catalog import Catalog
from llmrec.encoders.checkpoint import load_encoder
from llmrec.base.errors import CheckpointError, ConfigError
from llmrec.llm.checkpoint import load_recommender, save_checkpoint
from llmrec.llm.datamodule import prompt_loader
from llmrec.llm.ranking import score_candidates
from llmrec.llm.train import build_recommender, fit


def save(folder, lm, facts, small_data, encoder_dir):
    return save_checkpoint(folder, lm, facts, Catalog.from_dataset(small_data), encoder_dir if lm.projector else None)


def train_steps(lm, small_data, n: int = 2, lr: float = 1e-2) -> None:
    """A few plain AdamW steps (hybrid and text-only), cheaper than a Lightning fit, to move every weight."""
    params = [p for p in lm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    lm.train()
    for i, batch in zip(range(n), prompt_loader(small_data.split("train"), lm.builder, 8, True)):
        lm.loss(batch, hybrid=i % 2 == 0).backward()
        opt.step()
        opt.zero_grad()


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_lora_steps_change_adapters_and_projector_but_not_base_weights(small_data, encoder, tmp_path):
    config = tiny_config(tmp_path, finetune="lora", curriculum="constant", max_steps=3, lr=1e-2)
    lm, facts = build_recommender(config, small_data, encoder)
    assert facts.finetune == "lora"
    before, proj_before = snapshot(lm.model), snapshot(lm.projector)
    enc_before = snapshot(encoder)
    fit(lm, small_data, config)
    after = snapshot(lm.model)
    lora = [n for n in after if "lora_" in n]
    base = [n for n in after if "lora_" not in n and "trainable_tokens" not in n]
    assert lora and base
    assert any(not torch.equal(before[n], after[n]) for n in lora if "lora_B" in n)
    assert all(torch.equal(before[n], after[n]) for n in base)
    assert all(not torch.equal(proj_before[n], p) for n, p in snapshot(lm.projector).items())
    assert all(torch.equal(enc_before[n], p) for n, p in snapshot(encoder).items())


def test_a_text_only_curriculum_never_updates_the_projector(small_data, encoder, tmp_path):
    config = tiny_config(tmp_path, curriculum="constant", curriculum_constant=0.0, max_steps=3)
    lm, _ = build_recommender(config, small_data, encoder)
    proj_before, model_before = snapshot(lm.projector), snapshot(lm.model)
    fit(lm, small_data, config)
    assert all(torch.equal(proj_before[n], p) for n, p in snapshot(lm.projector).items())
    assert any(not torch.equal(model_before[n], p) for n, p in snapshot(lm.model).items())


def test_curriculum_callback_sets_the_hybrid_probability_from_global_progress():
    from types import SimpleNamespace

    from llmrec.llm.curriculum import CurriculumCallback

    module = SimpleNamespace(hybrid_probability=None, log=lambda *args, **kwargs: None)
    for schedule, expected in (("linear", [0.0, 0.25, 0.75]), ("step", [0.0, 0.0, 1.0]),
                               ("constant", [0.3, 0.3, 0.3])):
        callback = CurriculumCallback(schedule, constant=0.3)
        seen = []
        for step in (0, 10, 30):
            callback.on_train_batch_start(SimpleNamespace(global_step=step, estimated_stepping_batches=40), module,
                                          None, 0)
            seen.append(module.hybrid_probability)
        assert seen == pytest.approx(expected), schedule


def test_the_best_validation_round_is_kept_not_the_last(small_data, encoder, tmp_path):
    from types import SimpleNamespace

    from llmrec.llm.module import LLMRecModule
    from llmrec.training.keep_best import KeepBest

    lm, _ = build_recommender(tiny_config(tmp_path), small_data, encoder)
    module = LLMRecModule(lm)
    keep = KeepBest("valid/hr@1")
    trainer = SimpleNamespace(sanity_checking=False, global_step=5, current_epoch=0,
                              callback_metrics={"valid/hr@1": torch.tensor(0.75), "train/loss": torch.tensor(3.0)})
    params = module.trainable_named_parameters()
    best = {n: p.detach().clone() for n, p in params.items()}
    keep.on_validation_end(trainer, module)
    with torch.no_grad():
        for p in params.values():
            p.add_(1.0)
    trainer.global_step, trainer.callback_metrics = 10, {"valid/hr@1": torch.tensor(0.25)}  # worse: not kept
    keep.on_validation_end(trainer, module)
    assert [h["valid/hr@1"] for h in keep.history] == [0.75, 0.25] and keep.best_score == 0.75
    assert keep.best_step == 5 and "train/loss" not in keep.history[0]
    keep.on_fit_end(trainer, module)
    assert all(torch.equal(p, best[n]) for n, p in module.trainable_named_parameters().items())


@pytest.mark.parametrize("finetune", ["full", "lora", "lora-qwen2-untied", "lora-qwen2-padded", "full-qwen2-padded",
                                      "lora-llama-padded"])
def test_save_then_load_gives_identical_scores(finetune, small_data, encoder, encoder_dir, tmp_path):
    kind, *arch = finetune.split("-", 1)
    arch = arch[0] if arch else ""
    padded = 64 if arch.endswith("padded") else 0  # embedding rows beyond the tokenizer (Qwen2-style)
    llm = str(save_hf_folder(tmp_path / "base", arch.split("-")[0], small_data, padded_rows=padded)) if arch else "tiny"
    config = tiny_config(tmp_path, llm=llm, finetune=kind)
    lm, facts = build_recommender(config, small_data, encoder)
    if padded:  # the slot tokens took padding rows: the matrix was not resized, nothing was shrunk
        assert facts.embedding_rows == facts.base.fingerprint["embedding_rows"] > facts.vocab_size
    train_steps(lm, small_data)
    lm.eval()
    batch = next(iter(prompt_loader(small_data.split("test"), lm.builder, 3, False)))
    expected, expected_text = score_candidates(lm, batch), score_candidates(lm, batch, hybrid=False)
    save(tmp_path / "ckpt", lm, facts, small_data, encoder_dir)
    files = {p.name for p in (tmp_path / "ckpt").rglob("*") if p.is_file()}
    assert not any(f.endswith((".bin", ".pt", ".pkl", ".ckpt")) for f in files)
    assert {"projector.safetensors", "catalog.parquet", "encoder.safetensors"} <= files
    if kind == "lora" and arch:  # only the adapter: no copy of a real base model's weights
        assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    loaded = load_recommender(tmp_path / "ckpt", small_data)
    assert loaded.model.get_output_embeddings().weight.shape[0] == facts.embedding_rows
    # LoRA: loaded for inference, the adapters and trained rows are merged into plain weights, which changes
    # the scores by float32 rounding only (summed log-probs of a few tokens: within 1e-4) and no ranking
    tolerance = {"rtol": 1e-5, "atol": 1e-4} if kind == "lora" else {}
    assert not any("lora" in name or "token_adapter" in name for name, _ in loaded.model.named_modules())
    torch.testing.assert_close(score_candidates(loaded, batch), expected, **tolerance)
    torch.testing.assert_close(score_candidates(loaded, batch, hybrid=False), expected_text, **tolerance)
    assert torch.equal(score_candidates(loaded, batch).argsort(dim=1), expected.argsort(dim=1))
    if kind == "lora":  # kept as adapters to be trained further: the very same computation
        unmerged = load_recommender(tmp_path / "ckpt", small_data, merge_adapters=False)
        assert any("lora" in name for name, _ in unmerged.model.named_modules())
        torch.testing.assert_close(score_candidates(unmerged, batch), expected)


@pytest.mark.parametrize("arch", ["tiny", "llama", "gpt2"])  # gpt2: a tied LM head, as SmolLM2's
def test_adapters_merged_ranks_as_the_merged_load_and_changes_no_saved_file(arch, small_data, encoder, encoder_dir,
                                                                            tmp_path):
    """train-llm / train-sdpo rank their test split inside `adapters_merged`, then save: the ranking is the one
    the merged load gives, and the saved adapter, token rows and projector are those of the unmerged model."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from llmrec.llm.lora import adapters_merged

    llm = "tiny" if arch == "tiny" else str(save_hf_folder(tmp_path / "base", arch, small_data))
    lm, facts = build_recommender(tiny_config(tmp_path, llm=llm, finetune="lora"), small_data, encoder)
    train_steps(lm, small_data)
    lm.eval()
    batch = next(iter(prompt_loader(small_data.split("test"), lm.builder, 3, False)))
    unmerged = score_candidates(lm, batch)
    with lm.model.disable_adapter():
        untrained = score_candidates(lm, batch)
    assert (untrained - unmerged).abs().max() > 1e-3  # the adapters matter: merging them is not a no-op
    save(tmp_path / "before", lm, facts, small_data, encoder_dir)
    tuner_layers = [m for m in lm.model.modules() if isinstance(m, BaseTunerLayer)]
    with adapters_merged(lm.model):
        assert tuner_layers and all(m.merged for m in tuner_layers)  # plain projections inside the block
        merged = score_candidates(lm, batch)
    assert not any(m.merged for m in tuner_layers)
    loaded = load_recommender(tmp_path / "before", small_data)  # merged at load (merge_and_unload)
    torch.testing.assert_close(merged, score_candidates(loaded, batch), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-4)  # float rounding only
    assert torch.equal(merged.argsort(dim=1), unmerged.argsort(dim=1))
    torch.testing.assert_close(score_candidates(lm, batch), unmerged, rtol=1e-5, atol=1e-5)  # unmerged again
    save(tmp_path / "after", lm, facts, small_data, encoder_dir)
    saved = sorted(p.relative_to(tmp_path / "before") for p in (tmp_path / "before").rglob("*.safetensors"))
    assert {p.name for p in saved} >= {"adapter_model.safetensors", "projector.safetensors"}
    for name in saved:
        assert (tmp_path / "before" / name).read_bytes() == (tmp_path / "after" / name).read_bytes(), name


def test_the_score_rule_is_saved_restored_and_old_checkpoints_rank_by_the_sum(tmp_path):
    from llmrec.llm.checkpoint import FACTS, read_facts
    from llmrec.llm.logprobs import sequence_logprobs

    small_data = tiny_dataset(**SMALL_DATA,  # titles of 3 to 6 words
                        titles=[" ".join(["Long"] * (1 + i % 4)) + f" Title {i}" for i in range(24)])
    lm, facts = build_recommender(tiny_config(tmp_path, prompt="text", score_norm="mean"), small_data, None)
    lm.eval()
    batch = next(iter(prompt_loader(small_data.split("test"), lm.builder, 3, False)))
    with torch.no_grad():
        summed = sequence_logprobs(lm, batch, batch.candidates)
    lengths = torch.tensor([[len(lm.builder.answer_ids[c]) for c in row] for row in batch.candidates.tolist()])
    assert len(set(lengths.flatten().tolist())) > 1  # answers of different lengths: the rule matters
    save(tmp_path / "ckpt", lm, facts, small_data, None)
    assert read_facts(tmp_path / "ckpt").score_norm == "mean"
    loaded = load_recommender(tmp_path / "ckpt", small_data)
    assert loaded.score_norm == "mean"
    torch.testing.assert_close(score_candidates(loaded, batch), summed / lengths, rtol=1e-4, atol=1e-5)
    overridden = load_recommender(tmp_path / "ckpt", small_data, score_norm="sum")
    assert overridden.score_norm == "sum"
    torch.testing.assert_close(score_candidates(overridden, batch), summed, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="--score-norm: got 'max'"):
        load_recommender(tmp_path / "ckpt", small_data, score_norm="max")
    # a checkpoint written before the rule was recorded ranks by the sum, as it was trained and evaluated
    written = json.loads((tmp_path / "ckpt" / FACTS).read_text())
    del written["score_norm"]
    (tmp_path / "ckpt" / FACTS).write_text(json.dumps(written))
    old = load_recommender(tmp_path / "ckpt", small_data)
    assert old.score_norm == "sum"
    torch.testing.assert_close(score_candidates(old, batch), summed, rtol=1e-4, atol=1e-4)
    (tmp_path / "ckpt" / FACTS).write_text(json.dumps({**written, "score_norm": "median"}))
    with pytest.raises(CheckpointError, match=r"checkpoint.json: field `score_norm` is 'median' \(a string\); "
                                              r"expected one of 'sum', 'mean'; retrain it with `llmrec train-llm`$"):
        load_recommender(tmp_path / "ckpt", small_data)


def swapped_tokenizer(base, folder):
    """A copy of `base` whose tokenizer maps two words to each other's ids: same config, same size."""
    import shutil

    shutil.copytree(base, folder)
    spec = json.loads((folder / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = sorted(w for w in vocab if w.isalpha())[:2]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    return folder


def test_checkpoint_and_base_model_must_match(small_data, encoder, encoder_dir, tmp_path):
    base = save_hf_folder(tmp_path / "base", "llama", small_data, hidden=32)
    config = tiny_config(tmp_path, llm=str(base), max_steps=1)
    lm, facts = build_recommender(config, small_data, encoder)
    save(tmp_path / "ckpt", lm, facts, small_data, encoder_dir)
    refusals = {"wider": (save_hf_folder(tmp_path / "wider", "llama", small_data, hidden=48), "config differs"),
                "reseeded": (save_hf_folder(tmp_path / "reseeded", "llama", small_data, seed=1), "weights differ from"),
                "retokenized": (swapped_tokenizer(base, tmp_path / "retokenized"), "tokenizer differs"),
                "qwen2": (save_hf_folder(tmp_path / "qwen2", "qwen2", small_data), "model type qwen2 but .* llama")}
    for name, (folder, message) in refusals.items():
        with pytest.raises(CheckpointError, match=f"does not fit .*{message}"):
            load_recommender(tmp_path / "ckpt", small_data, llm=folder)
    other = tiny_dataset(**{**SMALL_DATA, "n_items": 30})
    with pytest.raises(CheckpointError, match="another catalog"):
        load_recommender(tmp_path / "ckpt", other)
    with pytest.raises(CheckpointError, match="not an LLM checkpoint"):
        load_recommender(tmp_path / "base", small_data)
    reseeded = tiny_dataset(**SMALL_DATA)  # same catalog, other held-out users
    reseeded.users = reseeded.users.assign(split=reseeded.users["split"].to_numpy()[::-1])
    with pytest.raises(CheckpointError, match="cannot be used with .*training users differ"):
        load_recommender(tmp_path / "ckpt", reseeded)
    # same shape, other weights
    retrained = load_encoder(saved_encoder(small_data, tmp_path / "enc2", seed=1), small_data)
    with pytest.raises(CheckpointError, match="weights differ"):
        load_recommender(tmp_path / "ckpt", small_data, retrained, llm=base)
    with pytest.raises(ConfigError, match="no such folder"):  # a mistyped --llm is not silently rebuilt
        load_recommender(tmp_path / "ckpt", small_data, llm=tmp_path / "typo")
    assert load_recommender(tmp_path / "ckpt", small_data, llm=base).prompt == "hybrid"
    base.rename(tmp_path / "moved")  # the base moved and nobody says where: a clear error, then --llm works
    with pytest.raises(CheckpointError, match="pass the base model with --llm \(its folder, .gguf file or preset name\)$"):
        load_recommender(tmp_path / "ckpt", small_data)
    assert load_recommender(tmp_path / "ckpt", small_data, llm=tmp_path / "moved").prompt == "hybrid"


def test_a_checkpoint_folder_moves_to_another_place_and_loads_alone(small_data, encoder, encoder_dir, tmp_path):
    import shutil

    for kind in ("full", "lora"):  # --llm tiny: full weights, or the adapter with a copy of the tiny base
        config = tiny_config(tmp_path / kind, finetune=kind)
        lm, facts = build_recommender(config, small_data, encoder)
        train_steps(lm, small_data)
        lm.eval()
        batch = next(iter(prompt_loader(small_data.split("test"), lm.builder, 3, False)))
        expected = score_candidates(lm, batch)
        save(tmp_path / kind / "ckpt", lm, facts, small_data, encoder_dir)
        moved = tmp_path / "elsewhere" / kind
        shutil.copytree(tmp_path / kind / "ckpt", moved)
        shutil.rmtree(tmp_path / kind)  # the original checkpoint, the tiny base cache ...
        copy_of_encoder = tmp_path / "enc-copy"
        shutil.copytree(encoder_dir, copy_of_encoder, dirs_exist_ok=True)
        shutil.rmtree(encoder_dir)  # ... and the encoder folder are gone
        try:
            loaded = load_recommender(moved)  # no data, no encoder, no base given
            torch.testing.assert_close(score_candidates(loaded, batch), expected)
        finally:
            shutil.copytree(copy_of_encoder, encoder_dir)


def test_an_encoder_trained_on_another_catalog_or_split_is_refused(small_data, tmp_path):
    enc_dir = saved_encoder(small_data, tmp_path / "enc", hidden_size=8)
    assert load_encoder(enc_dir, small_data).hidden_size == 8
    renamed = tiny_dataset(**SMALL_DATA,
                           titles=[f"Other {i}" for i in range(24)])
    with pytest.raises(CheckpointError, match="another catalog"):
        load_encoder(enc_dir, renamed)
    # same catalog, other train/valid/test users: the encoder saw some of these valid/test users
    reshuffled = tiny_dataset(**SMALL_DATA)
    reshuffled.users = reshuffled.users.assign(split=reshuffled.users["split"].to_numpy()[::-1])
    with pytest.raises(CheckpointError, match=f"{enc_dir} cannot be used with .*training users differ.*train-encoder"):
        load_encoder(enc_dir, reshuffled)
    loo = tiny_dataset(**SMALL_DATA)
    loo.meta = {**loo.meta, "protocol": "loo"}
    with pytest.raises(CheckpointError, match="trained on the `llara` protocol"):
        load_encoder(enc_dir, loo)
    last = tiny_dataset(**SMALL_DATA, eval_positions="last")
    assert load_encoder(enc_dir, last).hidden_size == 8  # same users held out: `last` vs `all` is no leak


def test_cli_train_llm_then_evaluate_in_every_mode(small_data, tmp_path):
    from llmrec.commands.cli import main
    from llmrec.data.dataset import ProcessedDataset
    from llmrec.encoders.checkpoint import save_encoder
    from llmrec.encoders.registry import build_encoder

    small_data.save(tmp_path / "data")
    save_encoder(build_encoder("gru4rec", small_data.n_items, hidden_size=8, max_length=10), tmp_path / "enc",
                 ProcessedDataset.load(tmp_path / "data"), index=False)
    cfg = tmp_path / "llm.yaml"
    cfg.write_text(yaml_lines({**TINY_LLAMA, "batch_size": 8, "max_steps": 2, "max_valid_samples": 4, "device": "cpu"}))
    args = ["train-llm", "--data", str(tmp_path / "data"), "--encoder", str(tmp_path / "enc"), "--llm", "tiny",
            "--config", str(cfg), "--cache-dir", str(tmp_path / "cache"), "--curriculum", "cosine",
            "--score-norm", "mean", "--out", str(tmp_path / "ckpt")]
    assert main(args) == 0
    ckpt = tmp_path / "ckpt"
    assert json.loads((ckpt / "checkpoint.json").read_text())["score_norm"] == "mean"
    assert "mean of its answer's token log-probs" in (ckpt / "README.md").read_text()  # the model card says so
    assert {"config.yaml", "metrics.json", "checkpoint.json", "projector.safetensors", "catalog.parquet", "encoder",
            "tokenizer", "logs", "eval-test-score"} <= {p.name for p in ckpt.iterdir()}
    metrics = json.loads((ckpt / "metrics.json").read_text())
    assert metrics["test/n_samples"] == len(small_data.split("test")) and 0 <= metrics["test/hr@1"] <= 1
    assert metrics["test/score_norm"] == "mean"
    curves = (ckpt / "logs" / "csv" / "metrics.csv").read_text().splitlines()
    assert "train/loss" in curves[0] and "valid/hr@1" in curves[0] and len(curves) >= 2
    import pandas as pd

    scores = pd.read_parquet(ckpt / "eval-test-score" / "scores.parquet")
    assert len(scores) == len(small_data.split("test")) and set(scores["mode"]) == {"score"}
    assert all(len(s) == len(c) for s, c in zip(scores["scores"], scores["candidates"]))
    for mode in ("score", "generate", "constrained"):
        assert main(["evaluate", "--ckpt", str(ckpt), "--data", str(tmp_path / "data"), "--mode", mode,
                     "--max-new-tokens", "8", "--device", "cpu"]) == 0
        m = json.loads((ckpt / f"eval-test-{mode}" / "metrics.json").read_text())
        for key in ("hr@1", "hr@1_valid", "valid_ratio", "candidates/ndcg@5", "n_samples", "seed", "protocol",
                    "mode", "hr@1_last"):
            assert key in m, key
        assert m["mode"] == mode and m["n_samples"] == len(small_data.split("test")) and m["users_per_second"] > 0
        ranked = pd.read_parquet(ckpt / f"eval-test-{mode}" / "scores.parquet")
        assert len(ranked) == m["n_samples"] and set(ranked["split"]) == {"test"}
        assert m["hr@1"] == pytest.approx((ranked["chosen"] == ranked["target"]).mean())
        if mode != "generate":
            assert m["valid_ratio"] == 1.0
        assert m.get("score_norm") == ("mean" if mode == "score" else None)  # the checkpoint's rule ranked
    # --score-norm overrides the checkpoint's rule for one evaluation, and its metrics.json says which rule ranked
    assert main(["evaluate", "--ckpt", str(ckpt), "--data", str(tmp_path / "data"), "--score-norm", "sum",
                 "--device", "cpu", "--out", str(tmp_path / "eval-sum")]) == 0
    assert json.loads((tmp_path / "eval-sum" / "metrics.json").read_text())["score_norm"] == "sum"
    mean = pd.read_parquet(ckpt / "eval-test-score" / "scores.parquet")
    summed = pd.read_parquet(tmp_path / "eval-sum" / "scores.parquet")
    lm = load_recommender(ckpt)
    lengths = [[len(lm.builder.answer_ids[c]) for c in row] for row in mean["candidates"]]
    np.testing.assert_allclose(np.concatenate(mean["scores"].tolist()),
                               np.concatenate(summed["scores"].tolist()) / np.concatenate(lengths), rtol=1e-4)
    # a non-checkpoint folder refuses to be overwritten; a missing checkpoint is a clear error (exit 2)
    assert main(args[:-1] + [str(tmp_path / "data")]) == 2
    assert main(["evaluate", "--ckpt", str(tmp_path / "nope"), "--data", str(tmp_path / "data")]) == 2


def test_text_only_prompts_train_without_an_encoder(small_data, tmp_path):
    config = tiny_config(tmp_path, prompt="text", max_steps=2)
    lm, facts = build_recommender(config, small_data, None)
    assert lm.projector is None and facts.encoder_hidden is None
    _, keep_best = fit(lm, small_data, config)
    assert 0.0 <= keep_best.best_score <= 1.0 and keep_best.history
    save(tmp_path / "ckpt", lm, facts, small_data, None)
    assert load_recommender(tmp_path / "ckpt", small_data).projector is None
    assert not (tmp_path / "ckpt" / "encoder").exists()
