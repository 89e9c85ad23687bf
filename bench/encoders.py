"""Benchmark the ID encoders (issue 3): MostPop, SASRec, GRU4Rec, Caser x 3 seeds on ML-100K.

    .venv/bin/python bench/encoders.py            # all models, seeds 42 43 44
    .venv/bin/python bench/encoders.py --models sasrec --seeds 42
    .venv/bin/python bench/encoders.py --speed    # the speed target: SASRec, loo, seed 42, alone, default threads

Each (model, seed) is trained twice with the shipped preset `llmrec/configs/encoder-<model>.yaml`:
- on `loo` data (`data/processed/ml-100k-loo`): full ranking over all items, the user's earlier items
  excluded; early stopping / checkpoint choice on valid `full/ndcg@10`;
- on `llara` data with `--eval-positions all` (`data/processed/ml-100k-llara-all`): the stored 20 candidates;
  early stopping / checkpoint choice on valid `candidates/hr@1` (the `all` valid set).
Every figure written is a TEST figure of the epoch chosen on VALID. `bench/results/encoders.json` holds, per
model, `{"mean", "std", "seeds"}` (std: sample standard deviation over seeds) for `full/ndcg@10`,
`full/hr@10` (loo), `candidates/hr@1`, `candidates/hr@1_last` (llara all / its last-position subset),
`train_seconds` (loo run: whole fit incl. per-epoch validation), `seconds_to_best_epoch`, `full_eval_seconds`
(full ranking of all 943 test users), and the same for the llara run with a `llara/` prefix.
Prepare the data first: `llmrec prepare --dataset ml-100k --protocol loo` and
`llmrec prepare --dataset ml-100k --protocol llara --eval-positions all`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from machine import cpu_name  # bench/machine.py (scripts run from bench/)

ROOT = Path(__file__).resolve().parents[1]

MODELS = ("mostpop", "sasrec", "gru4rec", "caser")
LOO_KEYS = {"full/ndcg@10": "full/ndcg@10", "full/hr@10": "full/hr@10", "full/ndcg@20": "full/ndcg@20",
            "full/hr@20": "full/hr@20", "full_eval_seconds": "eval_seconds"}
LLARA_KEYS = {"candidates/hr@1": "candidates/hr@1", "candidates/hr@1_last": "candidates/hr@1_last",
              "candidates/ndcg@5": "candidates/ndcg@5"}


def summary(values: list[float], seeds: list[int]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "seeds": dict(zip(map(str, seeds), values))}


def run_one(model: str, proto: str, data: Path, out: Path, seed: int, device: str, threads: int | None) -> dict:
    """One `llmrec train-encoder` run in its own process (so runs can go side by side with --jobs)."""
    preset = ROOT / "llmrec" / "configs" / f"encoder-{model}.yaml"
    cmd = [sys.executable, "-m", "llmrec", "train-encoder", "--config", str(preset), "--data", str(data),
           "--out", str(out), "--seed", str(seed), "--device", device, "--no-progress-bar"]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"[bench] failed: {shlex.join(cmd)}\n{done.stderr[-3000:]}")
    m = json.loads((out / "metrics.json").read_text())
    print(f"[bench] {model} {proto} seed {seed}: {time.perf_counter() - t0:.0f}s, best epoch {m['best_epoch']}, "
          f"{m['monitor']} = {m['valid'][m['monitor'].removeprefix('valid/')]:.4f}", flush=True)
    return m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    p.add_argument("--loo", type=Path, default=ROOT / "data/processed/ml-100k-loo")
    p.add_argument("--llara", type=Path, default=ROOT / "data/processed/ml-100k-llara-all")
    p.add_argument("--work", type=Path, default=ROOT / "runs/bench-encoders", help="checkpoints go here")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/encoders.json")
    p.add_argument("--device", default="auto")
    p.add_argument("--jobs", type=int, default=1, help="runs side by side (each gets cpu_count // jobs threads); "
                                                      "timings are only comparable with --jobs 1 on a quiet machine")
    p.add_argument("--speed", action="store_true",
                   help="only the speed check: one SASRec loo run (seed 42) alone with default threads; writes "
                        "`sasrec_speed_check` and keeps every other figure in --out")
    args = p.parse_args()
    if args.speed:
        return speed_check(args)

    import torch

    try:
        import faiss
        faiss_version = faiss.__version__
    except ImportError:
        faiss_version = None
    results: dict = {}
    if args.out.is_file():  # keep other models' figures when re-running a subset
        old = json.loads(args.out.read_text())
        results = {m: old[m] for m in MODELS if m in old}
    jobs = [(model, seed, proto, data, keys) for model in args.models for seed in args.seeds
            for proto, data, keys in (("loo", args.loo, LOO_KEYS), ("llara", args.llara, LLARA_KEYS))]
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    machine = {"platform": platform.platform(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
               "torch_threads_per_run": threads or torch.get_num_threads(), "jobs": args.jobs,
               "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, model, proto, data, args.work / f"{model}-{proto}-seed{seed}", seed,
                               args.device, threads) for model, seed, proto, data, _ in jobs]
        for model in args.models:  # results are written as soon as each model's runs are done
            rows: dict[str, list[float]] = {}
            for (m_name, _seed, proto, _, keys), future in zip(jobs, futures):
                if m_name != model:
                    continue
                m = future.result()
                for name, key in keys.items():
                    rows.setdefault(name, []).append(m["test"][key])
                prefix = "" if proto == "loo" else "llara/"
                for name in ("train_seconds", "seconds_to_best_epoch", "best_epoch"):
                    rows.setdefault(prefix + name, []).append(float(m[name]))
                monitor = m["monitor"].removeprefix("valid/")
                rows.setdefault(prefix + "valid/" + monitor, []).append(m["valid"][monitor])
            results[model] = {k: summary(v, args.seeds) for k, v in rows.items()}
            results[model]["preset"] = f"llmrec/configs/encoder-{model}.yaml"
            write(args, results, machine, faiss_version)
    for m, r in results.items():
        print(m, "  ".join(f"{k}={v['mean']:.4f}±{v['std']:.4f}" for k, v in r.items()
                           if isinstance(v, dict) and not k.startswith("llara/")))


def speed_check(args: argparse.Namespace) -> None:
    """Issue 3's speed target on a quiet machine: time to the best valid epoch and full-ranking eval time."""
    import torch

    load_before = os.getloadavg()[0]
    m = run_one("sasrec", "loo", args.loo, args.work / "speed-sasrec-loo-seed42", 42, args.device, None)
    check = {"command": ".venv/bin/python bench/encoders.py --speed",
             "conditions": f"one run alone, default torch threads ({torch.get_num_threads()}), seed 42, "
                           f"1-min load average {load_before:.2f} before and {os.getloadavg()[0]:.2f} after",
             "cpu": cpu_name(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
             "seconds_to_best_epoch": m["seconds_to_best_epoch"], "train_seconds": m["train_seconds"],
             "best_epoch": m["best_epoch"], "full_eval_seconds_test": m["test"]["eval_seconds"],
             "test/full/ndcg@10": m["test"]["full/ndcg@10"], "test/full/hr@10": m["test"]["full/hr@10"]}
    doc = json.loads(args.out.read_text()) if args.out.is_file() else {}
    doc["sasrec_speed_check"] = check
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(args.out)
    print(json.dumps(check, indent=2))


def write(args: argparse.Namespace, results: dict, machine: dict, faiss_version: str | None) -> None:
    import numpy
    import pytorch_lightning
    import torch

    doc = {
        **{m: results[m] for m in MODELS if m in results},
        "machine": machine,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/encoders.py", *sys.argv[1:]]),
        "versions": {"python": platform.python_version(), "torch": str(torch.__version__),
                     "pytorch_lightning": pytorch_lightning.__version__, "numpy": numpy.__version__,
                     "faiss": faiss_version},
        "data": {"loo": str(args.loo), "llara": str(args.llara)},
        "notes": "test-split figures of the epoch chosen on VALID (loo: full/ndcg@10, llara: candidates/hr@1 on "
                 "the `all` valid set); std = sample std over seeds; full ranking excludes the user's earlier "
                 "items; candidates/hr@1 on the `all` test set, candidates/hr@1_last on each test user's final "
                 "position (= the `last` set); train_seconds include per-epoch validation; full_eval_seconds = "
                 "scoring all 943 loo test users (full ranking + candidates).",
    }
    if args.out.is_file():  # the separately measured speed check survives a quality rerun
        old = json.loads(args.out.read_text())
        doc.update({k: old[k] for k in ("sasrec_speed_check",) if k in old})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
