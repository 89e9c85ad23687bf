"""Ranking speed of the LLM recommender: `score` vs `generate` (and `constrained`) on the same model and samples.

    .venv/bin/python bench/llm_speed.py --data data/processed/ml-100k-llara-all [--ckpt DIR] [--write]

One run, one model, the same test samples and batch size for every mode. Without `--ckpt`, a tiny Llama of
the default size (4 layers x 256 hidden, word-level tokenizer) is built and trained for `--train-steps` steps
on the training samples first, so that it has learnt the answer format (title + EOS) and `generate` stops when
a trained model would, instead of always running the full 64 new tokens; the encoder is an untrained SASRec
(ranking speed does not depend on its weights). Modes are timed in alternation, `--repeats` rounds after a
warm-up batch; users/s = samples / the fastest round (the machine may be shared), medians are reported too.
`--model-cache FILE` saves the trained tiny model's weights there (or reloads them when the file exists), so
repeated measurements skip the training and use the very same weights.
With `--write` the figures go to `bench/results/llm.json` under `speed_cpu` (or `speed_<device>`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
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
from llmrec.llm.datamodule import prompt_loader
from llmrec.llm.ranking import rank
from llmrec.data.sampling import subset
from llmrec.llm.train import TrainLLMConfig, build_recommender, fit

RESULTS = ROOT / "bench" / "results" / "llm.json"


def build_model(args, data):
    if args.ckpt:
        from llmrec.encoders.checkpoint import load_encoder
        from llmrec.llm.checkpoint import load_recommender

        encoder = load_encoder(Path(args.encoder), data) if args.encoder else None  # default: the bundled copy
        return load_recommender(Path(args.ckpt), data, encoder, device=args.device), f"checkpoint {args.ckpt}"
    from llmrec.encoders.registry import build_encoder

    encoder = build_encoder("sasrec", data.n_items, hidden_size=64, num_layers=2, max_length=10)
    config = TrainLLMConfig(llm="tiny", tiny_layers=args.layers, tiny_hidden=args.hidden, tiny_heads=4,
                            max_length=512, cache_dir=Path(args.cache_dir), epochs=1, max_steps=args.train_steps,
                            batch_size=16, lr=2e-3, max_train_samples=16 * args.train_steps,
                            max_valid_samples=16, eval_batch_size=8, device="cpu" if args.device == "cpu" else "gpu",
                            curriculum="constant", seed=0)
    lm, _ = build_recommender(config, data, encoder)
    desc = f"tiny Llama {args.layers}x{args.hidden}, full fine-tune for {args.train_steps} steps of 16"
    cache = Path(args.model_cache) if args.model_cache else None
    if cache is not None and cache.is_file():  # the same trained weights as an earlier run: skip the training
        saved = torch.load(cache, map_location="cpu", weights_only=True)  # tensors + plain values: no pickle
        if saved["key"] != [args.layers, args.hidden, args.train_steps]:
            raise SystemExit(f"{cache} holds a model for {saved['key']}, not {[args.layers, args.hidden, args.train_steps]}")
        lm.load_state_dict(saved["lm"])
        encoder.load_state_dict(saved["encoder"])
        lm.item_table.copy_(encoder.item_embeddings().detach().float())
        desc += f" (weights reloaded from {cache.name}, trained in {saved['train_s']:.0f} s)"
    else:
        started = time.time()
        if args.train_steps > 0:
            fit(lm, data, config)
        train_s = time.time() - started
        desc += f" ({train_s:.0f} s)"
        if cache is not None:
            torch.save({"key": [args.layers, args.hidden, args.train_steps], "lm": lm.state_dict(),
                        "encoder": encoder.state_dict(), "train_s": train_s}, cache)
    return lm.to(args.device).eval(), desc + ", untrained SASRec encoder"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=ROOT / "data/processed/ml-100k-llara-all")
    p.add_argument("--ckpt", type=Path, default=None, help="a train-llm checkpoint (default: build a tiny one)")
    p.add_argument("--encoder", type=Path, default=None)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--train-steps", type=int, default=60)
    p.add_argument("--n-samples", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", nargs="+", default=["score", "generate", "constrained"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "llmrec-bench-cache"))
    p.add_argument("--model-cache", default=None,
                   help="file to save the trained tiny model to, or reload it from when it exists")
    p.add_argument("--write", action="store_true", help="merge the figures into bench/results/llm.json")
    p.add_argument("--section", default=None,
                   help="section of llm.json to write (default: speed_cpu on the CPU, speed_gpu_tiny on a GPU)")
    args = p.parse_args()

    torch.manual_seed(0)
    data = ProcessedDataset.load(args.data)
    lm, desc = build_model(args, data)
    samples = subset(data.split("test"), args.n_samples, 0)
    batches = [b.to(args.device) for b in prompt_loader(samples, lm.builder, args.batch_size, with_answer=False)]
    n = len(samples)
    rank(lm, batches[0], "score")  # warm-up
    rank(lm, batches[0], "generate", max_new_tokens=4)
    times: dict[str, list[float]] = {m: [] for m in args.modes}
    gen_tokens: list[int] = []
    for _ in range(args.repeats):
        for mode in args.modes:
            if args.device != "cpu":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for b in batches:
                r = rank(lm, b, mode)
                if mode == "generate" and len(gen_tokens) < n:
                    gen_tokens += [len(g) for g in r.generated]  # includes the EOS that stopped the row
            if args.device != "cpu":
                torch.cuda.synchronize()
            times[mode].append(time.perf_counter() - t)
    result = {f"{m}_users_per_s": n / min(ts) for m, ts in times.items()}
    result.update({f"{m}_users_per_s_median": n / statistics.median(ts) for m, ts in times.items()})
    if "score" in times and "generate" in times:
        result["ratio"] = result["score_users_per_s"] / result["generate_users_per_s"]
    result.update({
        "mean_generated_tokens": statistics.mean(gen_tokens) if gen_tokens else None,
        "n_samples": n, "batch_size": args.batch_size, "repeats": args.repeats, "model": desc,
        "prompt_tokens_mean": float(sum(int(b.attention_mask.sum()) for b in batches) / n),
        "load_avg_1m": os.getloadavg()[0],  # the machine may be shared: other jobs slow every mode alike
        "device": (cpu_name() + f", {torch.get_num_threads()} torch threads") if args.device == "cpu"
        else torch.cuda.get_device_name(), "data": str(args.data),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    print(json.dumps(result, indent=2))
    if args.write:
        key = args.section or ("speed_cpu" if args.device == "cpu" else "speed_gpu_tiny")
        update_results(RESULTS, key, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
