"""CPU training speed of the tiny LLM: the answer-window loss vs the loss on full-sequence logits, side by side.

    .venv/bin/python bench/llm_train_speed.py --data data/processed/ml-100k-llara-all [--write]

One run, same model sizes and batches for both variants: forward + backward + AdamW step of `HybridLM` on
hybrid training prompts of ML-100K `llara` (~270 tokens each). `full` computes logits at every position and
takes the loss on the answer; `window` is what `HybridLM.loss` does (logits only for the answer window).
Variants alternate per round; samples/s = trained samples / the fastest round. With `--write` the figures go to
`bench/results/llm.json` under `train_speed_cpu`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import (  # bench/machine.py (scripts run from bench/)
    cpu_name,
    update_results,
)

from llmrec.data.dataset import ProcessedDataset
from llmrec.encoders.registry import build_encoder
from llmrec.llm.datamodule import prompt_loader
from llmrec.llm.hybrid import answer_loss
from llmrec.data.sampling import subset
from llmrec.llm.train import TrainLLMConfig, build_recommender

RESULTS = ROOT / "bench" / "results" / "llm.json"


def round_seconds(lm, batches, variant: str) -> float:
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-4)
    started = time.perf_counter()
    for batch in batches:
        loss = lm.loss(batch) if variant == "window" else answer_loss(lm(batch, use_cache=False).logits, batch.labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=ROOT / "data/processed/ml-100k-llara-all")
    p.add_argument("--sizes", nargs="+", default=["4x256", "2x128"], help="LAYERSxHIDDEN of the tiny Llama")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches", type=int, default=8, help="training batches per round")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cache-dir", default=str(ROOT / "data/cache/llm"))
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    data = ProcessedDataset.load(args.data)
    encoder = build_encoder("sasrec", data.n_items, hidden_size=64, num_layers=2, max_length=10)
    result: dict = {}
    for size in args.sizes:
        layers, hidden = map(int, size.split("x"))
        config = TrainLLMConfig(llm="tiny", tiny_layers=layers, tiny_hidden=hidden, tiny_heads=4,
                                cache_dir=Path(args.cache_dir), seed=0)
        torch.manual_seed(0)
        lm, _ = build_recommender(config, data, encoder)
        lm.train()
        loader = prompt_loader(subset(data.split("train"), args.batch_size * args.batches, 0), lm.builder,
                               args.batch_size, True)
        batches = list(loader)
        round_seconds(lm, batches[:2], "window")  # warm-up
        times: dict[str, list[float]] = {"full": [], "window": []}
        for _ in range(args.repeats):
            for variant in times:
                times[variant].append(round_seconds(lm, batches, variant))
        n = args.batch_size * args.batches
        result[size] = {f"{v}_samples_per_s": n / min(t) for v, t in times.items()}
        result[size]["speedup"] = min(times["full"]) / min(times["window"])
        result[size]["prompt_tokens_mean"] = float(sum(int(b.attention_mask.sum()) for b in batches) / n)
        print(size, json.dumps(result[size]), flush=True)
    result.update({"batch_size": args.batch_size, "batches_per_round": args.batches, "repeats": args.repeats,
                   "device": f"{cpu_name()}, {torch.get_num_threads()} torch threads",
                   "load_avg_1m": os.getloadavg()[0], "torch": torch.__version__,
                   "command": "bench/llm_train_speed.py " + " ".join(sys.argv[1:]),
                   "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    print(json.dumps(result, indent=2))
    if args.write:
        update_results(RESULTS, "train_speed_cpu", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
