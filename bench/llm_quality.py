"""Quality of the LLM recommender on ML-100K `llara`: hybrid vs text-only prompts vs SASRec vs MostPop.

    .venv/bin/python bench/llm_quality.py --scale full  --seeds 0 1 2 --write   # GPU: the issue's protocol
    .venv/bin/python bench/llm_quality.py --scale cpu   --seeds 0 1 2 --write   # CPU: one epoch of a 2 x 128 model
    .venv/bin/python bench/llm_quality.py --scale small --seeds 0 --write       # CPU smoke: a 3k-sample subset

Every model ranks the SAME stored 20 candidates. Per seed:
  1. MostPop and SASRec are trained with `llmrec train-encoder` on the `all` dataset (train users only);
  2. the tiny LLM is trained twice with `llmrec train-llm` on the same data, `--prompt hybrid` (encoder = that
     SASRec, frozen) and `--prompt text`, checkpoint chosen on valid hr@1 (score mode);
  3. every model is evaluated in `score` mode (encoders: inner-product scores) on the `all` test set (`hr@1`,
     thousands of samples) and on the `last` test set (`hr@1_last`, one sample per test user).
Scales:
  full  -- llmrec/configs/llm-tiny.yaml (4 layers x 256 hidden, 4 epochs over all ~79k training samples),
           SASRec with the encoder defaults; meant for a GPU (minutes per model on an H100).
  cpu   -- llmrec/configs/llm-tiny-cpu.yaml (2 x 128, ONE epoch over all ~79k training samples, ~20 min per
           model on 2 CPU cores), SASRec for at most 15 epochs, the whole `all` test set; written as "scale": "cpu".
  small -- llmrec/configs/llm-tiny-cpu-small.yaml (2 x 128, a seeded 3k-sample training subset, one epoch),
           SASRec for at most 15 epochs, the `all` test set cut to a seeded 600-sample subset. Meant for a CPU;
           its numbers are smoke-level and are written with "scale": "small", never as the full result.
With `--write` the means/stds over seeds go to bench/results/llm.json under `quality_<scale>`, and under `quality`
for the full scale (or the CPU scale while no full-scale result exists; its "scale" field says which).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
from machine import (  # bench/machine.py (scripts run from bench/)
    cpu_name,
    update_results,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmrec.base.config import resolve_config
from llmrec.data.dataset import ProcessedDataset
from llmrec.llm.train import TrainLLMConfig, run_train_llm

RESULTS = ROOT / "bench" / "results" / "llm.json"
SCALES = {
    "full": {"llm_config": "llm-tiny.yaml", "encoder_epochs": 200, "max_test_samples": None},
    "cpu": {"llm_config": "llm-tiny-cpu.yaml", "encoder_epochs": 15, "max_test_samples": None},
    "small": {"llm_config": "llm-tiny-cpu-small.yaml", "encoder_epochs": 15, "max_test_samples": 600},
}


def cached(model_dir: Path, key: str, compute, *args) -> float:
    """A test figure of one trained model, computed once and kept beside it (`bench-results.json`), so that a
    re-run (more seeds, an interrupted run) re-evaluates nothing."""
    path = model_dir / "bench-results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    if key not in results:
        results[key] = float(compute(*args))
        path.write_text(json.dumps(results, indent=2) + "\n")
    return results[key]


def train_encoder(model: str, data_dir: Path, out: Path, seed: int, epochs: int, device: str) -> Path:
    from llmrec.encoders.train import TrainEncoderConfig, run_train_encoder

    if not (out / "config.yaml").is_file():
        run_train_encoder(TrainEncoderConfig(data=data_dir, out=out, model=model, seed=seed, max_epochs=epochs,
                                             device=device, progress_bar=False, hidden_size=64 if model != "mostpop"
                                             else None, max_length=10 if model != "mostpop" else None))
    return out


def encoder_hr1(encoder_dir: Path, data: ProcessedDataset, max_samples: int | None, seed: int) -> float:
    """Candidate hr@1 of an encoder on (a seeded subset of) the test split, via the encoder stage's evaluator."""
    from llmrec.encoders.checkpoint import load_encoder
    from llmrec.encoders.ranker import evaluate_encoder
    from llmrec.data.sampling import subset

    encoder = load_encoder(encoder_dir, data)
    sub = ProcessedDataset(meta=data.meta, items=data.items, interactions=data.interactions, users=data.users,
                           samples={**data.samples, "test": subset(data.split("test"), max_samples, seed)},
                           root=data.root)
    return float(evaluate_encoder(encoder, sub, "test", batch_size=1024)["candidates/hr@1"])


def llm_hr1(ckpt: Path, data: ProcessedDataset, encoder_dir: Path | None, max_samples: int | None, seed: int,
            device: str) -> float:
    from llmrec.llm.ranker import evaluate_split
    from llmrec.llm.checkpoint import load_recommender

    lm = load_recommender(ckpt, data, device=device)  # the checkpoint carries its own encoder
    return float(evaluate_split(lm, data, "test", "score", 16, max_samples, seed)[0]["hr@1"])


def summary(values: list[float], seeds: list[int]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "seeds": dict(zip(map(str, seeds), values))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", choices=list(SCALES), default="full")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data-all", type=Path, default=ROOT / "data/processed/ml-100k-llara-all")
    p.add_argument("--data-last", type=Path, default=ROOT / "data/processed/ml-100k-llara")
    p.add_argument("--work", type=Path, default=ROOT / "checkpoints/bench-llm")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scale = SCALES[args.scale]
    device = args.device if args.device != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    torch_device = "cuda" if device == "gpu" else "cpu"
    data_all, data_last = ProcessedDataset.load(args.data_all), ProcessedDataset.load(args.data_last)
    if data_all.catalog_fingerprint() != data_last.catalog_fingerprint():
        raise SystemExit("the `all` and `last` datasets have different catalogs; prepare both from the same source")
    rows: dict[str, dict[str, list[float]]] = {m: {"hr@1": [], "hr@1_last": []}
                                               for m in ("mostpop", "sasrec", "text", "hybrid")}
    seconds: dict[str, float] = {}
    for seed in args.seeds:
        work = args.work / args.scale / f"seed{seed}"
        enc = {m: train_encoder(m, args.data_all, work / m, seed, scale["encoder_epochs"], device)
               for m in ("mostpop", "sasrec")}
        for m in enc:  # training time as recorded by each run (a re-run reuses finished models)
            seconds[f"{m}_seed{seed}"] = json.loads((enc[m] / "metrics.json").read_text()).get("train_seconds")
        n_all = scale["max_test_samples"]
        for m in ("mostpop", "sasrec"):
            rows[m]["hr@1"].append(cached(enc[m], f"all:{n_all}:{seed}", encoder_hr1, enc[m], data_all, n_all, seed))
            rows[m]["hr@1_last"].append(cached(enc[m], "last", encoder_hr1, enc[m], data_last, None, seed))
        for prompt in ("hybrid", "text"):
            out = work / f"llm-{prompt}"
            if not (out / "checkpoint.json").is_file():
                config = resolve_config(TrainLLMConfig, {
                    "data": args.data_all, "encoder": enc["sasrec"] if prompt == "hybrid" else None,
                    "prompt": prompt, "out": out, "seed": seed, "device": device,
                    "max_test_samples": scale["max_test_samples"],
                    "precision": "bf16-mixed" if device == "gpu" else "32-true"},
                    ROOT / "llmrec" / "configs" / scale["llm_config"])
                run_train_llm(config)
            seconds[f"llm_{prompt}_seed{seed}"] = json.loads((out / "metrics.json").read_text())["train_seconds"]
            encoder_dir = enc["sasrec"] if prompt == "hybrid" else None
            trained = json.loads((out / "metrics.json").read_text())
            # train-llm already ranked the `all` test set; reuse it when it is the same seeded subset
            same = trained["test/n_samples"] == min(n_all or 10**9, len(data_all.split("test")))
            rows[prompt]["hr@1"].append(trained["test/hr@1"] if same else cached(
                out, f"all:{n_all}:{seed}", llm_hr1, out, data_all, encoder_dir, n_all, seed, torch_device))
            rows[prompt]["hr@1_last"].append(cached(out, "last", llm_hr1, out, data_last, encoder_dir, None, seed,
                                                    torch_device))
        print(json.dumps({m: {k: v[-1] for k, v in r.items()} for m, r in rows.items()}, indent=2))
    quality = {m: {k: summary(v, args.seeds) for k, v in r.items()} for m, r in rows.items()}
    quality.update({
        "device": torch.cuda.get_device_name() if device == "gpu" else f"cpu ({cpu_name()}, {torch.get_num_threads()} "
                                                                       f"torch threads)",
        "scale": args.scale, "llm_config": scale["llm_config"],
        "n_test_all": min(len(data_all.split("test")), scale["max_test_samples"] or 10**9),
        "n_test_last": len(data_last.split("test")), "seconds": seconds,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    print(json.dumps(quality, indent=2))
    if args.write:
        update_results(RESULTS, f"quality_{args.scale}", quality)
        # `quality` holds the most complete protocol measured (all training data, whole test sets): the full scale,
        # else the CPU scale, whose "scale" and "llm_config" fields say so; never the small smoke scale
        current = json.loads(RESULTS.read_text()).get("quality", {})
        if args.scale == "full" or (args.scale == "cpu" and current.get("scale") != "full"):
            update_results(RESULTS, "quality", quality)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
