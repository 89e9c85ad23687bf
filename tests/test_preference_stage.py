"""Preference stage (S-DPO) end to end on tiny models: negatives, reference log-probs, the one-pass loss against the
authors' concatenated layout, per-sample weights, trainable weights, bad input, and the output checkpoint."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_llm_support import save_hf_folder, saved_encoder, tiny_config, tiny_dataset
from tiny import SMALL_DATA

from llmrec.base.config import add_options, resolve_config
from llmrec.data.catalog import Catalog
from llmrec.data.dataset import ProcessedDataset
from llmrec.encoders.checkpoint import load_encoder
from llmrec.base.errors import CheckpointError, ConfigError, LlmrecError
from llmrec.llm.checkpoint import load_recommender, read_facts, save_checkpoint
from llmrec.llm.datamodule import prompt_loader
from llmrec.llm.facts import LLMFacts
from llmrec.llm.logprobs import sequence_logprobs
from llmrec.llm.train import build_recommender
from llmrec.preference.datamodule import PreferenceDataset, collate_preference, preference_loader
from llmrec.preference.losses import (
    MarginStats,
    alpha_dpo_loss,
    beta_dpo_loss,
    dpo_loss,
    robust_aggregate,
    sdpo_loss,
)
from llmrec.preference.module import PreferenceModule, PreferenceSettings, disable_dropout, set_trainable
from llmrec.preference.naive import concatenated_logprobs
from llmrec.preference.negatives import (
    NEGATIVES_STREAM,
    check_negatives,
    draw_negatives,
    preference_items,
)
from llmrec.preference.reference import REFERENCE_FILE, compute_reference, load_reference
from llmrec.preference.train import INDEX_COLUMN, TrainSDPOConfig, run_train_sdpo

N_CANDIDATES = SMALL_DATA["n_candidates"]  # 6: 5 other candidates per sample


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("sdpo")


@pytest.fixture(scope="module")
def data(root):
    tiny_dataset(**SMALL_DATA).save(root / "data")
    return ProcessedDataset.load(root / "data")


@pytest.fixture(scope="module")
def encoder_dir(data, root):
    return saved_encoder(data, root / "enc")


@pytest.fixture(scope="module")
def encoder(data, encoder_dir):
    return load_encoder(encoder_dir, data)


def make_sft(folder, data, encoder, encoder_dir, **overrides):
    """An SFT checkpoint as `train-llm` writes it (built, one plain optimiser step so LoRA B is not 0, saved)."""
    lm, facts = build_recommender(tiny_config(folder.parent / f"{folder.name}-work", **overrides), data, encoder)
    params = [p for p in lm.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.05)
    lm.train()
    batch = next(iter(prompt_loader(data.split("train"), lm.builder, 8, True)))
    lm.loss(batch).backward()
    opt.step()
    save_checkpoint(folder, lm, facts, Catalog.from_dataset(data), encoder_dir)
    return folder


@pytest.fixture(scope="module")
def sft_full(data, encoder, encoder_dir, root):
    return make_sft(root / "sft-full", data, encoder, encoder_dir, finetune="full")


@pytest.fixture(scope="module")
def llama_base(data, root):
    return save_hf_folder(root / "llama", "llama", data)


@pytest.fixture(scope="module")
def sft_lora(data, encoder, encoder_dir, llama_base, root):
    return make_sft(root / "sft-lora", data, encoder, encoder_dir, finetune="lora", llm=str(llama_base))


def policy(folder, data):
    lm = load_recommender(folder, data, merge_adapters=False)  # trained on, as train-sdpo loads it
    set_trainable(lm, read_facts(folder).finetune)
    disable_dropout(lm)
    return lm.train()


def train_samples(data):
    train = data.split("train")
    return train.assign(**{INDEX_COLUMN: np.arange(len(train))})


def one_batch(lm, data, items, reference=None, weights=None, n=4):
    train = train_samples(data).iloc[:n]
    items = np.asarray(items)[:n]
    reference = torch.zeros(items.shape) if reference is None else reference[:n]
    ds = PreferenceDataset(train, lm.builder, items, reference, train[INDEX_COLUMN].to_numpy(),
                           None if weights is None else np.asarray(weights, dtype=np.float32)[:n])
    return collate_preference([ds[i] for i in range(len(ds))], lm.builder)


def sdpo_config(root, name, **values):
    base = {"sft": root / "sft-lora", "data": root / "data", "out": root / name, "negatives": 2, "max_steps": 3,
            "lr": 1e-2, "batch_size": 4, "eval_batch_size": 4, "max_valid_samples": 6, "device": "cpu",
            "progress_bar": False}
    base.update(values)
    return resolve_config(TrainSDPOConfig, base)


def folder_digest(folder):
    digest = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            digest.update(str(p.relative_to(folder)).encode())
            digest.update(p.read_bytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ negatives


def test_negatives_are_fixed_per_sample_and_seed_and_never_the_target(data):
    train = train_samples(data)
    items = preference_items(train, 3, seed=0)
    assert items.shape == (len(train), 4)
    for row, (cands, target, user, pos) in zip(items, train[["candidates", "target", "user_id", "position"]].values):
        others = [int(c) for c in cands if c != target]
        assert row[0] == target and target not in row[1:] and len(set(row[1:])) == 3
        # by hand: three of the five other candidates, picked by the (seed, user, position) stream, in stored order
        picked = np.sort(np.random.default_rng([0, user, pos, NEGATIVES_STREAM]).choice(5, 3, replace=False))
        assert row[1:].tolist() == [others[i] for i in picked]
    np.testing.assert_array_equal(preference_items(train, 3, seed=0), items)
    # a sample's negatives do not depend on the other samples drawn with it
    shuffled = train.sample(frac=1.0, random_state=3)
    np.testing.assert_array_equal(preference_items(shuffled, 3, 0), items[shuffled.index.to_numpy()])
    assert (preference_items(train, 3, seed=1) != items).any()  # another seed, other negatives
    every = preference_items(train, "all", 0)
    assert every.shape == (len(train), 6)
    np.testing.assert_array_equal(every, preference_items(train, 5, 0))  # N = C - 1 is `all`
    assert draw_negatives([4, 9, 2], 9, "all", 0, 1, 1).tolist() == [4, 2]


def test_negatives_are_the_same_in_every_epoch(data, sft_full):
    lm = load_recommender(sft_full, data)
    train = train_samples(data)
    items = preference_items(train, 2, seed=0)
    ds = PreferenceDataset(train, lm.builder, items, torch.zeros(items.shape), train[INDEX_COLUMN].to_numpy())
    loader = preference_loader(ds, batch_size=8, shuffle=True, seed=0)
    epochs = []
    for _ in range(2):
        seen, order = {}, []
        for batch in loader:
            for i, row in zip(batch.index.tolist(), batch.items.tolist()):
                seen[i] = row
                order.append(i)
        epochs.append((seen, order))
    assert epochs[0][1] != epochs[1][1]  # shuffled differently ...
    assert epochs[0][0] == epochs[1][0] == {i: items[i].tolist() for i in range(len(train))}  # ... same negatives


def test_negatives_above_the_stored_candidates_are_refused(data):
    train = train_samples(data)
    assert check_negatives(5, train, "D") == 5 and check_negatives("all", train, "D") == 5
    with pytest.raises(ConfigError, match=r"--negatives 6: the training samples of D store 6 candidates \(5 besides"):
        check_negatives(6, train, "D")


# ------------------------------------------------------------------------------------------------ the loss


def test_one_negative_is_the_dpo_baseline(data, sft_full):
    lm = policy(sft_full, data)
    items = preference_items(train_samples(data), 1, seed=0)
    reference = torch.tensor([[-30.0, -31.5], [-28.0, -27.0], [-33.0, -30.0], [-29.5, -29.5]])
    batch = one_batch(lm, data, items, torch.cat([reference, torch.zeros(len(items) - 4, 2)]))
    module = PreferenceModule(lm, PreferenceSettings("sdpo", beta=0.7))
    logps = module.policy_logprobs(batch)
    loss, out = module.preference_loss(batch, logps)
    expected = dpo_loss(logps[:, 0], logps[:, 1], reference[:, 0], reference[:, 1], beta=0.7)
    torch.testing.assert_close(out.losses, expected.losses)
    by_hand = -F.logsigmoid(0.7 * ((logps[:, 0] - reference[:, 0]) - (logps[:, 1] - reference[:, 1]))).mean()
    torch.testing.assert_close(loss, by_hand)


@pytest.mark.parametrize("loss_name", ["sdpo", "dr-sdpo", "beta-sdpo", "alpha-sdpo"])
def test_the_one_pass_loss_and_gradients_equal_the_concatenated_forward(loss_name, data, sft_lora):
    """The authors' layout runs each of the 1 + N answers behind its own copy of the prompt (B * (1+N) rows)."""
    lm = policy(sft_lora, data)
    train = train_samples(data)
    items = preference_items(train, 3, seed=0)
    reference = compute_reference(lm, train.iloc[:4], items[:4]) + torch.tensor([0.5, -0.25, 0.75, -1.0])
    batch = one_batch(lm, data, items, reference)
    trainable = {n: p for n, p in lm.named_parameters() if p.requires_grad}
    results = []
    for forward in (sequence_logprobs, concatenated_logprobs):
        module = PreferenceModule(lm, PreferenceSettings(loss_name, beta=1.5, beta_rho=0.0), seed=0)
        lm.zero_grad()
        logps = forward(lm, batch.prompts, batch.items)
        loss, _ = module.preference_loss(batch, logps)
        loss.backward()
        results.append((logps.detach(), loss.detach(), {n: p.grad.clone() for n, p in trainable.items()}))
    (lp1, loss1, g1), (lp2, loss2, g2) = results
    torch.testing.assert_close(lp1, lp2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss1, loss2, rtol=1e-5, atol=1e-5)
    assert any("lora_B" in n for n in g1) and any(n.startswith("projector.") for n in g1)
    assert all(g.abs().sum() > 0 for n, g in g1.items() if "lora_B" in n or n.startswith("projector."))
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], rtol=1e-3, atol=1e-5, msg=n)


def test_each_variant_is_its_pure_loss_on_the_policy_logprobs(data, sft_full):
    lm = policy(sft_full, data)
    items = preference_items(train_samples(data), 2, seed=0)
    batch = one_batch(lm, data, items, torch.full(items.shape, -30.0))
    pol = torch.tensor([[-29.0, -31.0, -30.5], [-31.0, -30.0, -29.0], [-28.0, -33.0, -32.0], [-30.0, -30.0, -31.0]])
    ref = batch.reference
    args = (pol[:, 0], pol[:, 1:], ref[:, 0], ref[:, 1:])
    lengths = lm.builder.answer_table()[1][batch.items]

    dr = PreferenceModule(lm, PreferenceSettings("dr-sdpo", beta=2.0, beta_prime=0.5))
    torch.testing.assert_close(dr.preference_loss(batch, pol)[0],
                               robust_aggregate(sdpo_loss(*args, beta=2.0).losses, 0.5))

    beta = PreferenceModule(lm, PreferenceSettings("beta-sdpo", beta=2.0, beta_alpha=0.5, beta_rho=0.5), seed=7)
    loss, out = beta.preference_loss(batch, pol)
    expected, state = beta_dpo_loss(*args, state=MarginStats(), beta=2.0, a=0.5, rho=0.5, kept=out.kept)
    assert int(out.kept.sum()) == 2 and beta.margin_state == state and state.mean != 0
    torch.testing.assert_close(loss, expected.losses[out.kept].mean())

    alpha = PreferenceModule(lm, PreferenceSettings("alpha-sdpo", beta=2.5, alpha=0.1, gamma_beta_ratio=0.3))
    loss, _ = alpha.preference_loss(batch, pol)
    expected, state = alpha_dpo_loss(*args, lengths[:, 0], lengths[:, 1:], state=MarginStats(), beta=2.5,
                                     gamma_beta_ratio=0.3, alpha=0.1)
    assert alpha.margin_state == state
    torch.testing.assert_close(loss, expected.losses.mean())
    assert lengths.min() >= 2  # title tokens + terminator: the average is not the sum


def test_per_sample_weights_act_per_sample(data, sft_full):
    lm = policy(sft_full, data)
    items = preference_items(train_samples(data), 2, seed=0)
    weights = np.zeros(len(items), dtype=np.float32)
    weights[:4] = [3.0, 0.0, 1.0, 0.0]
    batch = one_batch(lm, data, items, torch.full(items.shape, -30.0), weights)
    torch.testing.assert_close(batch.weights, torch.tensor([3.0, 0.0, 1.0, 0.0]))
    base = torch.tensor([[-29.0, -31.0, -30.5], [-31.0, -30.0, -29.0], [-28.0, -33.0, -32.0], [-30.0, -30.0, -31.0]])
    per_sample = sdpo_loss(base[:, 0], base[:, 1:], batch.reference[:, 0], batch.reference[:, 1:]).losses
    for name in ("sdpo", "dr-sdpo"):
        pol = base.clone().requires_grad_(True)
        loss, _ = PreferenceModule(lm, PreferenceSettings(name, beta_prime=1e6)).preference_loss(batch, pol)
        loss.backward()
        by_hand = (3.0 * per_sample[0] + 1.0 * per_sample[2]) / 4  # sum_i w_i L_i / B
        torch.testing.assert_close(loss, by_hand, rtol=1e-4, atol=1e-6)
        assert abs(loss.item() - per_sample.mean().item()) > 0.1  # the batch scaled by its mean weight (1) differs
        assert torch.all(pol.grad[[1, 3]] == 0) and torch.all(pol.grad[[0, 2]].abs().sum(1) > 0)


def test_weights_follow_their_samples_through_the_shuffled_loader(data, sft_full):
    lm = load_recommender(sft_full, data)
    train = train_samples(data)
    items = preference_items(train, 1, seed=0)
    weights = (np.arange(len(train)) * 0.5).astype(np.float32)
    ds = PreferenceDataset(train, lm.builder, items, torch.zeros(items.shape), train[INDEX_COLUMN].to_numpy(), weights)
    for batch in preference_loader(ds, batch_size=7, shuffle=True, seed=1):
        torch.testing.assert_close(batch.weights, batch.index.float() * 0.5)


def test_a_loaded_sft_model_is_trainable_exactly_as_it_was_built(data, encoder, encoder_dir, llama_base, root):
    qwen = save_hf_folder(root / "qwen2", "qwen2", data)
    for name, overrides in {"full": {"finetune": "full"}, "lora-llama": {"finetune": "lora", "llm": str(llama_base)},
                            "lora-qwen2": {"finetune": "lora", "llm": str(qwen)}}.items():
        built, facts = build_recommender(tiny_config(root / f"built-{name}", **overrides), data, encoder)
        save_checkpoint(root / f"ckpt-{name}", built, facts, Catalog.from_dataset(data), encoder_dir)
        if name != "full":  # merged for inference (the default), a LoRA model has no adapters left to train
            with pytest.raises(ValueError, match=r"merge_adapters=False"):
                set_trainable(load_recommender(root / f"ckpt-{name}", data), facts.finetune)
        loaded = load_recommender(root / f"ckpt-{name}", data, merge_adapters=False)  # as train-sdpo loads it
        expected = {n for n, p in built.named_parameters() if p.requires_grad}
        assert {n for n, p in loaded.named_parameters() if p.requires_grad} != expected or name == "full"
        set_trainable(loaded, facts.finetune)
        assert {n for n, p in loaded.named_parameters() if p.requires_grad} == expected, name
        assert disable_dropout(loaded) == (0 if name == "full" else 7 * 2)  # LoRA dropout on 7 modules x 2 layers
        assert all(m.p == 0 for m in loaded.modules() if isinstance(m, torch.nn.Dropout))


# ------------------------------------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def sdpo_run(data, sft_lora, root):
    before = folder_digest(sft_lora)
    assert run_train_sdpo(sdpo_config(root, "out")) == 0
    return root / "out", before


def test_the_output_is_a_regular_llm_checkpoint_that_evaluate_reads(sdpo_run, data, root):
    from llmrec.commands.evaluate import EvaluateConfig, run_evaluate

    out, _ = sdpo_run
    facts = read_facts(out)
    assert facts.stage == "sdpo" and facts.sdpo.negatives == 2 and facts.sdpo.loss == "sdpo"
    assert facts.catalog_fingerprint == read_facts(root / "sft-lora").catalog_fingerprint
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("valid/hr@1", "sft/valid/hr@1", "reference_seconds", "train_seconds", "best_step", "test/hr@1"):
        assert key in metrics, key
    assert metrics["best_step"] == 3 and metrics["n_train_samples"] == len(data.split("train"))
    header = (out / "logs" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
            "valid/hr@1"} <= set(header)
    lm = load_recommender(out, data)
    assert lm.prompt == "hybrid" and lm.projector is not None
    assert run_evaluate(EvaluateConfig(ckpt=out, data=root / "data", mode="score", batch_size=4, device="cpu")) == 0
    evaluated = json.loads((out / "eval-test-score" / "metrics.json").read_text())
    assert evaluated["hr@1"] == pytest.approx(metrics["test/hr@1"])


def test_reference_logprobs_are_stored_once_and_equal_the_sft_model(sdpo_run, data, root):
    out, sft_digest = sdpo_run
    assert folder_digest(root / "sft-lora") == sft_digest  # training never touched the SFT checkpoint
    stored = load_reference(out / REFERENCE_FILE)
    train = train_samples(data)
    assert stored.sample_index.tolist() == list(range(len(train)))
    np.testing.assert_array_equal(stored.items.numpy(), preference_items(train, 2, seed=0))
    sft = load_recommender(root / "sft-lora", data)
    recomputed = compute_reference(sft, train, stored.items, batch_size=5)
    torch.testing.assert_close(stored.logprobs, recomputed, rtol=1e-5, atol=1e-4)
    # the policy, which started as that model, has moved away from it
    trained = compute_reference(load_recommender(out, data), train, stored.items, batch_size=5)
    assert (trained - recomputed).abs().max() > 1e-3


def test_preference_steps_move_adapters_and_projector_but_not_frozen_base_weights(sdpo_run, data, root):
    out, _ = sdpo_run
    sft = dict(load_recommender(root / "sft-lora", data, merge_adapters=False).named_parameters())
    trained = dict(load_recommender(out, data, merge_adapters=False).named_parameters())
    assert sft.keys() == trained.keys()
    lora = [n for n in sft if "lora_" in n]
    slots = [n for n in sft if "trainable_tokens_delta" in n]
    projector = [n for n in sft if n.startswith("projector.")]
    frozen = [n for n in sft if n not in set(lora) | set(slots) | set(projector)]
    assert lora and slots and projector and len(frozen) > 10
    assert all(not torch.equal(sft[n], trained[n]) for n in projector)
    assert any(not torch.equal(sft[n], trained[n]) for n in lora if "lora_B" in n)
    # the slot tokens' own rows are trainable, but hybrid prompts replace every behavioural slot by the projector's
    # vector and S-DPO never sees a text-only prompt (the <|text|> row): no gradient reaches them
    assert all(torch.equal(sft[n], trained[n]) for n in slots)
    assert all(torch.equal(sft[n], trained[n]) for n in frozen)


def test_a_policy_starts_equal_to_its_reference(data, sft_lora):
    """Dropout off (as TRL's DPOTrainer): at step 0 every implicit reward is exactly what the reference gives."""
    lm = policy(sft_lora, data)
    train = train_samples(data).iloc[:6]
    items = preference_items(train, 3, seed=0)
    reference = compute_reference(lm, train, items)
    assert lm.training
    with torch.no_grad():
        batch = one_batch(lm, data, preference_items(train_samples(data), 3, 0), n=6)
        torch.testing.assert_close(sequence_logprobs(lm, batch.prompts, batch.items), reference)


def test_train_sdpo_ranks_with_the_sft_checkpoints_score_rule_unless_overridden(data, encoder, encoder_dir, root):
    import argparse

    from llmrec.preference.train import output_facts

    sft = make_sft(root / "sft-mean", data, encoder, encoder_dir, finetune="full", score_norm="mean")
    assert read_facts(sft).score_norm == "mean"
    out = root / "out-mean"
    assert run_train_sdpo(sdpo_config(root, "out-mean", sft=sft, max_steps=1, max_train_samples=8,
                                      max_test_samples=4)) == 0
    assert read_facts(out).score_norm == "mean" and load_recommender(out, data).score_norm == "mean"
    assert json.loads((out / "metrics.json").read_text())["test/score_norm"] == "mean"
    assert json.loads((out / "eval-test-score" / "metrics.json").read_text())["score_norm"] == "mean"
    # --score-norm overrides the inherited rule; an SFT checkpoint that records none ranked (and ranks) by the sum
    facts = read_facts(sft)
    assert output_facts(sft, facts, out, sdpo_config(root, "x", sft=sft, score_norm="sum"), 2).score_norm == "sum"
    assert output_facts(sft, facts, out, sdpo_config(root, "x", sft=sft), 2).score_norm == "mean"
    old = LLMFacts.from_dict({k: v for k, v in facts.to_dict().items() if k != "score_norm"})
    assert output_facts(sft, old, out, sdpo_config(root, "x", sft=sft), 2).score_norm == "sum"
    parser = argparse.ArgumentParser()
    add_options(parser, TrainSDPOConfig)
    assert resolve_config(TrainSDPOConfig, parser.parse_args([])).score_norm is None  # None = inherit
    assert resolve_config(TrainSDPOConfig, parser.parse_args(["--score-norm", "sum"])).score_norm == "sum"
    with pytest.raises(ConfigError, match="option --score-norm: got 'max', expected one of sum, mean"):
        sdpo_config(root, "x", score_norm="max")


# ------------------------------------------------------------------------------------------------ bad input


def one_line_error(config, error=LlmrecError, match=""):
    with pytest.raises(error, match=match) as info:
        run_train_sdpo(config)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_bad_input_is_refused_with_one_line(data, sft_lora, sft_full, root):
    cfg = TrainSDPOConfig(data=root / "data", out=root / "never")
    one_line_error(cfg, ConfigError, "needs --sft DIR")
    one_line_error(sdpo_config(root, "never", sft=root / "missing"), CheckpointError, "--sft: .*does not exist")
    one_line_error(sdpo_config(root, "never", sft=root / "data"), CheckpointError,
                   r"--sft: .*data/checkpoint.json: missing, so .*data is not an LLM checkpoint; expected an LLM "
                   r"checkpoint written by `llmrec train-llm` or `llmrec train-sdpo`$")
    one_line_error(sdpo_config(root, "never", negatives=6), ConfigError, "--negatives 6: .*5 besides the target")
    one_line_error(sdpo_config(root, "never", out=root / "sft-lora"), ConfigError, "is the --sft folder")
    one_line_error(sdpo_config(root, "never", out=root / "sft-full"), CheckpointError,
                   "is not a previous `llmrec train-sdpo` output")  # never replaces an SFT checkpoint
    for beta in (0, -1.0):
        with pytest.raises(ConfigError, match="option --beta: got .*expected a finite number > 0"):
            sdpo_config(root, "never", beta=beta)
        one_line_error(TrainSDPOConfig(sft=sft_lora, data=root / "data", out=root / "never", beta=beta), ConfigError,
                       "--beta")
    for bad in (0, "x", "2.5", -3):
        with pytest.raises(ConfigError, match="option --negatives: got .*expected an integer >= 1 or all"):
            sdpo_config(root, "never", negatives=bad)
    # an SFT model trained on another catalog, or on the same catalog with other held-out users
    tiny_dataset(**{**SMALL_DATA, "n_items": 30}).save(root / "other-catalog")
    one_line_error(sdpo_config(root, "never", data=root / "other-catalog"), CheckpointError, "another catalog")
    reshuffled = tiny_dataset(**SMALL_DATA)
    reshuffled.users = reshuffled.users.assign(split=reshuffled.users["split"].to_numpy()[::-1])
    reshuffled.save(root / "other-split")
    one_line_error(sdpo_config(root, "never", data=root / "other-split"), CheckpointError, "cannot be used with")
    assert not (root / "never").exists()


def test_negatives_option_parses_counts_and_all_from_flags_and_yaml(root):
    import argparse

    parser = argparse.ArgumentParser()
    add_options(parser, TrainSDPOConfig)
    assert resolve_config(TrainSDPOConfig, parser.parse_args(["--negatives", "all"])).negatives == "all"
    assert resolve_config(TrainSDPOConfig, parser.parse_args(["--negatives", "19"])).negatives == 19
    assert resolve_config(TrainSDPOConfig, parser.parse_args([])).negatives == 3
    (root / "sdpo.yaml").write_text("negatives: 1\nloss: beta-sdpo\n")
    cfg = resolve_config(TrainSDPOConfig, parser.parse_args([]), root / "sdpo.yaml")
    assert cfg.negatives == 1 and cfg.loss == "beta-sdpo"


def test_the_module_dispatches_each_loss_name_to_its_registered_function(data, sft_full, monkeypatch):
    """`PreferenceModule` has no loss names of its own: each name runs the registry's function for it."""
    from llmrec.preference.losses import PREFERENCE_LOSSES

    lm = policy(sft_full, data)
    items = preference_items(train_samples(data), 2, seed=0)
    batch = one_batch(lm, data, items, torch.full(items.shape, -30.0))
    pol = torch.tensor([[-29.0, -31.0, -30.5], [-31.0, -30.0, -29.0], [-28.0, -33.0, -32.0], [-30.0, -30.0, -31.0]])
    for name, objective in list(PREFERENCE_LOSSES.items()):
        calls = []

        def recording(x, s, state, generator, objective=objective, calls=calls):
            calls.append(s.loss)
            return objective(x, s, state, generator)

        monkeypatch.setitem(PREFERENCE_LOSSES, name, recording)
        module = PreferenceModule(lm, PreferenceSettings(name), seed=0)
        loss, _ = module.preference_loss(batch, pol)
        assert calls == [name] and torch.isfinite(loss)
        monkeypatch.undo()
