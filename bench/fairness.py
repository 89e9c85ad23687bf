"""Item-side fairness (IFairLRS) on ML-100K `llara`: MostPop, SASRec, the LLM, reweighted, re-ranked, and S-DPO.

    .venv/bin/python bench/fairness.py --seeds 0 1 2 --write

Reuses the models `bench/sdpo.py quality` trains (same `--work` folder, same CPU scale: tiny Llama 2 x 128,
hybrid prompts, SFT on `--sft-samples` training samples, S-DPO with 3 negatives on `--sdpo-samples`), and adds,
per seed:
  - `llm_reweighted`: the same SFT with `--fairness-weights popularity` (per-sample IFairLRS weights);
  - `llm_reranked`: `llmrec rerank --alpha auto` on the SFT model's saved scores, alpha chosen on the valid
    ranking (the `all` valid set, score mode) for the largest drop of valid MGU@5/10 within 5% of valid hr@1;
  - `sdpo_reweighted`: S-DPO from the (unweighted) SFT model with `--fairness-weights popularity`;
  - `sdpo_reranked`: `llmrec rerank --alpha auto` on the S-DPO model's saved scores, alpha chosen alike.
Every model ranks the SAME stored 20 candidates of the whole `all` test set; popularity groups are 5 equal-size
groups by training interaction count. Figures per model: `hr@1`, `mgu@1`, `mgu@5`, `mgu@10`, `dgu@1` (mean, std,
per seed), the chosen alpha, the group edges. Results are written after every seed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
from machine import update_results  # bench/machine.py (scripts run from bench/)
from sdpo import ROOT, VARIANTS, machine, summary, train_encoder, train_sdpo, train_sft

sys.path.insert(0, str(ROOT))

from llmrec.base.config import resolve_config
from llmrec.data.dataset import ProcessedDataset

RESULTS = ROOT / "bench" / "results" / "fairness.json"
KEYS = ("hr@1", "mgu@1", "mgu@5", "mgu@10", "dgu@1")
log = logging.getLogger("bench.fairness")


def evaluate_valid(folder: Path, data_dir: Path, samples: int | None) -> Path:
    """The model's valid ranking in score mode (`eval-valid-score/`) on a seeded subset of `samples` valid samples
    (None: all), which `rerank` measures U_G and chooses alpha on."""
    from llmrec.commands.evaluate import EvaluateConfig, run_evaluate

    out = folder / "eval-valid-score"
    if not (out / "scores.parquet").is_file():
        run_evaluate(EvaluateConfig(ckpt=folder, data=data_dir, split="valid", mode="score", batch_size=32,
                                    device="cpu", max_samples=samples, seed=0))
    return out


def llm_fairness(folder: Path, data: ProcessedDataset) -> dict:
    """hr@1 and fairness of a checkpoint's saved test ranking (`eval-test-score/`), computed from its scores."""
    from llmrec.evaluation.ranked_metrics import ranked_fairness
    from llmrec.evaluation.scores import read_scores
    from llmrec.evaluation.groups import item_groups

    ranked = read_scores(folder / "eval-test-score")
    metrics = json.loads((folder / "eval-test-score" / "metrics.json").read_text())
    fair = ranked_fairness(ranked, data, item_groups(data, "popularity"))
    return {"hr@1": metrics["hr@1"], **{k: fair[k] for k in KEYS if k in fair}}


def rerank(folder: Path, data_dir: Path) -> dict:
    from llmrec.fairness.rerank_command import RerankConfig, run_rerank

    out = folder / "rerank-popularity"
    if not (out / "metrics.json").is_file():
        run_rerank(resolve_config(RerankConfig, {"scores": folder, "alpha": "auto", "data": data_dir}))
    m = json.loads((out / "metrics.json").read_text())
    return {**{k: m[k] for k in KEYS}, "alpha": m["alpha"]}


def encoder_fairness(folder: Path) -> dict:
    test = json.loads((folder / "metrics.json").read_text())["test"]
    return {k: test[f"candidates/{k}"] for k in KEYS}


FOLDERS = {"mostpop": "mostpop", "sasrec": "sasrec", "llm": "sft-hybrid", "llm_reweighted": "sft-hybrid-reweighted",
           "llm_reranked": "sft-hybrid", "sdpo": "sdpo", "sdpo_reweighted": "sdpo-reweighted", "sdpo_reranked": "sdpo"}


def figures(name: str, folder: Path, data: ProcessedDataset, data_dir: Path) -> dict:
    if name in ("mostpop", "sasrec"):
        return encoder_fairness(folder)
    if name.endswith("_reranked"):
        return rerank(folder, data_dir)
    return llm_fairness(folder, data)


def collect(args, data: ProcessedDataset, groups) -> dict:
    """Every model's figures over the seeds it has been trained for (an interrupted run still reports them)."""
    result: dict = {}
    alphas: dict[str, dict] = {}
    for name, sub in FOLDERS.items():
        per_seed = {}
        for seed in args.seeds:
            folder = args.work / f"seed{seed}" / sub
            ready = (folder / "metrics.json").is_file() and (
                not name.endswith("_reranked") or (folder / "eval-valid-score" / "scores.parquet").is_file())
            if ready:
                per_seed[seed] = figures(name, folder, data, args.data)
        if per_seed:
            seeds = list(per_seed)
            result[name] = {k: summary([per_seed[s].get(k) for s in seeds], seeds) for k in KEYS}
            if name.endswith("_reranked"):
                alphas[name] = {str(s): per_seed[s]["alpha"] for s in seeds}
    result.update({
        "alpha": {"seeds": alphas.get("llm_reranked", {})},
        "alpha_sdpo": {"seeds": alphas.get("sdpo_reranked", {})}, "groups": groups.to_dict(),
        "device": f"cpu ({machine()['cpu']}, {torch.get_num_threads()} torch threads)", "machine": machine(),
        "scale": (f"cpu: tiny Llama 2x128, hybrid prompts, SFT one epoch on {args.sft_samples} training samples, "
                  f"S-DPO (N=3) one epoch on {args.sdpo_samples}; the whole `all` test set "
                  f"({args.max_test_samples or len(data.split('test'))} samples), 20 stored candidates; popularity "
                  f"groups (5, training counts); re-ranking alpha chosen on "
                  f"{args.valid_samples} seeded valid samples; each model's seeds are listed with it"),
        "date": time.strftime("%Y-%m-%d"), "command": "python bench/fairness.py " + " ".join(sys.argv[1:])})
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data", type=Path, default=ROOT / "data/processed/ml-100k-llara-all")
    p.add_argument("--work", type=Path, default=ROOT / "checkpoints/bench-sdpo")
    p.add_argument("--sft-samples", type=int, default=20000)
    p.add_argument("--sdpo-samples", type=int, default=4000)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-valid-samples", type=int, default=1000)
    p.add_argument("--max-test-samples", type=int, default=None)
    p.add_argument("--valid-samples", type=int, default=3000,
                   help="valid samples (seeded subset) that re-ranking measures U_G and chooses alpha on")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = ProcessedDataset.load(args.data)
    from llmrec.evaluation.groups import item_groups

    groups = item_groups(data, "popularity")

    def write() -> None:
        result = collect(args, data, groups)
        print(json.dumps({n: {k: v["mean"] for k, v in r.items()} for n, r in result.items()
                          if isinstance(r, dict) and "hr@1" in r}, indent=1))
        if args.write:
            for key, value in result.items():
                update_results(RESULTS, key, value)

    for seed in args.seeds:
        work = args.work / f"seed{seed}"
        enc = {m: train_encoder(m, args.data, work / m, seed) for m in ("mostpop", "sasrec")}
        sft = train_sft(args, enc["sasrec"], work / "sft-hybrid", seed)
        evaluate_valid(sft, args.data, args.valid_samples)
        write()
        evaluate_valid(train_sdpo(args, sft, work / "sdpo", seed, VARIANTS["sdpo"]), args.data, args.valid_samples)
        write()
        train_sft(args, enc["sasrec"], work / "sft-hybrid-reweighted", seed, extra={"fairness_weights": "popularity"})
        write()
        train_sdpo(args, sft, work / "sdpo-reweighted", seed, {**VARIANTS["sdpo"], "fairness_weights": "popularity"})
        write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
