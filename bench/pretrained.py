"""SmolLM2-135M-Instruct, a real pretrained Llama (`--llm smollm2-135m`), as the pipeline's LLM at a CPU budget.

    .venv/bin/llmrec demo                                        # first: the data and baselines this compares with
    .venv/bin/python bench/pretrained.py quality --write         # every row not yet in the results file, in order
    .venv/bin/python bench/pretrained.py quality --write --rows zero_shot sft_hybrid_500_lora
    .venv/bin/python bench/pretrained.py quality --write --redo zero_shot   # measure a row again

Everything is compared on the demo's data and samples: ML-100K, `llara` protocol, `all` eval positions, prepare
seed 42 (`data/processed/ml-100k-llara-all`), and the SAME 1,000 seeded test samples (seed 42) that the demo's
table ranks. The baselines are the demo's own models (`checkpoints/demo`): MostPop, SASRec
(`encoder-sasrec-demo.yaml`) and the tiny Llama SFT (`llm-tiny-cpu-demo.yaml`, 20,000 samples); their rows are
read from the demo's evaluation folders, not retrained.

Rows (one seed, 42: three seeds do not fit this CPU; every row says its scale):
- `zero_shot`: SmolLM2 untrained, text prompts (no behavioural tokens), score mode;
- `sft_hybrid_<N>_<lora|full>`: `llmrec train-llm --llm smollm2-135m` with hybrid prompts (the demo's SASRec as
  encoder), the linear text -> hybrid curriculum, one epoch on a seeded subset (seed 42) of N training samples,
  batch 8, LoRA r 16 (alpha 32) lr 1e-3 or full fine-tuning lr 5e-5 (the issue's settings); checkpoint choice on 100 valid samples at the end of the epoch (one choice: the end).
- ablations at one budget (`--budget N --finetune lora|full`, default the LoRA run on 1,000 samples), each its own
  training run with ONE setting changed from `sft_hybrid_<N>_<finetune>` (which is itself the `curriculum` row:
  hybrid prompts, LLaRA's linear curriculum): `sft_text` (text-only prompts), `sft_hybrid_summary` (hybrid +
  RecInterpreter's whole-history token), `direct` (hybrid from the first step: LLaRA Table 3's "w/o curriculum"),
  `two_stage` (text for the first half, hybrid for the second), `reweighted` (IFairLRS popularity weights), and
  `sdpo`: `train-sdpo` (S-DPO, 3 negatives, beta 1, LoRA lr 1e-4, one epoch on N/2 seeded samples) from that SFT run.
Each LLM row is ranked ONCE in score mode with summed answer log-probs; the mean-per-token ranking of the same
run is computed exactly from that table (each candidate's summed score divided by its answer's token count, the
rule `--score-norm mean` applies), so `_sum` and `_mean` rows share one training run and one ranking pass. A row
with a checkpoint is also ranked in `generate` mode (LLaRA's protocol: greedy decoding, first line, a valid output
names exactly one candidate) on a seeded subset (seed 42) of `--generate-samples` test samples.

The results file (`bench/results/pretrained.json`) is rewritten after every row, so a stop loses nothing already
measured; trained models stay under `--work` and `--resume`-able train-llm state under `<out>.resume/`, so a
re-run continues where it stopped. Rows already in the results file are skipped unless named in `--redo`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from machine import cpu_name, update_results  # bench/machine.py (scripts run from bench/)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results" / "pretrained.json"
SEED = 42                      # the demo's seed: its data, its test subset
TEST_SAMPLES = 1000            # the demo's `--llm-test-samples`
FINETUNE = {"lora": {"finetune": "lora", "lora_r": 16, "lora_alpha": 32, "lr": 1e-3},
            "full": {"finetune": "full", "lr": 5e-5}}
BUDGETS = (500, 1000, 2000, 4000)
# one setting changed from the hybrid linear-curriculum run at the ablation budget (train-llm options)
ABLATIONS: dict[str, dict[str, Any]] = {
    "sft_text": {"prompt": "text", "encoder": None},
    "sft_hybrid_summary": {"prompt": "hybrid+summary"},
    "direct": {"curriculum": "constant", "curriculum_constant": 1.0},
    "two_stage": {"curriculum": "step"},
    "reweighted": {"fairness_weights": "popularity"},
}
SDPO = {"negatives": 3, "loss": "sdpo", "beta": 1.0, "lr": 1e-4, "epochs": 1, "batch_size": 8}
ORDER = ["mostpop", "sasrec", "tiny_sft", "zero_shot",
         *[f"sft_hybrid_{n}_{ft}" for n in BUDGETS for ft in ("lora", "full")],
         "curriculum", *ABLATIONS, "sdpo"]
log = logging.getLogger("bench.pretrained")


def machine() -> dict[str, Any]:
    import torch
    import transformers

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "transformers": transformers.__version__,
            "python": platform.python_version()}


def metrics_row(metrics: dict[str, Any], **more: Any) -> dict[str, Any]:
    """The results-file fields of a score-mode metrics.json."""
    return {"hr@1": metrics.get("hr@1", metrics.get("candidates/hr@1")),
            "candidates/ndcg@5": metrics.get("candidates/ndcg@5"), "mgu@1": metrics.get("mgu@1"),
            "n_samples": metrics.get("n_samples"), **more}


def demo_rows(demo: Path, data) -> dict[str, dict[str, Any]]:
    """MostPop, SASRec and the tiny SFT LLM as the demo ranked them on its 1,000 test samples: the metrics are
    recomputed from each ranking's scores.parquet by the same functions as every other row (mgu@1 included)."""
    from llmrec.evaluation.groups import item_groups
    from llmrec.evaluation.ranked_metrics import ranked_fairness, split_metrics
    from llmrec.evaluation.scores import read_scores

    groups = item_groups(data, "popularity")
    rows = {}
    for name, folder, extra in (("mostpop", "mostpop", {"finetune": None}), ("sasrec", "sasrec", {"finetune": None}),
                                ("tiny_sft", "llm-hybrid-sasrec", {"finetune": "full", "prompt": "hybrid",
                                                                   "score_norm": "mean", "sft_samples": 20000})):
        ranking = demo / folder / "eval-test-score"
        if not (ranking / "scores.parquet").is_file():
            raise SystemExit(f"{ranking}/scores.parquet is missing: run `llmrec demo` first (or pass --demo DIR)")
        recorded = json.loads((ranking / "metrics.json").read_text())
        if recorded.get("n_samples") != TEST_SAMPLES or recorded.get("seed") != SEED:
            raise SystemExit(f"{ranking}: ranked {recorded.get('n_samples')} samples with seed "
                             f"{recorded.get('seed')}; expected the demo's {TEST_SAMPLES} with seed {SEED}")
        table = read_scores(ranking)
        metrics = {**split_metrics(table, "score"), **ranked_fairness(table, data, groups)}
        # no train_seconds: the demo run that made these models may have shared the CPU; the demo's own timed run
        # from a fresh clone is in bench/results/demo.json
        rows[name] = metrics_row(metrics, train_seconds=None, source=str(ranking.relative_to(ROOT))
                                 if ranking.is_relative_to(ROOT) else str(ranking), **extra)
    return rows


def mean_scored(ranked, lengths) -> Any:
    """The same table ranked by mean log-prob per answer token: summed scores / answer token counts."""
    import numpy as np

    out = ranked.copy()
    out["scores"] = [np.asarray(s, dtype=np.float64) / lengths[np.asarray(c, dtype=np.int64)]
                     for s, c in zip(ranked["scores"], ranked["candidates"])]
    return out


def score_rows(name: str, ranked, lengths, data, more: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`<name>_sum` and `<name>_mean` rows from one summed-score ranking."""
    from llmrec.evaluation.groups import item_groups
    from llmrec.evaluation.ranked_metrics import ranked_fairness, split_metrics

    groups = item_groups(data, "popularity")
    rows = {}
    for norm, table in (("sum", ranked), ("mean", mean_scored(ranked, lengths))):
        metrics = {**split_metrics(table, "score"), **ranked_fairness(table, data, groups)}
        rows[f"{name}_{norm}"] = metrics_row(metrics, score_norm=norm, **more)
    return rows


def answer_lengths(lm) -> Any:
    return lm.builder.answer_table()[1].numpy().astype("float64")


def zero_shot(data, work: Path) -> dict[str, dict[str, Any]]:
    """SmolLM2 as it comes, text prompts, score mode on the demo's test samples."""
    from llmrec.base.config import resolve_config
    from llmrec.evaluation.scores import read_scores, write_evaluation
    from llmrec.llm.ranker import evaluate_split
    from llmrec.llm.train import TrainLLMConfig, build_recommender

    folder = work / "zero_shot"
    config = resolve_config(TrainLLMConfig, {"data": data.root, "llm": "smollm2-135m", "prompt": "text",
                                             "seed": SEED, "score_norm": "sum", "finetune": "lora"})
    lm, _ = build_recommender(config, data, None)
    lm.eval()
    if (folder / "scores.parquet").is_file():
        ranked, seconds = read_scores(folder), json.loads((folder / "metrics.json").read_text()).get("seconds")
    else:
        started = time.perf_counter()
        metrics, ranked = evaluate_split(lm, data, "test", "score", 8, TEST_SAMPLES, SEED)
        seconds = time.perf_counter() - started
        write_evaluation(folder, {**metrics, "seconds": seconds}, ranked)
    return score_rows("zero_shot", ranked, answer_lengths(lm), data,
                      {"finetune": None, "prompt": "text", "sft_samples": 0, "train_seconds": 0.0,
                       "rank_seconds": seconds})


def sft_values(data, demo: Path, out: Path, n: int, finetune: str, changed: dict[str, Any]) -> dict[str, Any]:
    """train-llm's options of an SFT row: the hybrid linear-curriculum run on `n` samples, `changed` applied."""
    return {"data": data.root, "encoder": demo / "sasrec", "llm": "smollm2-135m", "out": out, "prompt": "hybrid",
            "curriculum": "linear", "epochs": 1, "batch_size": 8, "eval_batch_size": 8, "max_train_samples": n,
            "max_valid_samples": 100, "max_test_samples": TEST_SAMPLES, "val_check_interval": 1.0,
            "warmup_ratio": 0.03, "seed": SEED, "score_norm": "sum", "progress_bar": False,
            "resume": (Path(f"{out}.resume")).is_dir(), **FINETUNE[finetune], **changed}


def sft(name: str, data, demo: Path, work: Path, n: int, finetune: str, generate_samples: int,
        changed: dict[str, Any] | None = None, folder: str | None = None) -> dict[str, dict[str, Any]]:
    """Train (or reuse) SmolLM2 SFT on `n` samples (`changed`: train-llm options that differ from the hybrid
    linear-curriculum run; `folder`: the run's folder under `work`, default `name`), then its sum / mean score rows
    and its generate metrics."""
    from llmrec.base.config import resolve_config
    from llmrec.llm.train import TrainLLMConfig, run_train_llm

    changed = changed or {}
    out = work / (folder or name)
    if not (out / "checkpoint.json").is_file():
        run_train_llm(resolve_config(TrainLLMConfig, sft_values(data, demo, out, n, finetune, changed)))
    values = sft_values(data, demo, out, n, finetune, changed)
    more = {"finetune": finetune, "prompt": values["prompt"], "sft_samples": n, "lr": FINETUNE[finetune]["lr"],
            "curriculum": values["curriculum"], "fairness_weights": values.get("fairness_weights", "none"),
            "run": str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out)}
    return trained_rows(name, out, data, generate_samples, more)


def sdpo(name: str, data, demo: Path, work: Path, n: int, finetune: str, generate_samples: int
         ) -> dict[str, dict[str, Any]]:
    """S-DPO (3 negatives) from the SFT run at the ablation budget, on n/2 seeded samples; its rows."""
    from llmrec.base.config import resolve_config
    from llmrec.preference.train import TrainSDPOConfig, run_train_sdpo

    start = work / f"sft_hybrid_{n}_{finetune}"
    if not (start / "checkpoint.json").is_file():
        raise SystemExit(f"{start} is missing: measure sft_hybrid_{n}_{finetune} (or `curriculum`) first")
    out = work / f"sdpo_{n}_{finetune}"
    if not (out / "checkpoint.json").is_file():
        run_train_sdpo(resolve_config(TrainSDPOConfig, {
            "sft": start, "data": data.root, "out": out, "max_train_samples": n // 2, "max_valid_samples": 100,
            "max_test_samples": TEST_SAMPLES, "eval_batch_size": 8, "val_check_interval": 1.0, "seed": SEED,
            "score_norm": "sum", "progress_bar": False, "resume": (Path(f"{out}.resume")).is_dir(), **SDPO}))
    more = {"finetune": finetune, "prompt": "hybrid", "sft_samples": n, "sdpo_samples": n // 2, "lr": SDPO["lr"],
            "sdpo": {k: v for k, v in SDPO.items() if k != "lr"}, "run": str(out.relative_to(ROOT))
            if out.is_relative_to(ROOT) else str(out)}
    return trained_rows(name, out, data, generate_samples, more)


def trained_rows(name: str, out: Path, data, generate_samples: int, more: dict[str, Any]
                 ) -> dict[str, dict[str, Any]]:
    """The sum / mean score rows of a trained checkpoint's test ranking, and its generate-mode metrics."""
    from llmrec.commands.evaluate import EvaluateConfig, run_evaluate
    from llmrec.evaluation.scores import read_scores
    from llmrec.llm.checkpoint import load_recommender

    trained = json.loads((out / "metrics.json").read_text())
    ranked = read_scores(out / "eval-test-score")
    if len(ranked) != TEST_SAMPLES:
        raise SystemExit(f"{out}/eval-test-score ranked {len(ranked)} samples; expected {TEST_SAMPLES}")
    lm = load_recommender(out, data)
    rows = score_rows(name, ranked, answer_lengths(lm), data, {**more, "train_seconds": trained["train_seconds"]})
    gen_out = out / f"eval-test-generate-{generate_samples}"
    if not (gen_out / "metrics.json").is_file():
        run_evaluate(EvaluateConfig(ckpt=out, data=data.root, mode="generate", split="test",
                                    max_samples=generate_samples, seed=SEED, out=gen_out))
    generated = json.loads((gen_out / "metrics.json").read_text())
    for row in rows.values():
        row.update({"valid_ratio": generated["valid_ratio"], "generate_hr@1": generated["hr@1"],
                    "n_generate_samples": generated["n_samples"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["quality"])
    parser.add_argument("--rows", nargs="+", choices=ORDER, default=None,
                        help="rows to measure (default: every row, in order, until --until)")
    parser.add_argument("--until", choices=ORDER, default="sft_hybrid_2000_full", help="last row of the default order")
    parser.add_argument("--redo", nargs="+", default=[], help="measure these rows again even if recorded")
    parser.add_argument("--demo", type=Path, default=ROOT / "checkpoints" / "demo", help="`llmrec demo`'s --out")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "processed" / "ml-100k-llara-all")
    parser.add_argument("--work", type=Path, default=ROOT / "checkpoints" / "bench-pretrained")
    parser.add_argument("--generate-samples", type=int, default=100)
    parser.add_argument("--budget", type=int, choices=BUDGETS, default=1000,
                        help="training samples of the ablation rows (curriculum, sft_text, ..., sdpo)")
    parser.add_argument("--finetune", choices=sorted(FINETUNE), default="lora", help="fine-tuning of the ablations")
    parser.add_argument("--write", action="store_true", help=f"write rows to {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from llmrec.data.dataset import ProcessedDataset

    data = ProcessedDataset.load(args.data)
    if data.meta.get("seed") != SEED or data.meta.get("eval_positions") != "all":
        raise SystemExit(f"{args.data}: expected the demo's data (llara, all positions, seed {SEED})")
    wanted = args.rows or ORDER[:ORDER.index(args.until) + 1]
    recorded = json.loads(RESULTS.read_text()).get("rows", {}) if RESULTS.is_file() else {}
    rows: dict[str, dict[str, Any]] = dict(recorded)
    for name in wanted:
        keys = [name] if name in ("mostpop", "sasrec", "tiny_sft") else [f"{name}_sum", f"{name}_mean"]
        if all(k in recorded for k in keys) and name not in args.redo:
            log.info("%s: recorded, skipped (--redo %s to measure it again)", name, name)
            continue
        started, load_before = time.perf_counter(), os.getloadavg()[0]
        if name in ("mostpop", "sasrec", "tiny_sft"):
            new = {name: demo_rows(args.demo, data)[name]}
        elif name == "zero_shot":
            new = zero_shot(data, args.work)
        elif name == "curriculum":  # the hybrid linear-curriculum run at the budget: the same run, not retrained
            new = sft(name, data, args.demo, args.work, args.budget, args.finetune, args.generate_samples,
                      folder=f"sft_hybrid_{args.budget}_{args.finetune}")
        elif name in ABLATIONS:
            new = sft(name, data, args.demo, args.work, args.budget, args.finetune, args.generate_samples,
                      ABLATIONS[name], folder=f"{name}_{args.budget}_{args.finetune}")
        elif name == "sdpo":
            new = sdpo(name, data, args.demo, args.work, args.budget, args.finetune, args.generate_samples)
        else:
            n, finetune = int(name.split("_")[2]), name.split("_")[3]
            new = sft(name, data, args.demo, args.work, n, finetune, args.generate_samples)
        for row in new.values():
            row["measured"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            row["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        rows.update(new)
        log.info("%s done in %.0f s: %s", name, time.perf_counter() - started, json.dumps(new))
        if args.write:
            update_results(RESULTS, "rows", rows)
            update_results(RESULTS, "n_test_samples", TEST_SAMPLES)
            update_results(RESULTS, "seeds", [SEED])
            update_results(RESULTS, "scale", "CPU budget: one seed (42); SmolLM2-135M trained one epoch on N seeded "
                                             "ML-100K llara training samples; every row ranks the demo's 1,000 "
                                             "seeded test samples (score mode) and a seeded subset of "
                                             f"{args.generate_samples} of them in generate mode. Seconds are wall "
                                             "times on the 2-core CPU; each row records the 1-minute load average "
                                             "before and after it (about 2 = both cores busy with it alone)")
            update_results(RESULTS, "machine", machine())
            update_results(RESULTS, "date", time.strftime("%Y-%m-%d", time.gmtime()))
            update_results(RESULTS, "command", "python bench/pretrained.py quality --write")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
