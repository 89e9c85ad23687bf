"""GPU speed of the LLM stage with a Llama-2-7B-shaped model (random weights from its config; nothing downloaded).

    .venv/bin/python bench/llm_gpu.py --shape 7b --write        # on a CUDA GPU, bf16
    .venv/bin/python bench/llm_gpu.py --shape tiny --device cpu # smoke check of the script itself (no figures)

Measures, through the framework's own code (`HybridLM`, `score_candidates`, `greedy_decode`, `apply_lora`):
  - ranking: `score` users/s (prompt ~260 tokens, 20 candidates, shared KV cache) and `generate` users/s (greedy,
    64 new tokens: random weights almost never emit EOS, so every row runs the full budget);
  - LoRA training (bf16, r=8 on q,k,v,o,gate,up,down): tokens/s at `--train-batch`, model-FLOPs utilisation
    = 6 * params * tokens/s / `--peak-tflops` (790 for an H100 SXM in dense bf16, as the issue defines it),
    and peak memory at batch 1 with gradient checkpointing.
The prompts come from a synthetic catalog (random 3-6 word titles) rendered with the movie templates.
No figure from `--shape tiny` is meaningful; `--write` refuses it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import update_results  # bench/machine.py (scripts run from bench/)

from llmrec.encoders.registry import build_encoder
from llmrec.llm.backbone import add_slot_tokens, enable_checkpointing
from llmrec.llm.datamodule import prompt_loader
from llmrec.llm.hybrid import HybridLM
from llmrec.llm.lora import apply_lora
from llmrec.llm.projector import Projector
from llmrec.llm.prompts import PromptBuilder, template_corpus
from llmrec.llm.ranking import greedy_decode, score_candidates
from llmrec.llm.tokenizer import train_word_level_tokenizer

RESULTS = ROOT / "bench" / "results" / "llm.json"
SHAPES = {
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 32, "vocab_size": 32000},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 4, "vocab_size": 32000},
}


def synthetic_samples(n_items: int, n_samples: int, seed: int = 0) -> tuple[list[str], pd.DataFrame]:
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(3000)]
    titles = [""] + [" ".join(rng.choice(words, rng.integers(3, 7))) + f" ({1950 + i % 70})"
                     for i in range(n_items)]
    rows = []
    for u in range(n_samples):
        items = rng.choice(np.arange(1, n_items + 1), 30, replace=False)
        rows.append({"user_id": u, "position": 10, "history": items[:10], "target": int(items[10]),
                     "candidates": items[10:30]})
    return titles, pd.DataFrame(rows)


def build(shape: str, device: str, dtype: torch.dtype, n_samples: int) -> tuple[HybridLM, pd.DataFrame]:
    from transformers import LlamaConfig, LlamaForCausalLM

    titles, samples = synthetic_samples(2000, n_samples)
    tok = train_word_level_tokenizer(titles[1:] + template_corpus(), 1024)
    config = LlamaConfig(max_position_embeddings=1024, **SHAPES[shape])
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    slots = add_slot_tokens(tok, model)
    builder = PromptBuilder(tok, titles, "movies", slots, 1024)
    encoder = build_encoder("sasrec", len(titles) - 1, hidden_size=64, max_length=10)
    projector = Projector(64, config.hidden_size).to(dtype)
    return HybridLM(model, builder, "hybrid", projector, encoder).to(device), samples


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ranking(lm: HybridLM, samples: pd.DataFrame, batch_size: int, device: str, mode: str) -> float:
    batches = [b.to(device) for b in prompt_loader(samples, lm.builder, batch_size, with_answer=False)]
    run = (lambda b: score_candidates(lm, b)) if mode == "score" else (lambda b: greedy_decode(lm, b, 64))
    run(batches[0])  # warm-up
    sync(device)
    t = time.perf_counter()
    for b in batches:
        run(b)
    sync(device)
    return len(samples) / (time.perf_counter() - t)


def time_training(lm: HybridLM, samples: pd.DataFrame, batch_size: int, device: str, steps: int,
                  checkpointing: bool) -> tuple[float, float]:
    """(tokens/s, peak GiB) of LoRA training steps at `batch_size`."""
    model = lm.model.get_base_model() if hasattr(lm.model, "get_base_model") else lm.model
    if checkpointing:
        enable_checkpointing(model)
    elif hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()
    lm.train()
    params = [p for p in lm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    loader = prompt_loader(samples, lm.builder, batch_size, with_answer=True)
    batches = [b.to(device) for _, b in zip(range(steps + 1), loader)]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    tokens, elapsed = 0, 0.0
    for i, b in enumerate(batches):
        sync(device)
        t = time.perf_counter()
        lm.loss(b).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i:  # first step is warm-up
            elapsed += time.perf_counter() - t
            tokens += int(b.attention_mask.sum())
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return tokens / max(elapsed, 1e-9), peak


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=list(SHAPES), default="7b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--n-samples", type=int, default=256)
    p.add_argument("--score-batch", type=int, default=16)
    p.add_argument("--generate-batch", type=int, default=16)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--peak-tflops", type=float, default=790.0)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    if args.write and args.shape != "7b":
        raise SystemExit("--write records only the 7b shape")
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    lm, samples = build(args.shape, args.device, dtype, args.n_samples)
    lm.eval()
    result = {"score_users_per_s": time_ranking(lm, samples, args.score_batch, args.device, "score"),
              "generate_users_per_s": time_ranking(lm, samples.iloc[:max(args.generate_batch * 2, 1)],
                                                   args.generate_batch, args.device, "generate")}
    n_params = sum(p.numel() for p in lm.model.parameters())
    lm.model = apply_lora(lm.model)
    lm.to(args.device)
    tps, _ = time_training(lm, samples, args.train_batch, args.device, args.train_steps, checkpointing=False)
    _, peak_b1 = time_training(lm, samples, 1, args.device, 3, checkpointing=True)
    result.update({"train_tokens_per_s": tps, "train_mfu": 6 * n_params * tps / (args.peak_tflops * 1e12),
                   "peak_mem_gib_b1_gc": peak_b1, "params": n_params, "shape": args.shape,
                   "prompt_tokens_mean": float(np.mean([len(lm.builder.build(h, c).ids) for h, c in
                                                        zip(samples["history"][:32], samples["candidates"][:32])])),
                   "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                   "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    print(json.dumps(result, indent=2))
    if args.write:
        update_results(RESULTS, "gpu", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
