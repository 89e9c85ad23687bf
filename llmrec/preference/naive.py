"""The authors' layout for comparison: every answer behind its own full copy of the prompt.

S-DPO's code (like TRL's DPOTrainer's `concatenated_forward`) stacks the chosen sequence and the N rejected
sequences, each prompt + answer in full, into one batch of B * (1 + N) rows, so each extra negative runs the
~300-token prompt once more. This project scores all 1 + N answers behind ONE prompt pass
(`llmrec.llm.logprobs.sequence_logprobs`); this module keeps the naive layout only to check that both give the
same log-probs and gradients (tests) and to measure what the packed layout saves (the step-cost benchmark).
"""

from __future__ import annotations

import torch

from llmrec.llm.hybrid import IGNORE, HybridLM, PromptBatch, answer_token_losses


def concatenated_batch(lm: HybridLM, batch: PromptBatch, items: torch.Tensor) -> PromptBatch:
    """B * K rows, row k * B + b = prompt b followed by the answer of items[b, k], left-padded, labels on the answer.

    Rows are ordered answer-major (all prompts with their first answer, then with their second, ...), so the
    slot items of the K copies are simply `history_items` / `candidate_items` repeated K times.
    """
    B, K = items.shape
    table, lengths = lm.builder.answer_table(items.device)
    pad = int(lm.builder.tokenizer.pad_token_id)
    prompts = [batch.input_ids[b][batch.attention_mask[b].bool()] for b in range(B)]
    seqs, answer_lengths = [], []
    for k in range(K):
        for b in range(B):
            answer = table[items[b, k], :lengths[items[b, k]]]
            seqs.append(torch.cat([prompts[b], answer]))
            answer_lengths.append(len(answer))
    width = max(len(s) for s in seqs)
    device = batch.input_ids.device
    ids = torch.full((B * K, width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((B * K, width), dtype=torch.long, device=device)
    labels = torch.full((B * K, width), IGNORE, dtype=torch.long, device=device)
    for row, (s, n) in enumerate(zip(seqs, answer_lengths)):
        ids[row, width - len(s):] = s
        mask[row, width - len(s):] = 1
        labels[row, width - n:] = s[len(s) - n:]
    return PromptBatch(
        input_ids=ids, attention_mask=mask, labels=labels,
        history_items=batch.history_items.repeat(K), candidate_items=batch.candidate_items.repeat(K),
        targets=batch.targets.repeat(K), candidates=batch.candidates.repeat(K, 1),
        user_id=batch.user_id.repeat(K), position=batch.position.repeat(K),
        summary_seq=batch.summary_seq.repeat(K, 1) if batch.summary_seq is not None else None,
        summary_lengths=batch.summary_lengths.repeat(K) if batch.summary_lengths is not None else None)


def concatenated_logprobs(lm: HybridLM, batch: PromptBatch, items: torch.Tensor, hybrid: bool = True
                          ) -> torch.Tensor:
    """[B, K] summed answer log-probs from B * K full prompt + answer sequences in one forward pass (with
    gradients). Equal, up to float error, to `sequence_logprobs(lm, batch, items, hybrid)`.

    Args:
        batch: left-padded prompts WITHOUT answers.
        items: [B, K] item ids whose answers are scored.
    """
    B, K = items.shape
    sums, _ = answer_token_losses(*lm.answer_logits(concatenated_batch(lm, batch, items), hybrid))
    return -sums.view(K, B).T
