"""Log-probabilities of several answers per prompt, each prompt run ONCE: the packed shared-prompt layout.

Ranking (score mode) and preference training (S-DPO: one chosen answer and N negatives) both need
log pi(answer | prompt) for K answers of the same prompt. Running K full prompt+answer sequences repeats the
~300-token prompt K times. Here the K answers of a prompt are packed one after another into ONE row behind
the prompt, and a block-diagonal causal mask lets each answer token see the (unpadded) prompt and the earlier
tokens of its OWN answer only, with positions restarting after the prompt, so every answer is scored exactly as
if it followed the prompt alone:

    row b:  [pad ... prompt_b] [ans_1 tokens][ans_2 tokens] ... [ans_K tokens] [pad]
    mask :   causal over the prompt | every answer token sees the prompt and its own earlier tokens

Two entry points share the packing:
- `sequence_logprobs` (with gradients): one forward pass over prompt + packed answers with a 4-D mask; works
  with LoRA, gradient checkpointing (no KV cache needed) and the projector's slot embeddings;
- `llmrec.llm.ranking.score_candidates` (inference): the prompt pass fills a KV cache that the packed answers
  attend to in a second pass (see there); the vocabulary projection runs on the real answer tokens only, a few
  hundred at a time (`head_logprobs`).
An answer's tokens are the item's answer ids (title + terminator, `PromptBuilder.answer_ids`); the first answer
token is predicted by the prompt's last position, every later one by the answer token before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmrec.llm.hybrid import HybridLM, PromptBatch, position_ids


@dataclass
class PackedAnswers:
    """K answers per prompt packed into one row per prompt (W = the longest row of fed tokens)."""

    ids: torch.Tensor       # [B, K, A] answer ids, terminator-padded to the longest answer A
    lengths: torch.Tensor   # [B, K] answer lengths (tokens, terminator included)
    fed: torch.Tensor       # [B, W] ids fed to the model: every answer token but each answer's last
    target: torch.Tensor    # [B, W] the id each fed token predicts (the next token of its answer)
    block: torch.Tensor     # [B, W] which answer (0..K-1) each fed token belongs to; -1 on row padding
    offset: torch.Tensor    # [B, W] its index inside its answer


def pack_answers(lm: HybridLM, items: torch.Tensor) -> PackedAnswers:
    """Pack the answers of `items` [B, K] (item ids) per row, vectorised (no Python loop over answers)."""
    table, table_lengths = lm.builder.answer_table(items.device)
    B, K = items.shape
    lengths = table_lengths[items]  # [B, K]
    A = int(lengths.max())
    ans = table[items][..., :A]  # [B, K, A]
    dev = ans.device
    fed_mask = (torch.arange(max(A - 1, 0), device=dev) < (lengths - 1)[..., None]).view(B, -1)  # [B, K*(A-1)]
    W = max(int(fed_mask.sum(1).max()) if fed_mask.numel() else 0, 1)
    col = fed_mask.long().cumsum(1) - 1  # packed column of each fed token
    row = torch.arange(B, device=dev)[:, None].expand_as(col)
    where = (row[fed_mask], col[fed_mask])
    fed = torch.full((B, W), lm.builder.eos, dtype=torch.long, device=dev)
    target = torch.zeros((B, W), dtype=torch.long, device=dev)
    block = torch.full((B, W), -1, dtype=torch.long, device=dev)
    offset = torch.zeros((B, W), dtype=torch.long, device=dev)
    if A > 1:
        fed[where] = ans[..., :-1].reshape(B, -1)[fed_mask]
        target[where] = ans[..., 1:].reshape(B, -1)[fed_mask]
        block[where] = torch.arange(K, device=dev).view(1, K, 1).expand(B, K, A - 1).reshape(B, -1)[fed_mask]
        offset[where] = torch.arange(A - 1, device=dev).view(1, 1, A - 1).expand(B, K, A - 1).reshape(B, -1)[fed_mask]
    return PackedAnswers(ans, lengths, fed, target, block, offset)


def answers_see(prompt_mask: torch.Tensor, packed: PackedAnswers) -> torch.Tensor:
    """[B, W, T + W] bool: what each packed answer token may attend to (the unpadded prompt, and the earlier
    tokens of its own answer). Row padding (block -1) sees the prompt only; nothing sees it."""
    block, offset = packed.block, packed.offset
    sees_prompt = prompt_mask.bool()[:, None, :].expand(-1, block.shape[1], -1)  # [B, W, T]
    sees_answer = ((block[:, :, None] == block[:, None, :]) & (offset[:, None, :] <= offset[:, :, None])
                   & (block[:, None, :] >= 0))  # [B, W, W]
    return torch.cat([sees_prompt, sees_answer], dim=2)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool [B, Q, S] -> additive float mask [B, 1, Q, S] (0 where allowed, the dtype's minimum elsewhere)."""
    dtype = dtype if dtype.is_floating_point else torch.float32
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)[:, None]


def answer_positions(prompt_mask: torch.Tensor, packed: PackedAnswers) -> torch.Tensor:
    """[B, W] position ids of the packed tokens: each answer restarts right after its prompt."""
    return position_ids(prompt_mask)[:, -1:] + 1 + packed.offset


def gather_logprobs(first_logits: torch.Tensor, answer_logits: torch.Tensor, packed: PackedAnswers) -> torch.Tensor:
    """[B, K] summed answer log-probs from the prompt's last-position logits [B, V] and the packed tokens'
    logits [B, W, V] (log-softmax normalisers taken at those positions only, in float32)."""
    if packed.ids.shape[2] == 1:
        return summed_logprobs(first_logits, None, packed)
    logits = answer_logits.float()
    tok = logits.gather(2, packed.target[..., None]).squeeze(2) - logits.logsumexp(-1)  # [B, W]
    return summed_logprobs(first_logits, tok, packed)


def summed_logprobs(first_logits: torch.Tensor, tokens: torch.Tensor | None, packed: PackedAnswers) -> torch.Tensor:
    """[B, K] summed answer log-probs from the prompt's last-position logits [B, V] (they predict every answer's
    first token) and the log-prob of each packed token's target `tokens` [B, W] (None: one-token answers);
    row padding (block -1) adds nothing."""
    first = first_logits.float().log_softmax(-1)
    scores = first.gather(1, packed.ids[:, :, 0])  # [B, K]: the first answer token, predicted by the prompt
    if tokens is None:
        return scores
    return scores.scatter_add(1, packed.block.clamp(min=0), tokens.masked_fill(packed.block < 0, 0.0))


# Packed positions whose vocabulary logits exist at once in `head_logprobs`: with batches of 16 prompts and 20
# answers each, the whole [B, W, V] logits tensor (and logsumexp's temporaries of the same size) is 23 MB for the
# tiny model's 2,576 tokens and ~500 MB for SmolLM2's 49,152; 256 rows are 2.6 MB and 50 MB, enough rows for the
# vocabulary matmul to run at full speed.
HEAD_ROWS = 256


def head_logprobs(hidden: torch.Tensor, head: torch.nn.Module, packed: PackedAnswers,
                  rows: int | None = None) -> torch.Tensor:
    """[B, W] log-prob of each packed token's target (0 on row padding) from the decoder's last hidden states
    `hidden` [B, W, H] and the LM head `head` (hidden -> vocabulary logits): the head runs on the real answer
    tokens only (not on row padding), `rows` (default `HEAD_ROWS`) positions at a time, each chunk's logits
    [rows, V] normalised in float32 and dropped before the next (never the whole [B, W, V] tensor)."""
    rows = rows or HEAD_ROWS
    real = packed.block >= 0  # [B, W]
    states, target = hidden[real], packed.target[real]  # [N, H], [N]
    out = torch.empty(target.shape, dtype=torch.float32, device=hidden.device)
    for start in range(0, target.shape[0], rows):
        logits = head(states[start:start + rows]).float()  # [rows, V]
        out[start:start + rows] = (logits.gather(1, target[start:start + rows, None]).squeeze(1)
                                   - logits.logsumexp(-1))
    return torch.zeros(real.shape, dtype=torch.float32, device=hidden.device).masked_scatter(real, out)


def sequence_logprobs(lm: HybridLM, batch: PromptBatch, items: torch.Tensor, hybrid: bool = True) -> torch.Tensor:
    """[B, K] log pi(answer of items[b, k] | prompt b), summed over the answer's tokens, WITH gradients.

    One forward pass of [prompt | packed answers] per row with a 4-D mask (see the module docstring): the prompt
    (hybrid slots filled by the projector) runs once however many answers K there are. Equal, up to float error,
    to running each prompt + answer as its own sequence.
    Args:
        batch: left-padded prompts WITHOUT answers (`with_answer=False` collation).
        items: [B, K] item ids whose answers are scored (e.g. the chosen item and N negatives).
    """
    packed = pack_answers(lm, items)
    T, W = batch.input_ids.shape[1], packed.fed.shape[1]
    prompt = lm.inputs_embeds(batch, hybrid)  # [B, T, H]
    answers = lm.model.get_input_embeddings()(packed.fed).to(prompt.dtype)  # [B, W, H]
    prompt_mask = batch.attention_mask
    causal = torch.ones(T, T, dtype=torch.bool, device=prompt.device).tril()
    prompt_rows = torch.cat([causal[None] & prompt_mask.bool()[:, None, :],
                             torch.zeros(prompt.shape[0], T, W, dtype=torch.bool, device=prompt.device)], dim=2)
    allowed = torch.cat([prompt_rows, answers_see(prompt_mask, packed)], dim=1)  # [B, T+W, T+W]
    # a left-padding query row sees nothing; let it see itself so attention stays finite (its output is unused)
    allowed = allowed | torch.eye(T + W, dtype=torch.bool, device=prompt.device)[None]
    mask = additive_mask(allowed, prompt.dtype if prompt.dtype.is_floating_point else lm.weight_dtype)
    pos = torch.cat([position_ids(prompt_mask), answer_positions(prompt_mask, packed)], dim=1)
    kwargs = {"logits_to_keep": W + 1} if lm.windowed_logits else {}
    logits = lm.model(inputs_embeds=torch.cat([prompt, answers], dim=1), attention_mask=mask, position_ids=pos,
                      use_cache=False, **kwargs).logits
    logits = logits[:, -(W + 1):]
    return gather_logprobs(logits[:, 0], logits[:, 1:], packed)
