"""LLM stage, training and checkpoints: Lightning fit, LoRA, save/load, mismatches, CLI end to end (tiny)."""

from __future__ import annotations

import json

import pytest
import torch
from test_llm_support import MeanEncoder, save_hf_folder, tiny_config, tiny_dataset

from llmrec.errors import CheckpointError, ConfigError
from llmrec.llm.checkpoint import load_recommender, save_checkpoint
from llmrec.llm.datamodule import prompt_loader
from llmrec.llm.ranking import score_candidates
from llmrec.llm.train import build_recommender, fit


@pytest.fixture(scope="module")
def data():
    return tiny_dataset(n_users=18, n_items=24, seq_len=7, n_candidates=6)


@pytest.fixture(scope="module")
def encoder(data):
    return MeanEncoder(data.n_items)


def train_steps(lm, data, n: int = 2, lr: float = 1e-2) -> None:
    """A few plain AdamW steps (hybrid and text-only), cheaper than a Lightning fit, to move every weight."""
    params = [p for p in lm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    lm.train()
    for i, batch in zip(range(n), prompt_loader(data.split("train"), lm.builder, 8, True)):
        lm.loss(batch, hybrid=i % 2 == 0).backward()
        opt.step()
        opt.zero_grad()


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_lora_steps_change_adapters_and_projector_but_not_base_weights(data, encoder, tmp_path):
    config = tiny_config(tmp_path, finetune="lora", curriculum="constant", max_steps=3, lr=1e-2)
    lm, facts = build_recommender(config, data, encoder)
    assert facts["finetune"] == "lora"
    before, proj_before = snapshot(lm.model), snapshot(lm.projector)
    enc_before = snapshot(encoder)
    fit(lm, data, config)
    after = snapshot(lm.model)
    lora = [n for n in after if "lora_" in n]
    base = [n for n in after if "lora_" not in n and "trainable_tokens" not in n]
    assert lora and base
    assert any(not torch.equal(before[n], after[n]) for n in lora if "lora_B" in n)
    assert all(torch.equal(before[n], after[n]) for n in base)
    assert all(not torch.equal(proj_before[n], p) for n, p in snapshot(lm.projector).items())
    assert all(torch.equal(enc_before[n], p) for n, p in snapshot(encoder).items())


def test_a_text_only_curriculum_never_updates_the_projector(data, encoder, tmp_path):
    config = tiny_config(tmp_path, curriculum="constant", curriculum_constant=0.0, max_steps=3)
    lm, _ = build_recommender(config, data, encoder)
    proj_before, model_before = snapshot(lm.projector), snapshot(lm.model)
    fit(lm, data, config)
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


def test_the_best_validation_round_is_kept_not_the_last(data, encoder, tmp_path):
    from types import SimpleNamespace

    from llmrec.llm.module import LLMRecModule

    lm, _ = build_recommender(tiny_config(tmp_path), data, encoder)
    module = LLMRecModule(lm)
    module.log = lambda *args, **kwargs: None
    module._trainer = SimpleNamespace(sanity_checking=False, estimated_stepping_batches=20, global_step=5,
                                      current_epoch=0)
    params = module.trainable_named_parameters()
    best = {n: p.detach().clone() for n, p in params.items()}
    module._val_ranks = [torch.tensor([0, 0, 1, 0])]          # hr@1 0.75
    module.on_validation_epoch_end()
    with torch.no_grad():
        for p in params.values():
            p.add_(1.0)
    module._trainer.global_step = 10
    module._val_ranks = [torch.tensor([2, 0, 3, 5])]          # hr@1 0.25: worse, not kept
    module.on_validation_epoch_end()
    assert [h["valid/hr@1"] for h in module.history] == [0.75, 0.25] and module.best_hr1 == 0.75
    module.restore_best()
    assert all(torch.equal(p, best[n]) for n, p in module.trainable_named_parameters().items())


@pytest.mark.parametrize("finetune", ["full", "lora", "lora-qwen2-untied"])
def test_save_then_load_gives_identical_scores(finetune, data, encoder, tmp_path):
    llm = str(save_hf_folder(tmp_path / "qwen2", "qwen2", data)) if finetune.endswith("untied") else "tiny"
    finetune = finetune.split("-")[0]
    config = tiny_config(tmp_path, llm=llm, finetune=finetune)
    lm, facts = build_recommender(config, data, encoder)
    train_steps(lm, data)
    lm.eval()
    batch = next(iter(prompt_loader(data.split("test"), lm.builder, 3, False)))
    expected, expected_text = score_candidates(lm, batch), score_candidates(lm, batch, hybrid=False)
    save_checkpoint(tmp_path / "ckpt", lm, facts)
    files = {p.name for p in (tmp_path / "ckpt").rglob("*") if p.is_file()}
    assert not any(f.endswith((".bin", ".pt", ".pkl", ".ckpt")) for f in files)
    assert "projector.safetensors" in files
    if finetune == "lora":  # only the adapter: no copy of the base weights
        assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    loaded = load_recommender(tmp_path / "ckpt", data, encoder)
    torch.testing.assert_close(score_candidates(loaded, batch), expected)
    torch.testing.assert_close(score_candidates(loaded, batch, hybrid=False), expected_text)


def test_checkpoint_and_base_model_must_match(data, encoder, tmp_path):
    base = save_hf_folder(tmp_path / "base", "llama", data, hidden=32)
    config = tiny_config(tmp_path, llm=str(base), max_steps=1)
    lm, facts = build_recommender(config, data, encoder)
    save_checkpoint(tmp_path / "ckpt", lm, facts)
    wider = save_hf_folder(tmp_path / "wider", "llama", data, hidden=48)
    with pytest.raises(CheckpointError, match="hidden size 48 .* hidden size 32"):
        load_recommender(tmp_path / "ckpt", data, encoder, llm=wider)
    other = tiny_dataset(n_users=18, n_items=30, seq_len=7, n_candidates=6)  # more titles -> bigger vocabulary
    bigger = save_hf_folder(tmp_path / "bigger", "llama", other, hidden=32)
    with pytest.raises(CheckpointError, match="vocabulary"):
        load_recommender(tmp_path / "ckpt", data, encoder, llm=bigger)
    with pytest.raises(CheckpointError, match="another catalog"):
        load_recommender(tmp_path / "ckpt", other, encoder)
    with pytest.raises(CheckpointError, match="not an LLM checkpoint"):
        load_recommender(tmp_path / "base", data, encoder)
    retrained = MeanEncoder(data.n_items, hidden_size=encoder.hidden_size, seed=1)  # same shape, other weights
    with pytest.raises(CheckpointError, match="weights differ"):
        load_recommender(tmp_path / "ckpt", data, retrained, llm=base)
    with pytest.raises(ConfigError, match="no such folder"):  # a mistyped --llm is not silently rebuilt
        load_recommender(tmp_path / "ckpt", data, encoder, llm=tmp_path / "typo")
    assert load_recommender(tmp_path / "ckpt", data, encoder, llm=base).prompt == "hybrid"


def test_an_encoder_trained_on_another_catalog_is_refused(data, tmp_path):
    from llmrec.encoders.checkpoint import save_encoder
    from llmrec.encoders.registry import build_encoder
    from llmrec.llm.train import load_encoder_for

    enc = build_encoder("gru4rec", data.n_items, hidden_size=8, max_length=10)
    save_encoder(enc, tmp_path / "enc", data, index=False)
    assert load_encoder_for(tmp_path / "enc", data).hidden_size == 8
    renamed = tiny_dataset(n_users=18, n_items=24, seq_len=7, n_candidates=6,
                           titles=[f"Other {i}" for i in range(24)])
    with pytest.raises(CheckpointError, match="another catalog"):
        load_encoder_for(tmp_path / "enc", renamed)


def test_cli_train_llm_then_evaluate_in_every_mode(data, tmp_path):
    from llmrec.cli import main
    from llmrec.encoders.checkpoint import save_encoder
    from llmrec.encoders.registry import build_encoder

    data.save(tmp_path / "data")
    save_encoder(build_encoder("gru4rec", data.n_items, hidden_size=8, max_length=10), tmp_path / "enc", data,
                 index=False)
    cfg = tmp_path / "llm.yaml"
    cfg.write_text("tiny-layers: 2\ntiny-hidden: 32\ntiny-heads: 2\nmax-length: 256\nbatch-size: 8\n"
                   "max-steps: 2\nmax-valid-samples: 4\ndevice: cpu\n")
    args = ["train-llm", "--data", str(tmp_path / "data"), "--encoder", str(tmp_path / "enc"), "--llm", "tiny",
            "--config", str(cfg), "--cache-dir", str(tmp_path / "cache"), "--curriculum", "cosine",
            "--out", str(tmp_path / "ckpt")]
    assert main(args) == 0
    ckpt = tmp_path / "ckpt"
    assert {"config.yaml", "metrics.json", "checkpoint.json", "projector.safetensors"} <= {p.name for p in ckpt.iterdir()}
    assert "test/hr@1" in json.loads((ckpt / "metrics.json").read_text())
    for mode in ("score", "generate", "constrained"):
        assert main(["evaluate", "--ckpt", str(ckpt), "--data", str(tmp_path / "data"), "--mode", mode,
                     "--max-new-tokens", "8", "--device", "cpu"]) == 0
        m = json.loads((ckpt / f"eval-test-{mode}" / "metrics.json").read_text())
        for key in ("hr@1", "hr@1_valid", "valid_ratio", "candidates/ndcg@5", "n_samples", "seed", "protocol",
                    "mode", "hr@1_last"):
            assert key in m, key
        assert m["mode"] == mode and m["n_samples"] == len(data.split("test"))
        if mode != "generate":
            assert m["valid_ratio"] == 1.0
    # a non-checkpoint folder refuses to be overwritten; a missing checkpoint is a clear error (exit 2)
    assert main(args[:-1] + [str(tmp_path / "data")]) == 2
    assert main(["evaluate", "--ckpt", str(tmp_path / "nope"), "--data", str(tmp_path / "data")]) == 2


def test_text_only_prompts_train_without_an_encoder(data, tmp_path):
    config = tiny_config(tmp_path, prompt="text", max_steps=2)
    lm, facts = build_recommender(config, data, None)
    assert lm.projector is None and facts["encoder_hidden"] is None
    module = fit(lm, data, config)
    assert module.best_hr1 >= 0.0
    save_checkpoint(tmp_path / "ckpt", lm, facts)
    assert load_recommender(tmp_path / "ckpt", data).projector is None
