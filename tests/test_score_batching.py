"""Score mode's batched path (issue 20, defect 1): the LM head runs on the real answer tokens only, a chunk at a
time, and a batch of prompts scores exactly as each prompt alone and as the plain per-candidate way."""

from __future__ import annotations

import copy

import pytest
import torch
from test_llm_support import full_sequence_scores, tiny_config

from llmrec.llm import logprobs, ranking
from llmrec.llm.datamodule import prompt_loader
from llmrec.llm.logprobs import PackedAnswers, gather_logprobs, head_logprobs, pack_answers
from llmrec.llm.ranking import decoder_and_head, score_candidates
from llmrec.llm.train import build_recommender

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lora_lm(small_data, mean_encoder, tmp_path_factory):
    """A tiny hybrid LoRA model whose adapters and trainable token rows are NOT zero (as after training), with
    answers of 1-3 different lengths (0-2 leading title tokens cut), so packed rows end in padding."""
    lm, facts = build_recommender(tiny_config(tmp_path_factory.mktemp("lora"), finetune="lora", lora_dropout=0.0),
                                  small_data, mean_encoder)
    assert facts.finetune == "lora"
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in lm.model.named_parameters():
            if p.requires_grad:  # lora_A / lora_B and the trainable token rows
                p.add_(torch.randn_like(p) * 0.3)
    lm.builder = copy.copy(lm.builder)
    lm.builder.answer_ids = [a[i % 3:] if a else a for i, a in enumerate(lm.builder.answer_ids)]
    lm.builder.max_answer_length = max(len(a) for a in lm.builder.answer_ids)
    lm.builder._answer_tables = {}
    return lm.eval()


def prompts(lm, small_data, n: int):
    return next(iter(prompt_loader(small_data.split("test"), lm.builder, n, with_answer=False)))


def head_rows(lm) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    """How many positions each call of the LM head projects (a forward hook on it)."""
    seen: list[int] = []
    head = lm.model.get_base_model().get_output_embeddings()
    return seen, head.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[:-1].numel()))


def test_the_head_projects_the_real_answer_tokens_only_a_chunk_at_a_time(lora_lm, small_data, monkeypatch):
    lm = lora_lm
    batch = prompts(lm, small_data, 4)
    packed = pack_answers(lm, batch.candidates)
    real = int((packed.block >= 0).sum())
    assert 0 < real < packed.block.numel()  # the packed rows have padding: the case worth testing
    monkeypatch.setattr(logprobs, "HEAD_ROWS", 7)
    seen, hook = head_rows(lm)
    try:
        scores = score_candidates(lm, batch)
    finally:
        hook.remove()
    # the prompts' last positions (one call), then the real answer tokens, 7 at a time: no padding, no [B, W, V]
    assert seen == [4] + [7] * (real // 7) + ([real % 7] if real % 7 else [])
    with torch.no_grad():
        torch.testing.assert_close(scores, full_sequence_scores(lm, batch), rtol=1e-4, atol=1e-4)


def test_a_batch_scores_as_each_prompt_alone_and_as_the_plain_way(lora_lm, small_data):
    """Batched == one by one == each candidate's prompt + answer run as its own sequence (the plain Hugging Face
    way, which is what score mode computed before the head was split off), with identical rankings; LoRA
    adapters and trainable token rows are non-zero, so the split decoder and head must run them."""
    lm = lora_lm
    batch = prompts(lm, small_data, 6)
    alone = list(prompt_loader(small_data.split("test").head(6), lm.builder, 1, False))
    assert torch.equal(torch.cat([one.candidates for one in alone]), batch.candidates)
    assert len(set(batch.attention_mask.sum(1).tolist())) > 1  # prompts of different lengths: left padding
    together = score_candidates(lm, batch)
    one_by_one = torch.cat([score_candidates(lm, one) for one in alone])
    with torch.no_grad():
        plain = full_sequence_scores(lm, batch)
    torch.testing.assert_close(together, one_by_one, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(together, plain, rtol=1e-4, atol=1e-4)
    assert torch.equal(torch.argsort(together, dim=1, descending=True, stable=True),
                       torch.argsort(plain, dim=1, descending=True, stable=True))
    with lm.model.disable_adapter():  # the adapters matter here, so running them is what the equality shows
        assert (score_candidates(lm, batch) - together).abs().max() > 1e-3


def test_a_model_outside_the_plain_head_list_is_scored_through_its_own_forward(lora_lm, small_data, monkeypatch):
    lm = lora_lm
    batch = prompts(lm, small_data, 3)
    assert decoder_and_head(lm.model) is not None
    split = score_candidates(lm, batch)
    monkeypatch.setattr(ranking, "PLAIN_HEAD_MODELS", frozenset())
    assert decoder_and_head(lm.model) is None
    seen, hook = head_rows(lm)
    try:
        own = score_candidates(lm, batch)
    finally:
        hook.remove()
    width = pack_answers(lm, batch.candidates).fed.shape[1]
    assert seen == [3, 3 * width]  # the model's forward: logits at every packed position, padding included
    torch.testing.assert_close(own, split, rtol=1e-5, atol=1e-5)


def test_head_logprobs_equal_the_log_softmax_of_the_whole_logits():
    torch.manual_seed(0)
    B, K, A, H, V = 2, 3, 4, 8, 11
    ids = torch.randint(0, V, (B, K, A))
    lengths = torch.tensor([[4, 2, 3], [1, 4, 2]])
    block = torch.tensor([[0, 0, 0, 1, 2, 2, -1], [1, 1, 1, 2, -1, -1, -1]])
    offset = torch.tensor([[0, 1, 2, 0, 0, 1, 0], [0, 1, 2, 0, 0, 0, 0]])
    target = torch.randint(0, V, (B, 7))
    packed = PackedAnswers(ids, lengths, torch.zeros_like(target), target, block, offset)
    head = torch.nn.Linear(H, V, bias=False).requires_grad_(False)
    hidden, first = torch.randn(B, 7, H), torch.randn(B, V)
    for rows in (1, 2, 5, 100):
        tokens = head_logprobs(hidden, head, packed, rows=rows)
        want = head(hidden).log_softmax(-1).gather(2, target[..., None]).squeeze(2).masked_fill(block < 0, 0.0)
        torch.testing.assert_close(tokens, want)
        torch.testing.assert_close(logprobs.summed_logprobs(first, tokens, packed),
                                   gather_logprobs(first, head(hidden), packed))


def test_decoder_and_head_of_a_plain_model_and_of_other_objects(lora_lm):
    base = lora_lm.model.get_base_model()
    assert decoder_and_head(base) == (base.get_decoder(), base.get_output_embeddings())
    assert decoder_and_head(torch.nn.Linear(2, 2)) is None  # no config: not a known causal LM
