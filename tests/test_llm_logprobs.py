"""`sequence_logprobs`: several answers per prompt in one packed pass, with gradients, equal to separate sequences."""

from __future__ import annotations

import pytest
import torch
from test_llm_support import full_sequence_scores, save_hf_folder, tiny_config

from llmrec.llm.datamodule import prompt_loader
from llmrec.llm.hybrid import answer_loss, answer_token_losses
from llmrec.llm.logprobs import sequence_logprobs
from llmrec.llm.ranking import score_candidates
from llmrec.llm.train import build_recommender


def prompts(lm, small_data, n=3):
    batch = next(iter(prompt_loader(small_data.split("test"), lm.builder, n, with_answer=False)))
    assert len(set(batch.attention_mask.sum(1).tolist())) > 1  # prompts of different lengths: left padding
    return batch


@pytest.mark.parametrize(("arch", "hybrid"), [("llama", True), ("qwen2", True), ("gpt2", True), ("tiny-full", True),
                                            ("llama", False), ("tiny-full", False)])
def test_values_and_gradients_equal_running_each_prompt_and_answer_separately(arch, hybrid, small_data, mean_encoder,
                                                                             tmp_path):
    llm = "tiny" if arch == "tiny-full" else str(save_hf_folder(tmp_path / arch, arch, small_data))
    lm, facts = build_recommender(tiny_config(tmp_path, llm=llm, lora_dropout=0.0), small_data, mean_encoder)
    lm.eval()  # no dropout, gradients still flow
    batch = prompts(lm, small_data)
    items = batch.candidates[:, :4]  # e.g. the chosen answer and 3 negatives
    params = {n: p for n, p in lm.named_parameters() if p.requires_grad}
    kinds = {"lora_B", "projector.", "trainable_tokens"} if facts.finetune == "lora" else {"projector.", "layers"}
    assert all(any(k in n for n in params) for k in kinds)
    weights = torch.linspace(-1.0, 2.0, items.numel()).view(items.shape)  # any scalar of the [B, K] values

    packed = sequence_logprobs(lm, batch, items, hybrid=hybrid)
    g_packed = torch.autograd.grad((packed * weights).sum(), list(params.values()), allow_unused=True)
    lm.zero_grad()
    reference = full_sequence_scores(lm, batch, items) if hybrid else text_only_reference(lm, batch, items)
    g_reference = torch.autograd.grad((reference * weights).sum(), list(params.values()), allow_unused=True)

    torch.testing.assert_close(packed, reference, rtol=1e-4, atol=1e-4)
    nonzero = 0
    for name, a, b in zip(params, g_packed, g_reference):
        if a is None or b is None:  # e.g. the projector in a text-only pass: unused by both
            assert a is None and b is None or (a if a is not None else b).abs().max() == 0, name
            continue
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5, msg=name)
        nonzero += int(a.abs().max() > 0)
    assert nonzero >= 2  # the test compares real gradients, not zeros
    if hybrid:  # the inference path (shared KV cache) gives the same values
        with torch.no_grad():
            torch.testing.assert_close(score_candidates(lm, batch)[:, :4], packed.detach(), rtol=1e-4, atol=1e-4)


def text_only_reference(lm, batch, items):
    """`full_sequence_scores` on the text-only version of the prompts (behavioural slots -> <|text|>)."""
    from dataclasses import replace

    return full_sequence_scores(_TextOnly(lm), replace(batch, input_ids=lm.builder.to_text_only(batch.input_ids)),
                                items)


class _TextOnly:
    """`lm` seen through a text-only pass: `inputs_embeds` never fills slots."""

    def __init__(self, lm):
        self.lm, self.model, self.builder = lm, lm.model, lm.builder

    def inputs_embeds(self, batch):
        return self.lm.inputs_embeds(batch, hybrid=False)


def test_the_sft_loss_is_available_per_sample_and_weights_act_per_sample():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7, requires_grad=True)
    labels = torch.full((3, 5), -100)
    labels[0, 3:] = torch.tensor([1, 2])      # answers of 2, 3 and 1 tokens (labels end each row)
    labels[1, 2:] = torch.tensor([3, 4, 5])
    labels[2, 4:] = torch.tensor([6])
    sums, counts = answer_token_losses(logits, labels)
    assert counts.tolist() == [2, 3, 1]
    lsm = logits.log_softmax(-1)  # position t predicts the label at t + 1
    by_hand = [-(lsm[0, 2, 1] + lsm[0, 3, 2]), -(lsm[1, 1, 3] + lsm[1, 2, 4] + lsm[1, 3, 5]), -lsm[2, 3, 6]]
    torch.testing.assert_close(sums, torch.stack(by_hand))
    unweighted = answer_loss(logits, labels)
    torch.testing.assert_close(unweighted, sum(by_hand) / 6)  # the usual token mean
    w = torch.tensor([3.0, 0.5, 1.0])
    weighted = answer_loss(logits, labels, w)
    torch.testing.assert_close(weighted, (3.0 * by_hand[0] + 0.5 * by_hand[1] + by_hand[2]) / 6)
    # per sample, not per batch: the batch's mean weight times the unweighted loss is another number
    assert not torch.isclose(weighted, w.mean() * unweighted)
    g0 = torch.autograd.grad(weighted, logits)[0]
    g1 = torch.autograd.grad(answer_loss(logits, labels), logits)[0]
    torch.testing.assert_close(g0[0], 3.0 * g1[0])
    torch.testing.assert_close(g0[1], 0.5 * g1[1])
