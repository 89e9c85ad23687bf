"""Shared helpers of the LLM-stage tests (tiny catalog, tiny encoder, tiny backbones); no network, no GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tiny import TINY_LLM_TRAINING
from torch import nn

from llmrec.data.dataset import ProcessedDataset
from llmrec.encoders.base import SequentialEncoder

WORDS = ["Red", "Blue", "Night", "River", "Storm", "Garden", "City", "Moon", "Fire", "Glass", "Stone", "Wolf"]


def tiny_dataset(n_users: int = 24, n_items: int = 30, seq_len: int = 9, n_candidates: int = 20, seed: int = 0,
                 titles: list[str] | None = None, eval_positions: str = "all") -> ProcessedDataset:
    """A `llara`-protocol dataset where each user walks the catalog with stride 1 (learnable), movie titles."""
    rng = np.random.default_rng(seed)
    titles = titles or [f"{WORDS[i % len(WORDS)]} {WORDS[(i * 5 + 3) % len(WORDS)]} ({1980 + i})"
                        for i in range(n_items)]
    seqs = {u: (int(rng.integers(n_items)) + np.arange(seq_len)) % n_items + 1 for u in range(1, n_users + 1)}
    split = {u: ("valid" if u % 6 == 0 else "test" if u % 6 == 1 else "train") for u in seqs}
    rows: dict[str, list] = {"train": [], "valid": [], "test": []}
    for u, s in seqs.items():
        positions = range(3, seq_len) if split[u] == "train" or eval_positions == "all" else [seq_len - 1]
        for p in positions:
            target = int(s[p])
            pool = np.array([i for i in range(1, n_items + 1) if i not in set(s[:p + 1].tolist())])
            cands = np.concatenate([[target], rng.choice(pool, n_candidates - 1, replace=False)]).astype(np.int64)
            rng.shuffle(cands)
            rows[split[u]].append({"user_id": u, "position": p, "history": s[max(0, p - 10):p].astype(np.int64),
                                   "target": target, "candidates": cands})
    items = pd.DataFrame({"item_id": np.arange(1, n_items + 1), "title": titles,
                          "genres": [["g"]] * n_items, "raw_id": [str(i) for i in range(1, n_items + 1)]})
    inter = pd.DataFrame({"user_id": np.repeat(list(seqs), seq_len), "item_id": np.concatenate(list(seqs.values())),
                          "timestamp": np.tile(np.arange(seq_len), n_users)})
    users = pd.DataFrame({"user_id": list(seqs), "raw_id": [str(u) for u in seqs], "split": list(split.values())})
    cols = ["user_id", "position", "history", "target", "candidates"]
    meta = {"dataset": "tiny", "protocol": "llara", "seed": seed, "n_users": n_users, "n_items": n_items,
            "domain": "movies", "eval_positions": eval_positions}
    return ProcessedDataset(meta=meta, items=items, interactions=inter, users=users,
                            samples={k: pd.DataFrame(v, columns=cols) for k, v in rows.items()})


class MeanEncoder(SequentialEncoder):
    """A real (tiny) encoder: the mean of the history's item embeddings."""

    def __init__(self, n_items: int, hidden_size: int = 16, max_length: int = 10, seed: int = 0):
        super().__init__()
        self.n_items, self.hidden_size, self.max_length = n_items, hidden_size, max_length
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Embedding(n_items + 1, hidden_size, padding_idx=0)
        with torch.no_grad():
            self.emb.weight.copy_(torch.randn(n_items + 1, hidden_size, generator=g))
            self.emb.weight[0].zero_()

    def forward(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.emb(item_seq).sum(1) / lengths.clamp(min=1).unsqueeze(1).to(self.emb.weight.dtype)

    def item_embeddings(self) -> torch.Tensor:
        return self.emb.weight


def saved_encoder(data: ProcessedDataset, folder: Path, hidden_size: int = 16, seed: int = 0) -> Path:
    """A real (registry) GRU4Rec with random weights, saved as `llmrec train-encoder` would for `data`."""
    from llmrec.encoders.checkpoint import save_encoder
    from llmrec.encoders.registry import build_encoder

    torch.manual_seed(seed)
    save_encoder(build_encoder("gru4rec", data.n_items, hidden_size=hidden_size, max_length=10), folder, data,
                 index=False)
    return folder


def tiny_config(tmp: Path, **overrides):
    """A `TrainLLMConfig` of `tiny.TINY_LLM_TRAINING` (a 2-layer, 32-hidden Llama) caching its base under `tmp`."""
    from llmrec.llm.train import TrainLLMConfig

    return TrainLLMConfig(**{**TINY_LLM_TRAINING, "cache_dir": Path(tmp) / "cache", **overrides})


def save_hf_folder(folder: Path, arch: str, data: ProcessedDataset, hidden: int = 32, padded_rows: int = 0,
                   seed: int = 0, tokenizer: str = "word") -> Path:
    """A tiny random Llama / Qwen2 / GPT-2 folder with a word-level (or `bpe`) tokenizer, as `save_pretrained`
    writes; `padded_rows` > 0 gives the embedding matrix that many rows more than the tokenizer has tokens, as
    Qwen2 (151,936 rows for 151,665 tokens) and many checkpoints padded to a multiple of 64 do."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    from llmrec.llm.prompts import template_corpus
    from llmrec.llm.tokenizer import train_tokenizer

    tok = train_tokenizer(tokenizer, data.titles()[1:] + template_corpus(), 256, vocab_size=400)
    common = {"vocab_size": len(tok) + padded_rows, "pad_token_id": tok.pad_token_id,
              "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                                             num_attention_heads=2, num_key_value_heads=1,
                                             max_position_embeddings=256, **common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                                             num_attention_heads=2, num_key_value_heads=1,
                                             max_position_embeddings=256, tie_word_embeddings=False, **common))
    else:
        model = GPT2LMHeadModel(GPT2Config(n_embd=hidden, n_layer=2, n_head=2, n_positions=256, **common))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def full_sequence_scores(lm, batch, items=None):
    """Reference: score each of `items` (default: the candidates) by running the whole prompt + answer as its own
    sequence, no cache, no packing, one at a time (differentiable)."""
    items = batch.candidates if items is None else items
    rows = []
    embeds = lm.inputs_embeds(batch)
    emb = lm.model.get_input_embeddings()
    for b in range(items.shape[0]):
        keep = batch.attention_mask[b].bool()
        prompt = embeds[b, keep]  # [P, H]
        row = []
        for item in items[b].tolist():
            ans = torch.tensor(lm.builder.answer_ids[item])
            x = torch.cat([prompt, emb(ans)])[None]
            logits = lm.model(inputs_embeds=x).logits[0].log_softmax(-1)  # [P+A, V]
            P = prompt.shape[0]
            row.append(logits[P - 1:P - 1 + len(ans)].gather(1, ans[:, None]).sum())
        rows.append(torch.stack(row))
    return torch.stack(rows)


def test_tiny_dataset_is_a_valid_llara_set():
    data = tiny_dataset()
    assert data.protocol == "llara" and data.n_items == 30
    for split in ("train", "valid", "test"):
        df = data.split(split)
        assert len(df) and all(t in c for t, c in zip(df["target"], df["candidates"]))
