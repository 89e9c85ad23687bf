"""LLM stage, units: backbones, prompts, slot filling, curriculum, ranking modes, bad input (tiny, CPU, offline)."""

from __future__ import annotations

import copy
import itertools
import logging
import types
import warnings
from pathlib import Path

import pytest
import torch
from test_llm_support import full_sequence_scores, save_hf_folder, tiny_config

from llmrec.data.catalog import Catalog
from llmrec.base.errors import CheckpointError, ConfigError, DataError
from llmrec.llm import backbone
from llmrec.llm.curriculum import SCHEDULES, hybrid_probability
from llmrec.llm.datamodule import prompt_loader
from llmrec.llm.hybrid import (
    IGNORE,
    answer_loss,
    answer_window,
    cache_keyword,
    fill_slots,
    position_ids,
    returned_cache,
)
from llmrec.llm.prompts import TEMPLATES, PromptBuilder, choose_template
from llmrec.llm.ranking import (
    CandidateTrie,
    greedy_decode,
    parse_generation,
    rank,
    score_candidates,
)
from llmrec.llm.train import build_recommender


@pytest.fixture(scope="module")
def hybrid_lm(small_data, mean_encoder, tmp_path_factory):
    lm, _ = build_recommender(tiny_config(tmp_path_factory.mktemp("hyb")), small_data, mean_encoder)
    return lm.eval()


def first_batch(lm, small_data, split="test", with_answer=False, n=4):
    return next(iter(prompt_loader(small_data.split(split), lm.builder, n, with_answer)))


# ---------------------------------------------------------------------- backbones
def test_tiny_backbone_is_built_once_and_loads_like_any_hf_folder(small_data, tmp_path):
    spec = backbone.TinySpec(layers=2, hidden=32, heads=2, max_length=128)
    folder = backbone.build_tiny_llm(small_data.titles(), small_data.catalog_fingerprint(), tmp_path, spec)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert backbone.build_tiny_llm(small_data.titles(), small_data.catalog_fingerprint(), tmp_path, spec) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # cached, not rebuilt
    model, tok = backbone.load_causal_lm(folder), backbone.load_tokenizer(folder)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 2
    # word-level: every title word is one token, nothing unknown in the catalog
    ids = tok(" " + small_data.titles()[1], add_special_tokens=False)["input_ids"]
    title = small_data.titles()[1]
    assert tok.unk_token_id not in ids and len(ids) == len(title.replace("(", " ( ").replace(")", " ) ").split())


def test_tiny_backbone_with_a_bpe_tokenizer_decodes_titles_exactly_and_ranks(small_data, mean_encoder, tmp_path):
    lm, facts = build_recommender(tiny_config(tmp_path, tiny_tokenizer="bpe", tiny_bpe_vocab=400), small_data,
                                  mean_encoder)
    assert facts.base.tiny["tokenizer"] == "bpe" and Path(facts.base.path).name.endswith("-bpe400-t2")
    tok = lm.builder.tokenizer
    assert type(tok.backend_tokenizer.model).__name__ == "BPE" and facts.base.fingerprint["tokenizer_size"] <= 400
    for item in range(1, small_data.n_items + 1):  # byte-level BPE: no spaces inserted, nothing unknown
        assert lm.builder.answer_text(item) == small_data.titles()[item]
    assert any(len(lm.builder.title_ids[i]) > len(small_data.titles()[i].split())
               for i in range(1, small_data.n_items + 1))
    lm.eval()
    scores = score_candidates(lm, first_batch(lm, small_data))
    assert scores.shape == (4, 6) and torch.isfinite(scores).all()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_any_local_hf_causal_lm_loads_through_the_path_code(arch, small_data, mean_encoder, tmp_path):
    folder = save_hf_folder(tmp_path / arch, arch, small_data)
    lm, facts = build_recommender(tiny_config(tmp_path, llm=str(folder)), small_data, mean_encoder)
    assert facts.finetune == "lora" and facts.base.fingerprint["tokenizer_size"] + 4 == facts.vocab_size
    lm.eval()
    batch = first_batch(lm, small_data)
    scores = score_candidates(lm, batch)
    assert scores.shape == (4, 6) and torch.isfinite(scores).all()
    with torch.no_grad():  # the packed answers' 4-D mask and positions are right for this architecture + peft too
        torch.testing.assert_close(scores, full_sequence_scores(lm, batch), rtol=1e-4, atol=1e-4)


def test_prompt_budget_defaults_to_the_models_context_and_never_exceeds_it(small_data, mean_encoder, tmp_path):
    folder = save_hf_folder(tmp_path / "llama", "llama", small_data)  # max_position_embeddings = 256
    for asked, expected in ((None, 256), (128, 128), (1024, 256)):
        lm, facts = build_recommender(tiny_config(tmp_path, llm=str(folder), max_length=asked), small_data,
                                      mean_encoder)
        assert lm.builder.max_length == facts.max_length == expected
    lm, facts = build_recommender(tiny_config(tmp_path / "t", max_length=None), small_data, mean_encoder)  # tiny: 512
    assert facts.max_length == facts.base.tiny["max_length"] == 512


def test_missing_or_non_model_llm_path_is_a_clear_error(small_data, mean_encoder, tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        build_recommender(tiny_config(tmp_path, llm=str(tmp_path / "nope")), small_data, mean_encoder)
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "readme.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="no config.json"):
        build_recommender(tiny_config(tmp_path, llm=str(tmp_path / "notamodel")), small_data, mean_encoder)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(CheckpointError, match="could not load"):
        backbone.load_causal_lm(broken)


def test_four_bit_without_bitsandbytes_says_what_to_install():
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    with pytest.raises(ConfigError, match="bitsandbytes"):
        backbone.four_bit_config(torch.bfloat16)


# ---------------------------------------------------------------------- prompts
def test_templates_per_domain_and_seeded_choice():
    for domain in ("movies", "games", "music", "generic"):
        assert len(TEMPLATES[domain]) >= 3
        assert all("{history}" in t and "{candidates}" in t and "{summary}" in t for t in TEMPLATES[domain])
    picks = [choose_template(3, 0, u, 5) for u in range(40)]
    assert picks == [choose_template(3, 0, u, 5) for u in range(40)] and len(set(picks)) == 3
    assert picks != [choose_template(3, 1, u, 5) for u in range(40)]


def test_prompt_lists_history_and_candidates_with_one_slot_each(hybrid_lm, small_data):
    b = hybrid_lm.builder
    row = small_data.split("test").iloc[0]
    p = b.build(row["history"], row["candidates"], row["user_id"], row["position"])
    ids = torch.tensor(p.ids)
    assert int((ids == b.slots.history).sum()) == len(row["history"]) == len(p.history)
    assert int((ids == b.slots.candidate).sum()) == len(row["candidates"])
    text = b.tokenizer.decode(p.ids)
    for item in list(row["history"]) + list(row["candidates"]):
        assert b.answer_text(item) in text
    # answers are the title ids + EOS, built once per item and reused
    assert b.answer_ids[row["target"]] == b.title_ids[row["target"]] + [b.eos]
    assert b.to_text_only(p.ids).count(b.slots.text) == len(p.history) + len(p.candidates)


def test_too_long_prompts_drop_the_oldest_history_items_with_a_warning(hybrid_lm, small_data, caplog):
    b0 = hybrid_lm.builder
    full = b0.build([1, 2, 3, 4, 5, 6], [7, 8], 1, 1)
    limit = len(full.ids) + b0.max_answer_length - 1  # one token too short
    b = PromptBuilder(b0.tokenizer, small_data.titles(), "movies", b0.slots, limit)
    with caplog.at_level(logging.WARNING):
        p = b.build([1, 2, 3, 4, 5, 6], [7, 8], 1, 1)
    assert p.dropped >= 1 and p.history == [1, 2, 3, 4, 5, 6][p.dropped:]
    assert len(p.ids) + b.max_answer_length <= limit and "dropped" in caplog.text
    with pytest.raises(DataError, match="exceeds max length"):
        PromptBuilder(b0.tokenizer, small_data.titles(), "movies", b0.slots, 20).build([1, 2], [7, 8], 1, 1)


def test_a_title_that_tokenizes_to_nothing_is_refused(hybrid_lm, small_data):
    titles = small_data.titles()
    titles[5] = "   "
    with pytest.raises(DataError, match="item 5: title .* tokenizes to nothing"):
        PromptBuilder(hybrid_lm.builder.tokenizer, titles, "movies", hybrid_lm.builder.slots, 256)


def test_labels_mask_everything_but_the_target_title_and_terminator(hybrid_lm, small_data):
    batch = first_batch(hybrid_lm, small_data, "train", with_answer=True)
    for i in range(batch.input_ids.shape[0]):
        answer = hybrid_lm.builder.answer_ids[int(batch.targets[i])]
        kept = batch.labels[i][batch.labels[i] != IGNORE].tolist()
        assert kept == answer and answer[-1] == hybrid_lm.builder.eos
        assert batch.labels[i, -len(answer):].tolist() == batch.input_ids[i, -len(answer):].tolist()


def test_answer_window_covers_every_answer_token_and_the_position_before():
    labels = torch.full((2, 7), IGNORE)
    labels[0, 4:] = torch.tensor([5, 6, 2])       # answer of 3 tokens
    labels[1, 5:] = torch.tensor([8, 2])          # answer of 2 tokens
    assert answer_window(labels) == 4             # positions 3..6: the one before the longest answer, + 3
    labels[0, 0:] = 1
    assert answer_window(labels) == 7             # never more than the sequence
    with pytest.raises(ValueError, match="without answer labels"):
        answer_window(torch.full((1, 3), IGNORE))


def test_loss_on_the_answer_window_equals_the_loss_on_full_logits(hybrid_lm, small_data):
    batch = first_batch(hybrid_lm, small_data, "train", with_answer=True)
    assert hybrid_lm._windowed_logits
    full = answer_loss(hybrid_lm(batch, use_cache=False).logits, batch.labels)
    assert torch.allclose(hybrid_lm.loss(batch), full, atol=1e-5)
    assert answer_window(batch.labels) < batch.input_ids.shape[1]  # the shortcut really skips positions


# ---------------------------------------------------------------------- hybrid slots
def test_fill_slots_puts_each_vector_exactly_at_its_slot_in_order():
    ids = torch.tensor([[0, 9, 5, 9, 1], [9, 2, 3, 4, 9]])
    embeds = torch.zeros(2, 5, 3)
    vectors = torch.arange(12, dtype=torch.float).view(4, 3)
    out = fill_slots(embeds, ids, 9, vectors)
    for n, (b, t) in enumerate([(0, 1), (0, 3), (1, 0), (1, 4)]):
        assert torch.equal(out[b, t], vectors[n])
    assert out[ids != 9].abs().sum() == 0
    with pytest.raises(ValueError, match="4 slot tokens"):
        fill_slots(embeds, ids, 9, vectors[:3])


def test_hybrid_embeds_hold_projected_encoder_vectors_at_history_and_candidate_slots(hybrid_lm, small_data):
    batch = first_batch(hybrid_lm, small_data)
    with torch.no_grad():
        embeds = hybrid_lm.inputs_embeds(batch, hybrid=True)
        proj = hybrid_lm.projector(hybrid_lm.item_table)
    slots = hybrid_lm.builder.slots
    for slot, items in ((slots.history, batch.history_items), (slots.candidate, batch.candidate_items)):
        where = (batch.input_ids == slot).nonzero().tolist()
        assert len(where) == len(items)
        for (b, t), item in zip(where, items.tolist()):
            torch.testing.assert_close(embeds[b, t], proj[item])
    text = hybrid_lm.inputs_embeds(batch, hybrid=False)
    text_row = hybrid_lm.model.get_input_embeddings().weight[slots.text]
    b, t = (batch.input_ids == slots.history).nonzero()[0].tolist()
    torch.testing.assert_close(text[b, t], text_row)


def test_summary_slot_holds_the_projected_sequence_representation(small_data, mean_encoder, tmp_path):
    lm, _ = build_recommender(tiny_config(tmp_path, prompt="hybrid+summary"), small_data, mean_encoder)
    batch = first_batch(lm, small_data)
    with torch.no_grad():
        embeds = lm.inputs_embeds(batch)
        expected = lm.projector(mean_encoder(batch.summary_seq, batch.summary_lengths))
    where = (batch.input_ids == lm.builder.slots.summary).nonzero().tolist()
    assert [b for b, _ in where] == list(range(batch.input_ids.shape[0]))
    for (b, t) in where:
        torch.testing.assert_close(embeds[b, t], expected[b])


def test_text_only_batches_leave_the_projector_gradients_empty(small_data, mean_encoder, tmp_path):
    lm, _ = build_recommender(tiny_config(tmp_path), small_data, mean_encoder)
    lm.train()
    batch = first_batch(lm, small_data, "train", with_answer=True)
    lm.loss(batch, hybrid=False).backward()
    assert all(p.grad is None for p in lm.projector.parameters())
    assert any(p.grad is not None for p in lm.model.parameters())
    lm.loss(batch, hybrid=True).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lm.projector.parameters())
    assert all(p.grad is None for p in mean_encoder.parameters())


# ---------------------------------------------------------------------- curriculum
@pytest.mark.parametrize("schedule", ["linear", "step", "cosine"])
def test_schedules_go_from_text_to_hybrid_monotonically(schedule):
    ts = [i / 100 for i in range(101)]
    ps = [hybrid_probability(schedule, t) for t in ts]
    assert ps[0] == 0.0 and ps[-1] == 1.0
    assert all(b >= a for a, b in itertools.pairwise(ps)) and all(0.0 <= p <= 1.0 for p in ps)
    assert hybrid_probability(schedule, -1.0) == 0.0 and hybrid_probability(schedule, 2.0) == 1.0


def test_linear_is_t_over_T_and_constant_is_constant():
    assert hybrid_probability("linear", 0.3) == pytest.approx(0.3)
    assert hybrid_probability("cosine", 0.5) == pytest.approx(0.5)
    assert hybrid_probability("step", 0.49) == 0.0 and hybrid_probability("step", 0.5) == 1.0
    assert {hybrid_probability("constant", t, constant=0.7) for t in (0.0, 0.5, 1.0)} == {0.7}
    assert set(SCHEDULES) == {"linear", "step", "cosine", "constant"}
    with pytest.raises(ValueError, match="unknown curriculum"):
        hybrid_probability("exponential", 0.5)


# ---------------------------------------------------------------------- ranking
def test_score_with_shared_kv_cache_equals_scoring_each_full_sequence(hybrid_lm, small_data):
    batch = first_batch(hybrid_lm, small_data, n=3)
    assert len(set(batch.attention_mask.sum(1).tolist())) > 1  # prompts of different lengths: left padding used
    with torch.no_grad():
        shared = score_candidates(hybrid_lm, batch)
        ref = full_sequence_scores(hybrid_lm, batch)
    torch.testing.assert_close(shared, ref, rtol=1e-4, atol=1e-4)


def test_batched_scores_equal_scoring_each_prompt_alone(hybrid_lm, small_data):
    """Packing B prompts (left padding) and their B*C answers (one row per prompt, right padding) changes nothing,
    also when the candidates' answers differ in length (here made so by cutting 0-2 leading title tokens)."""
    lm = copy.copy(hybrid_lm)  # shares the model; only the answers differ
    lm.builder = copy.copy(hybrid_lm.builder)
    lm.builder.answer_ids = [a[i % 3:] if a else a for i, a in enumerate(hybrid_lm.builder.answer_ids)]
    lm.builder.max_answer_length = max(len(a) for a in lm.builder.answer_ids)
    lm.builder._answer_tables = {}
    batch = first_batch(lm, small_data, n=4)
    singles = list(prompt_loader(small_data.split("test").head(4), lm.builder, 1, False))
    assert torch.equal(torch.cat([one.candidates for one in singles]), batch.candidates)
    assert len(set(lm.builder.answer_table()[1][batch.candidates].flatten().tolist())) == 3
    for hybrid in (True, False):
        together = score_candidates(lm, batch, hybrid)
        alone = torch.cat([score_candidates(lm, one, hybrid) for one in singles])
        torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(score_candidates(lm, batch), full_sequence_scores(lm, batch), rtol=1e-4, atol=1e-4)


def test_position_ids_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert position_ids(mask).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]


def test_generation_parsing_follows_llaras_rule():
    cands = ["Heat ( 1995 )", "Toy Story ( 1995 )", "Casino ( 1995 )"]
    assert parse_generation(" toy story ( 1995 )", cands) == 1
    assert parse_generation("TOY STORY ( 1995 ) is my guess", cands) == 1      # substring, case-insensitive
    assert parse_generation("Heat ( 1995 )\nCasino ( 1995 )", cands) == 0      # first line only
    assert parse_generation("Heat ( 1995 ) or Casino ( 1995 )", cands) is None  # two matches: invalid
    assert parse_generation("Jumanji ( 1995 )", cands) is None                 # none: invalid
    assert parse_generation("", cands) is None


def test_candidate_trie_paths_end_on_candidates():
    trie = CandidateTrie({7: [1, 2, 9], 8: [1, 3, 9], 5: [4, 9]})
    assert sorted(CandidateTrie.allowed(trie.root)) == [1, 4]
    assert trie.root[1][3][9][None] == 8 and trie.root[4][9][None] == 5


def test_constrained_decoding_always_returns_one_of_the_candidates(hybrid_lm, small_data):
    batch = first_batch(hybrid_lm, small_data, n=4)
    for budget in (64, 1):  # the generate-mode budget does not cut a constrained answer short
        generated, chosen = greedy_decode(hybrid_lm, batch, max_new_tokens=budget, constrained=True)
        for b, item in enumerate(chosen):
            assert item in batch.candidates[b].tolist()
            assert generated[b] == hybrid_lm.builder.answer_ids[item]


def test_the_kv_cache_is_passed_and_read_under_the_name_the_model_uses(hybrid_lm, small_data):
    """transformers 5.24 renamed `past_key_values` to `cache` (old name warns, removed in 5.40); older releases
    and unconverted models know only `past_key_values`. Ranking must use whichever the model takes, warning-free."""
    class OldNames(torch.nn.Module):
        def forward(self, input_ids=None, attention_mask=None, past_key_values=None, use_cache=None):
            return None

    assert cache_keyword(OldNames()) == "past_key_values"
    assert hybrid_lm.cache_keyword == cache_keyword(hybrid_lm.model)
    assert returned_cache(types.SimpleNamespace(past_key_values="kv")) == "kv"
    assert returned_cache(types.SimpleNamespace(cache="kv", past_key_values=None)) == "kv"

    logged: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(handler)
    logging.Logger.warning_once.cache_clear()  # transformers logs each deprecation once per process
    batch = first_batch(hybrid_lm, small_data, n=2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            scores = score_candidates(hybrid_lm, batch)
            greedy_decode(hybrid_lm, batch, max_new_tokens=3)
            greedy_decode(hybrid_lm, batch, constrained=True)
    finally:
        hf_logger.removeHandler(handler)
    assert torch.isfinite(scores).all()
    assert not [m for m in logged if "deprecated" in m], logged


def test_the_three_modes_share_one_interface(hybrid_lm, small_data):
    batch = first_batch(hybrid_lm, small_data, n=2)
    scored = rank(hybrid_lm, batch, "score")
    assert scored.scores.shape == (2, 6)
    assert scored.chosen == [row[int(k)] for row, k in zip(batch.candidates.tolist(), scored.scores.argmax(1))]
    generated = rank(hybrid_lm, batch, "generate", max_new_tokens=5)
    tok = hybrid_lm.builder.tokenizer
    assert all(0 < len(g) <= 5 for g in generated.generated)
    assert generated.texts == tok.batch_decode(generated.generated, skip_special_tokens=True)
    for b, (text, row) in enumerate(zip(generated.texts, batch.candidates.tolist())):  # LLaRA's matching rule
        k = parse_generation(text, [hybrid_lm.builder.answer_text(c) for c in row])
        assert generated.chosen[b] == (None if k is None else row[k])
    with pytest.raises(ValueError, match="unknown ranking mode"):
        rank(hybrid_lm, batch, "beam")


def test_hybrid_prompts_need_an_encoder(small_data, mean_encoder, tmp_path):
    from llmrec.llm.recommender import assemble_recommender

    lm, _ = build_recommender(tiny_config(tmp_path), small_data, mean_encoder)
    with pytest.raises(ConfigError, match="needs an encoder"):
        build_recommender(tiny_config(tmp_path, prompt="hybrid+summary"), small_data, None)
    with pytest.raises(ConfigError, match="needs an encoder"):
        assemble_recommender(lm.model, lm.builder.tokenizer, Catalog.from_dataset(small_data), "hybrid", None, 128, 0)
    text_lm, facts = build_recommender(tiny_config(tmp_path, prompt="text"), small_data, None)
    assert text_lm.projector is None and facts.encoder_fingerprint is None


def test_every_shipped_llm_config_parses():
    from importlib.resources import files

    from llmrec.base.config import resolve_config
    from llmrec.llm.train import TrainLLMConfig

    shipped = sorted(p for p in files("llmrec").joinpath("configs").iterdir() if p.name.startswith("llm-"))
    assert len(shipped) >= 3
    for path in shipped:
        config = resolve_config(TrainLLMConfig, {}, Path(str(path)))
        assert config.finetune in ("full", "lora")


def test_every_shipped_sdpo_config_parses():
    from importlib.resources import files

    from llmrec.base.config import resolve_config
    from llmrec.preference.train import TrainSDPOConfig

    shipped = sorted(p for p in files("llmrec").joinpath("configs").iterdir() if p.name.startswith("sdpo-"))
    assert {p.name for p in shipped} >= {"sdpo-tiny-cpu-small.yaml", "sdpo-lora-7b.yaml"}
    for path in shipped:
        config = resolve_config(TrainSDPOConfig, {}, Path(str(path)))
        assert config.loss in ("sdpo", "dr-sdpo", "beta-sdpo", "alpha-sdpo") and config.beta > 0


def test_gradient_checkpointing_still_trains_lora_weights(small_data, tmp_path):
    from llmrec.llm.lora import apply_lora

    folder = backbone.build_tiny_llm(small_data.titles(), small_data.catalog_fingerprint(), tmp_path,
                                     backbone.TinySpec(layers=2, hidden=32, heads=2, max_length=128))
    model = apply_lora(backbone.load_causal_lm(folder, gradient_checkpointing=True))
    model.train()
    ids = torch.randint(4, 50, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None for g in grads)


def test_an_encoder_only_model_or_a_folder_without_tokenizer_files_is_named_as_such(small_data, mean_encoder, tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32)).save_pretrained(tmp_path / "bert")
    with pytest.raises(CheckpointError, match="`bert` is an encoder.*not a decoder-only causal LM"):
        build_recommender(tiny_config(tmp_path, llm=str(tmp_path / "bert")), small_data, mean_encoder)
    folder = save_hf_folder(tmp_path / "llama", "llama", small_data)
    for f in folder.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            f.unlink()
    with pytest.raises(CheckpointError, match="no tokenizer files"):
        build_recommender(tiny_config(tmp_path, llm=str(folder)), small_data, mean_encoder)
