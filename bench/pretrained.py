"""SmolLM2-135M-Instruct, a real pretrained Llama (`--llm smollm2-135m`), as the pipeline's LLM at a CPU budget.

    .venv/bin/llmrec demo                                        # first: the data and baselines this compares with
    .venv/bin/python bench/pretrained.py quality --write         # every row not yet in the results file, in order
    .venv/bin/python bench/pretrained.py quality --write --rows zero_shot sft_hybrid_500_lora
    .venv/bin/python bench/pretrained.py quality --write --redo zero_shot   # measure a row again
    .venv/bin/python bench/pretrained.py speed --write --full              # cost per sample, ours vs plain

Everything is compared on the demo's data and samples: ML-100K, `llara` protocol, `all` eval positions, prepare
seed 42 (`data/processed/ml-100k-llara-all`), and the SAME 1,000 seeded test samples (seed 42) that the demo's
table ranks. The baselines are the demo's own models (`checkpoints/demo`): MostPop, SASRec
(`encoder-sasrec-demo.yaml`) and the tiny Llama SFT (`llm-tiny-cpu-demo.yaml`, 20,000 samples); their rows are
read from the demo's evaluation folders, not retrained.

Rows (one seed, 42: three seeds do not fit this CPU; every row says its scale):
- `zero_shot`, `zero_shot_chat`: SmolLM2 untrained, text prompts (no behavioural tokens), as plain text or as
  the user turn of its chat template (`--prompt-format chat`), in score mode and in generate mode;
- `sft_hybrid_<N>_<lora|full>`: `llmrec train-llm --llm smollm2-135m` with hybrid prompts (the demo's SASRec as
  encoder), the linear text -> hybrid curriculum, one epoch on a seeded subset (seed 42) of N training samples,
  batch 8, LoRA r 16 (alpha 32) lr 1e-3 or full fine-tuning lr 5e-5 (the issue's settings); checkpoint choice on 100 valid samples at the end of the epoch (one choice: the end).
- ablations at one budget (`--budget N --finetune lora|full`, default the LoRA run on 1,000 samples), each its own
  training run with ONE setting changed from `sft_hybrid_<N>_<finetune>` (which is itself the `curriculum` row:
  hybrid prompts, LLaRA's linear curriculum): `sft_text` (text-only prompts), `sft_hybrid_summary` (hybrid +
  RecInterpreter's whole-history token), `direct` (hybrid from the first step: LLaRA Table 3's "w/o curriculum"),
  `two_stage` (text for the first half, hybrid for the second), `reweighted` (IFairLRS popularity weights),
  `sft_chat` (the prompts as the user turn of SmolLM2's chat template, its answer the assistant turn), and
  `sdpo`: `train-sdpo` (S-DPO, 3 negatives, beta 1, LoRA lr 1e-4, one epoch on N/2 seeded samples) from that SFT run.
Each LLM row is ranked ONCE in score mode with summed answer log-probs; the mean-per-token ranking of the same
run is computed exactly from that table (each candidate's summed score divided by its answer's token count, the
rule `--score-norm mean` applies), so `_sum` and `_mean` rows share one training run and one ranking pass. A row
with a checkpoint is also ranked in `generate` mode (LLaRA's protocol: greedy decoding, first line, a valid output
names exactly one candidate) on a seeded subset (seed 42) of `--generate-samples` test samples.

`speed` (`.venv/bin/python bench/pretrained.py speed --write [--samples N] [--full] [--llm smollm2-135m|tiny]`)
measures in one run, on the same N seeded test samples (seed 42) and text prompts (no encoder needed), what each
sample costs: score mode ours (`evaluate_split`'s ranker: the prompt once, all answers packed on its KV cache,
batches of 8) vs the plain Hugging Face way (`plain_scores`: each candidate's prompt + answer as its own sequence,
the 20 of a sample batched, full logits), checking that both give the same scores; SFT ours (the Lightning
module's training step, windowed logits) vs plain (`model(input_ids, labels).loss`, full logits), LoRA r 16 (and
full fine-tuning with `--full`) on N seeded training samples, batches of 8, after one warm-up step; FLOPs per
sample of each (`torch.utils.flop_counter`, on the first batch) and their share of the float32 matmul throughput
measured at the model's shapes in the same run; int8 score mode and the `--llm-layers 15` cut. The `speed`
section of the results file is rewritten as each part finishes; the `rows` section is never touched.

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
    "sft_chat": {"prompt_format": "chat"},
}
ZERO_SHOT = {"zero_shot": "plain", "zero_shot_chat": "chat"}  # row: prompt format
# a resumable state every 10 steps (80 samples, ~4 min of SmolLM2 training here) instead of train-llm's 50, so a
# session that ends mid-row loses little; it does not change what is trained (not part of the resume key)
RESUME_EVERY = 10
SDPO = {"negatives": 3, "loss": "sdpo", "beta": 1.0, "lr": 1e-4, "epochs": 1, "batch_size": 8}
ORDER = ["mostpop", "sasrec", "tiny_sft", *ZERO_SHOT,
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


def zero_shot(name: str, data, work: Path, generate_samples: int) -> dict[str, dict[str, Any]]:
    """SmolLM2 as it comes, text prompts (`zero_shot`: plain text; `zero_shot_chat`: the text as the user turn of
    its chat template), score mode on the demo's test samples and generate mode on the seeded subset."""
    from llmrec.base.config import resolve_config
    from llmrec.evaluation.scores import read_scores, write_evaluation
    from llmrec.llm.ranker import evaluate_split
    from llmrec.llm.train import TrainLLMConfig, build_recommender

    folder, prompt_format = work / name, ZERO_SHOT[name]
    config = resolve_config(TrainLLMConfig, {"data": data.root, "llm": "smollm2-135m", "prompt": "text",
                                             "seed": SEED, "score_norm": "sum", "finetune": "full",
                                             "prompt_format": prompt_format})
    lm, _ = build_recommender(config, data, None)  # the plain model (no adapters: nothing is trained)
    lm.eval()

    def ranked_once(out: Path, mode: str, n: int):
        if (out / "scores.parquet").is_file():
            return read_scores(out), json.loads((out / "metrics.json").read_text())
        started = time.perf_counter()
        metrics, ranked = evaluate_split(lm, data, "test", mode, 8, n, SEED)
        metrics["seconds"] = time.perf_counter() - started
        write_evaluation(out, metrics, ranked)
        return ranked, metrics

    ranked, scored = ranked_once(folder, "score", TEST_SAMPLES)
    rows = score_rows(name, ranked, answer_lengths(lm), data,
                      {"finetune": None, "prompt": "text", "prompt_format": prompt_format, "sft_samples": 0,
                       "train_seconds": 0.0, "rank_seconds": scored.get("seconds")})
    _, generated = ranked_once(folder / f"generate-{generate_samples}", "generate", generate_samples)
    for row in rows.values():
        row.update({"valid_ratio": generated["valid_ratio"], "generate_hr@1": generated["hr@1"],
                    "n_generate_samples": generated["n_samples"], "generate_seconds": generated["seconds"]})
    return rows


def sft_values(data, demo: Path, out: Path, n: int, finetune: str, changed: dict[str, Any]) -> dict[str, Any]:
    """train-llm's options of an SFT row: the hybrid linear-curriculum run on `n` samples, `changed` applied."""
    return {"data": data.root, "encoder": demo / "sasrec", "llm": "smollm2-135m", "out": out, "prompt": "hybrid",
            "curriculum": "linear", "epochs": 1, "batch_size": 8, "eval_batch_size": 8, "max_train_samples": n,
            "max_valid_samples": 100, "max_test_samples": TEST_SAMPLES, "val_check_interval": 1.0,
            "warmup_ratio": 0.03, "seed": SEED, "score_norm": "sum", "progress_bar": False,
            "resume_every": RESUME_EVERY, "resume": (Path(f"{out}.resume")).is_dir(), **FINETUNE[finetune], **changed}


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
            "prompt_format": values.get("prompt_format", "plain"),
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
            "score_norm": "sum", "progress_bar": False, "resume_every": RESUME_EVERY,
            "resume": (Path(f"{out}.resume")).is_dir(), **SDPO}))
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


# ================================================================================================== speed
# `python bench/pretrained.py speed`: what each sample costs, ours vs the plain Hugging Face way (issue 19, item 3).
SPEED_SAMPLES = 48             # the real run's default N (a stable ratio in ~40 min on the 2-core CPU)
SPEED_BATCH = 8                # prompts per batch: score mode (x 20 candidates) and SFT
CUT_LAYERS = {"smollm2-135m": 15}  # `--llm-layers` variant; tiny: half its layers
SPEED_LR = {"lora": 1e-3, "full": 5e-5}


def cpu_flash_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of CPU flash attention (`aten._scaled_dot_product_flash_attention_for_cpu`), which torch's counter has
    no formula for: the two products QK^T and AV in full, as torch counts its other attention kernels."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def cpu_flash_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, query, key, value)


def count_flops(run) -> tuple[int, dict[str, int]]:
    """(total FLOPs, FLOPs per module path) of `run()` (matmuls and attention; elementwise work is not counted),
    with `torch.utils.flop_counter.FlopCounterMode`."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash_flops,  # keyed by overload packet
               aten._scaled_dot_product_flash_attention_for_cpu_backward: cpu_flash_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        run()
    return int(counter.get_total_flops()), {k: int(sum(v.values())) for k, v in counter.get_flop_counts().items()}


def head_flops(by_module: dict[str, int]) -> int:
    """FLOPs of the LM head (the vocabulary projection) in a `count_flops` breakdown."""
    return sum(v for k, v in by_module.items() if k.endswith("lm_head"))


def logit_flops(model, positions: int) -> int:
    """FLOPs of the LM head's vocabulary projection at `positions` positions: 2 x hidden x rows."""
    head = model.get_output_embeddings()
    return 2 * int(head.in_features) * int(head.out_features) * positions


def linear_shapes(config) -> dict[str, tuple[int, int, int]]:
    """(in, out, how many per decoder layer) of each linear layer of a Llama-style decoder layer."""
    hidden, inter = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    return {"q_o": (hidden, hidden, 2), "k_v": (hidden, kv, 2), "gate_up": (hidden, inter, 2),
            "down": (inter, hidden, 1)}


def matmul_gflops(config, rows: int = 512, seconds: float = 2.0) -> dict[str, Any]:
    """float32 matmul throughput at the model's shapes on this process's threads: [rows x in] @ [in x out] for each
    linear layer of a decoder layer, timed as one layer's mix (best of several rounds of ~`seconds` / 4), and
    each shape alone."""
    import torch

    gen = torch.Generator().manual_seed(0)
    shapes = linear_shapes(config)
    x = {k: torch.randn(rows, i, generator=gen) for k, (i, _, _) in shapes.items()}
    w = {k: torch.randn(i, o, generator=gen) for k, (i, o, _) in shapes.items()}

    def rate(keys: list[str]) -> float:
        flops = sum(2 * rows * shapes[k][0] * shapes[k][1] * shapes[k][2] for k in keys)
        for k in keys:  # warm-up
            torch.mm(x[k], w[k])
        best = float("inf")
        for _ in range(4):
            started, n = time.perf_counter(), 0
            while time.perf_counter() - started < seconds / 4:
                for k in keys:
                    for _ in range(shapes[k][2]):
                        torch.mm(x[k], w[k])
                n += 1
            best = min(best, (time.perf_counter() - started) / n)
        return flops / best / 1e9

    per_shape = {f"{k} [{rows}x{i}]@[{i}x{o}]": round(rate([k]), 1) for k, (i, o, _) in shapes.items()}
    return {"matmul_gflops": round(rate(list(shapes)), 1), "matmul_gflops_by_shape": per_shape,
            "matmul_rows": rows}


def prompt_rows(lm, batch) -> list[list[int]]:
    """The unpadded prompt ids of each row of a left-padded batch, as the LM sees them (text-only ids)."""
    ids = lm.builder.to_text_only(batch.input_ids)
    return [ids[b][batch.attention_mask[b].bool()].tolist() for b in range(ids.shape[0])]


def right_padded(rows: list[list[int]], pad_id: int, labels: list[list[int]] | None = None):
    """(ids [N, L], attention mask [N, L], labels [N, L] or None) of `rows` padded on the right, as a tokenizer
    pads for training; labels are -100 on padding."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    out = torch.full((len(rows), width), -100, dtype=torch.long) if labels is not None else None
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
        if out is not None:
            out[i, :len(r)] = torch.tensor(labels[i])
    return ids, mask, out


def plain_scores(model, prompt: list[int], answers: list[list[int]], pad_id: int):
    """[C] summed answer log-probs the plain Hugging Face way: every candidate's prompt + answer as its own sequence
    (the C candidates of one sample batched, right-padded), full logits, log-softmax, sum over the answer tokens."""
    import torch

    ids, mask, _ = right_padded([prompt + a for a in answers], pad_id)
    with torch.inference_mode():
        logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)  # [C, L, V]
    p = len(prompt)
    return torch.stack([logp[c, p - 1:p - 1 + len(a)].gather(1, torch.tensor(a)[:, None]).sum()
                        for c, a in enumerate(answers)])


def plain_sft_batch(lm, batch):
    """A training batch the plain way: each sample's prompt + answer right-padded, labels on the answer only."""
    ids = lm.builder.to_text_only(batch.input_ids)
    rows, labels = [], []
    for b in range(ids.shape[0]):
        keep = batch.attention_mask[b].bool()
        rows.append(ids[b][keep].tolist())
        labels.append(batch.labels[b][keep].tolist())
    return right_padded(rows, lm.builder.tokenizer.pad_token_id, labels)


def plain_sft_loss(model, ids, mask, labels):
    """`model(input_ids=..., labels=...).loss`: logits at every position, the mean over the answer tokens."""
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


class SpeedRun:
    """The `speed` section being measured: each part sets its keys and the section is written (`update_results`,
    the `speed` section only) each time a part reports. A part that reports several times (after every batch)
    calls `begin` first, so its load average and seconds span all its reports."""

    def __init__(self, results: Path | None, base: dict[str, Any]):
        self.results, self.section = results, dict(base)
        self.section.update({"load_average": {}, "part_seconds": {}})
        self._started: dict[str, float] = {}

    def begin(self, name: str) -> None:
        load = round(os.getloadavg()[0], 2)
        self._started[name] = time.perf_counter()
        self.section["load_average"][name] = [load, load]

    def part(self, name: str, measure) -> None:
        if name not in self._started:
            self.begin(name)
        values = measure()
        self.section.update(values)
        self.section["load_average"][name][1] = round(os.getloadavg()[0], 2)
        self.section["part_seconds"][name] = round(time.perf_counter() - self._started[name], 1)
        self.section["measured"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        log.info("speed %s: %s", name, json.dumps(values))
        if self.results is not None:
            update_results(self.results, "speed", self.section)


def speed_model(data, llm: str, finetune: str, cache_dir: Path, layers: int | None = None):
    """A text-prompt recommender (no encoder needed) on `llm`: bare (`full`) or LoRA r 16 (alpha 32)."""
    from llmrec.base.config import resolve_config
    from llmrec.llm.train import TrainLLMConfig, build_recommender

    lm, _ = build_recommender(resolve_config(TrainLLMConfig, {
        "data": data.root, "llm": llm, "prompt": "text", "seed": SEED, "score_norm": "sum", "finetune": finetune,
        "lora_r": 16, "lora_alpha": 32, "cache_dir": cache_dir, "llm_layers": layers}), data, None)
    return lm


def test_samples(data, n: int):
    """The N seeded test samples every score row ranks (`evaluate_split`'s subset for `max_samples` N, seed 42)."""
    from llmrec.data.sampling import ranked_subset

    return ranked_subset(data.split("test"), n, SEED)


def timed(fn) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def score_parts(run: SpeedRun, models: dict[str, Any], data, n: int, batch: int) -> None:
    """Score mode on the N test samples, batch by batch, each variant in turn on the same batch so that a change of
    load on a shared machine touches them alike: ours (`score_candidates`, the function `evaluate_split` ranks
    with), int8, the cut stack, and plain (each of the batch's samples by `plain_scores`). FLOPs per sample are
    counted during the first batch's timed pass (the counter's bookkeeping is per operator: well under 1% of a
    SmolLM2 pass), after a warm-up of every variant. The section is rewritten after every batch (running figures,
    `score_samples_done`)."""
    import numpy as np
    import torch

    from llmrec.llm.datamodule import prompt_loader
    from llmrec.llm.logprobs import pack_answers
    from llmrec.llm.ranking import score_candidates

    lm = models["ours"]
    pad = lm.builder.tokenizer.pad_token_id
    matmul = run.section["matmul_gflops"] * 1e9
    batches = list(prompt_loader(test_samples(data, n), lm.builder, batch, False))
    first = batches[0]
    variants = {"score": lm, "int8_score": models["int8"], "cut_score": models["cut"]}

    def plain(b) -> torch.Tensor:
        return torch.stack([plain_scores(lm.model, p, [lm.builder.answer_ids[int(c)] for c in cands], pad)
                            for p, cands in zip(prompt_rows(lm, b), b.candidates.tolist())])

    def warm_up() -> dict[str, Any]:
        for model in variants.values():
            score_candidates(model, first)
        cands = first.candidates[0, :2].tolist()
        plain_scores(lm.model, prompt_rows(lm, first)[0], [lm.builder.answer_ids[int(c)] for c in cands], pad)
        answers = [len(lm.builder.answer_ids[int(c)]) for c in first.candidates.flatten().tolist()]
        k = int(first.input_ids.shape[0])
        return {"prompt_tokens_mean": float(first.attention_mask.sum()) / k,
                "prompt_tokens_padded": int(first.input_ids.shape[1]), "answer_tokens_mean": float(np.mean(answers)),
                # positions that need logits: each prompt's last one, every answer token but the last
                "score_logit_positions_needed_per_sample": (k + sum(a - 1 for a in answers)) / k}

    run.part("score_warm_up", warm_up)
    run.begin("score")
    seconds = {k: 0.0 for k in ("score", "int8_score", "cut_score", "plain_score")}
    scores: dict[str, list] = {k: [] for k in seconds}
    targets = []
    done = 0
    for i, b in enumerate(batches):
        calls = {**{key: (lambda m=model: score_candidates(m, b)) for key, model in variants.items()},
                 "plain_score": lambda: plain(b)}
        for key, call in calls.items():
            if i == 0 and key != "int8_score":  # (int8 matmuls: not counted by torch's counter)
                (s, (flops, by_module)), t = timed(lambda: counted(call))
                k = int(b.input_ids.shape[0])
                run.section[f"{key}_flops_per_sample"] = flops / k
                run.section[f"{key}_lm_head_flops_per_sample"] = head_flops(by_module) / k
                if key == "score":  # logits only where needed: the prompts' last positions and the packed answers
                    positions = k + k * int(pack_answers(lm, b.candidates).fed.shape[1])
                    run.section["score_logit_positions_per_sample"] = positions / k
                    if head_flops(by_module) != logit_flops(lm.model, positions):
                        raise SystemExit(f"score mode computed logits at "
                                         f"{head_flops(by_module) / logit_flops(lm.model, 1):g} positions; expected "
                                         f"{positions}: the prompts' last ones and the packed answer rows")
            else:
                s, t = timed(call)
            seconds[key] += t
            scores[key].append(s.float())
        targets.append(b.target_index)
        done += int(b.input_ids.shape[0])
        run.part("score", lambda: score_figures(run, seconds, scores, torch.cat(targets), done, matmul))
    ours, plain_s = torch.cat(scores["score"]), torch.cat(scores["plain_score"])
    diff = float((ours - plain_s).abs().max())
    if diff > 1e-2 or not bool((ours.argmax(1) == plain_s.argmax(1)).all()):
        raise SystemExit(f"plain and shared-prompt scores differ (max abs diff {diff:.3g}): the ratio would not "
                         f"compare equal work")


def counted(call) -> tuple[Any, tuple[int, dict[str, int]]]:
    """(what `call()` returns, `count_flops` of it)."""
    held = []
    flops = count_flops(lambda: held.append(call()))
    return held[0], flops


def score_figures(run: SpeedRun, seconds: dict[str, float], scores: dict[str, list], target, done: int,
                  matmul: float) -> dict[str, Any]:
    """The score rows' figures after `done` samples (see `score_parts`)."""
    import torch

    top = {k: torch.cat(v).argmax(1) for k, v in scores.items()}
    out: dict[str, Any] = {"score_samples_done": done}
    for key, t in seconds.items():
        out[f"{key}_samples_per_s"] = done / t
        out[f"{key}_seconds"] = t
    for key in ("score", "plain_score", "cut_score"):
        out[f"{key}_matmul_share"] = run.section[f"{key}_flops_per_sample"] * done / seconds[key] / matmul
    out["score_speedup"] = seconds["plain_score"] / seconds["score"]
    out["score_vs_plain_max_abs_diff"] = float((torch.cat(scores["score"]) - torch.cat(scores["plain_score"]))
                                               .abs().max())
    out["score_vs_plain_same_top1"] = float((top["score"] == top["plain_score"]).float().mean())
    out["int8_top1_agreement"] = float((top["int8_score"] == top["score"]).float().mean())
    out["float_hr@1"] = float((top["score"] == target).float().mean())
    out["int8_hr@1"] = float((top["int8_score"] == target).float().mean())
    out["cut_note"] = f"--llm-layers {run.section['cut_layers']}, untrained: speed only (quality needs training)"
    return out


def train_parts(run: SpeedRun, lm, data, n: int, batch: int, finetune: str) -> None:
    """SFT on the batches of N seeded training samples, ours (the Lightning module's training step: windowed
    logits) and plain (`model(input_ids, labels).loss` on full logits) in turn on each batch, each a forward,
    backward and AdamW step, after one warm-up step each (on the first batch, FLOPs counted: forward + backward);
    the losses of the first batch must agree first (eval mode: no dropout)."""
    import torch

    from llmrec.data.sampling import subset
    from llmrec.llm.datamodule import prompt_loader
    from llmrec.llm.module import LLMRecModule

    prefix = "" if finetune == "lora" else "full_"
    matmul = run.section["matmul_gflops"] * 1e9
    batches = list(prompt_loader(subset(data.split("train"), n, SEED), lm.builder, batch, True))
    plain_inputs = [plain_sft_batch(lm, b) for b in batches]
    module = LLMRecModule(lm, SPEED_LR[finetune], seed=SEED)
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=SPEED_LR[finetune],
                                  weight_decay=0.01)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)  # self.log outside a Trainer warns

    def ours(i: int) -> None:
        module.training_step(batches[i], i).backward()

    def plain(i: int) -> None:
        plain_sft_loss(lm.model, *plain_inputs[i]).backward()

    def step(fn, i: int) -> float:
        started = time.perf_counter()
        fn(i)
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - started

    def count() -> dict[str, Any]:
        lm.eval()  # no dropout: both losses of the first batch must agree
        with torch.no_grad():
            diff = abs(float(lm.loss(batches[0], hybrid=False)) - float(plain_sft_loss(lm.model, *plain_inputs[0])))
        if diff > 1e-3:
            raise SystemExit(f"plain and windowed SFT losses differ by {diff:.3g}: not the same work")
        lm.train()
        k = int(batches[0].input_ids.shape[0])
        out: dict[str, Any] = {f"{prefix}train_vs_plain_loss_abs_diff": diff}
        for name, fn in (("train", ours), ("plain_train", plain)):
            flops, by_module = count_flops(lambda: step(fn, 0))  # the counted step is the warm-up step
            out[f"{prefix}{name}_flops_per_sample"] = flops / k
            out[f"{prefix}{name}_lm_head_flops_per_sample"] = head_flops(by_module) / k
        return out

    run.part(f"{prefix}train_flops", count)
    run.begin(f"{prefix}train")
    seconds = {"train": 0.0, "plain_train": 0.0}
    done = 0
    for i, b in enumerate(batches):
        seconds["train"] += step(ours, i)
        seconds["plain_train"] += step(plain, i)
        done += int(b.input_ids.shape[0])

        def figures() -> dict[str, Any]:
            out: dict[str, Any] = {f"{prefix}train_samples_done": done}
            for name, t in seconds.items():
                out[f"{prefix}{name}_samples_per_s"] = done / t
                out[f"{prefix}{name}_seconds"] = t
                out[f"{prefix}{name}_matmul_share"] = run.section[f"{prefix}{name}_flops_per_sample"] * done / t / matmul
            out[f"{prefix}train_speedup"] = seconds["plain_train"] / seconds["train"]
            return out

        run.part(f"{prefix}train", figures)


def speed(args, argv: list[str]) -> int:
    """The `speed` part (module docstring): one invocation, every figure side by side, written as it comes."""
    import torch

    from llmrec.data.dataset import ProcessedDataset
    from llmrec.llm.quantize import quantized

    data = ProcessedDataset.load(args.data)
    n, batch = args.samples, SPEED_BATCH
    results = (args.results or RESULTS) if args.write else None
    if results == RESULTS and args.llm == "tiny":
        raise SystemExit(f"--llm tiny is for development: it is not written to {RESULTS.relative_to(ROOT)} "
                         f"(pass --results FILE to keep its figures elsewhere)")
    lm = speed_model(data, args.llm, "full", args.cache_dir).eval()  # the bare model: what the score rows run
    config = lm.model.config
    cut = CUT_LAYERS.get(args.llm, max(1, config.num_hidden_layers // 2))
    run = SpeedRun(results, {
        "llm": args.llm, "n_samples": n, "seed": SEED, "batch_size": batch, "threads": torch.get_num_threads(),
        "prompt": "text (no encoder needed; the same prompts for ours and plain)", "score_norm": "sum",
        "samples": "score rows: the N seeded test samples; SFT rows: N seeded training samples (weights discarded)",
        "data": str(args.data), "command": "python bench/pretrained.py " + " ".join(argv), "machine": machine(),
        "layers": config.num_hidden_layers, "cut_layers": cut, "lora": {"r": 16, "alpha": 32, "lr": SPEED_LR["lora"]},
        "finetunes_measured": ["lora"] + (["full"] if args.full else []),
        "flops": "torch.utils.flop_counter on the first batch: matmuls and attention (QK^T, AV in full), forward "
                 "(+ backward for SFT); int8 matmuls are not counted"})
    run.part("matmul", lambda: matmul_gflops(config))
    models = {"ours": lm, "int8": quantized(lm, "int8"),
              "cut": speed_model(data, args.llm, "full", args.cache_dir, cut).eval()}
    score_parts(run, models, data, n, batch)
    del models
    train_parts(run, speed_model(data, args.llm, "lora", args.cache_dir), data, n, batch, "lora")
    if args.full:
        train_parts(run, lm, data, n, batch, "full")
    # again at the end: a machine that got busier meanwhile shows here (the shares use the first measurement)
    run.part("matmul_end", lambda: {"matmul_gflops_end": matmul_gflops(config)["matmul_gflops"]})
    print(json.dumps(run.section, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["quality", "speed"])
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
    speed_options = parser.add_argument_group("speed")
    speed_options.add_argument("--samples", type=int, default=SPEED_SAMPLES, help="N seeded test (and training) "
                               "samples of every speed row")
    speed_options.add_argument("--llm", choices=["smollm2-135m", "tiny"], default="smollm2-135m",
                               help="tiny: a 4 x 256 Llama built from the catalog, for development")
    speed_options.add_argument("--full", action="store_true", help="also measure full fine-tuning SFT")
    speed_options.add_argument("--cache-dir", type=Path, default=ROOT / "data" / "cache" / "llm")
    speed_options.add_argument("--results", type=Path, default=None,
                               help=f"speed: write here instead of {RESULTS.relative_to(ROOT)} (with --write)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.part == "speed":
        return speed(args, list(sys.argv[1:] if argv is None else argv))
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
        elif name in ZERO_SHOT:
            new = zero_shot(name, data, args.work, args.generate_samples)
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
