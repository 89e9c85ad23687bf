"""S-DPO and the DPO family after SFT, on ML-100K `llara`, at a stated CPU scale; and the cost of one step.

    .venv/bin/python bench/sdpo.py quality --seeds 0 1 2 --write    # SFT, then DPO / S-DPO / variants, per seed
    .venv/bin/python bench/sdpo.py step-cost --write                 # SFT vs S-DPO (N=3, 19) vs naive step, same run

quality, per seed (every model ranks the SAME stored 20 candidates of the `all` test set):
  1. MostPop and SASRec (hidden 64, at most 15 epochs) with `llmrec train-encoder`;
  2. SFT: `llmrec train-llm` with `llmrec/configs/llm-tiny-cpu.yaml` (tiny Llama 2 x 128, all weights trained,
     hybrid prompts, SASRec frozen) on a seeded subset of `--sft-samples` training samples, one epoch;
  3. from that SFT checkpoint, `llmrec train-sdpo` on a seeded subset of `--sdpo-samples` training samples, one
     epoch, beta 1, for: dpo (N=1), sdpo (N=3), sdpo_all (N=19), dr_sdpo, beta_sdpo, alpha_sdpo (N=3);
  3b. with `--prompts hybrid hybrid+summary`, the same SFT and S-DPO (N=3) with hybrid+summary prompts (a whole-
     history behavioural token, as in RecInterpreter), as `sft_summary` and `sdpo_summary`;
  4. test `hr@1` in score mode on the whole `all` test set, `hr@1_last` (users' final samples), and `hr@1` and
     `valid_ratio` in generate mode on a seeded subset of `--generate-samples` test samples.
Trained models are kept under `--work` and reused by a re-run; results are written after every seed.

step-cost: one optimiser step (forward + backward + AdamW) on the same batches of 16 prompts, timed side by side
in one run: SFT (prompt + target answer), S-DPO with N=3 and N=19 (one prompt pass, packed answers) and the naive
N=3 layout of the authors' code (N+1 full prompt+answer sequences); the reference log-prob precomputation of the
same batches, peak memory (resident set), and the FLOP-count bound of each step from its token counts.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from machine import cpu_name, update_results  # bench/machine.py (scripts run from bench/)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmrec.base.config import resolve_config
from llmrec.data.dataset import ProcessedDataset

RESULTS = ROOT / "bench" / "results" / "sdpo.json"
LLM_PRESET = ROOT / "llmrec" / "configs" / "llm-tiny-cpu.yaml"
VARIANTS = {  # name -> train-sdpo options
    "dpo": {"negatives": 1, "loss": "sdpo"},
    "sdpo": {"negatives": 3, "loss": "sdpo"},
    "sdpo_all": {"negatives": "all", "loss": "sdpo"},
    "dr_sdpo": {"negatives": 3, "loss": "dr-sdpo"},
    "beta_sdpo": {"negatives": 3, "loss": "beta-sdpo"},
    "alpha_sdpo": {"negatives": 3, "loss": "alpha-sdpo"},
}
log = logging.getLogger("bench.sdpo")


def machine() -> dict:
    import platform

    import transformers

    return {"cpu": cpu_name(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def summary(values: list[float | None], seeds: list[int]) -> dict:
    """mean, std and per-seed values (a value that could not be measured, None, is left out of mean and std)."""
    known = [v for v in values if v is not None]
    return {"mean": statistics.mean(known) if known else None,
            "std": statistics.stdev(known) if len(known) > 1 else 0.0, "seeds": dict(zip(map(str, seeds), values))}


def train_encoder(model: str, data_dir: Path, out: Path, seed: int) -> Path:
    from llmrec.encoders.train import TrainEncoderConfig, run_train_encoder

    if not (out / "metrics.json").is_file():
        run_train_encoder(TrainEncoderConfig(data=data_dir, out=out, model=model, seed=seed, max_epochs=15,
                                             device="cpu", progress_bar=False,
                                             hidden_size=64 if model != "mostpop" else None,
                                             max_length=10 if model != "mostpop" else None))
    return out


def train_sft(args, encoder: Path, out: Path, seed: int, prompt: str = "hybrid", extra: dict | None = None) -> Path:
    from llmrec.llm.train import TrainLLMConfig, run_train_llm

    if not (out / "metrics.json").is_file():
        run_train_llm(resolve_config(TrainLLMConfig, {
            "data": args.data, "encoder": encoder, "out": out, "seed": seed, "device": "cpu", "prompt": prompt,
            "max_train_samples": args.sft_samples, "cache_dir": args.work / "cache",
            "max_valid_samples": args.max_valid_samples, "max_test_samples": args.max_test_samples, **(extra or {})},
            LLM_PRESET))
    return out


def train_sdpo(args, sft: Path, out: Path, seed: int, options: dict) -> Path:
    from llmrec.preference.train import TrainSDPOConfig, run_train_sdpo

    if not (out / "metrics.json").is_file():
        run_train_sdpo(resolve_config(TrainSDPOConfig, {
            "sft": sft, "data": args.data, "out": out, "seed": seed, "device": "cpu", "epochs": 1,
            "max_train_samples": args.sdpo_samples, "batch_size": 16, "eval_batch_size": 32, "lr": args.lr,
            "val_check_interval": 0.5, "beta": 1.0, "max_valid_samples": args.max_valid_samples,
            "max_test_samples": args.max_test_samples, **options}))
    return out


def cached(folder: Path, key: str, compute) -> dict:
    """A figure of one trained model computed once and kept beside it, so that a re-run re-evaluates nothing."""
    path = folder / "bench-results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    if key not in results:
        results[key] = compute()
        path.write_text(json.dumps(results, indent=2) + "\n")
    return results[key]


def generate_metrics(folder: Path, data: ProcessedDataset, n: int, seed: int) -> dict:
    from llmrec.llm.ranker import evaluate_split
    from llmrec.llm.checkpoint import load_recommender

    lm = load_recommender(folder, data)
    m, _ = evaluate_split(lm, data, "test", "generate", 32, n, seed)
    return {"hr@1": m["hr@1"], "valid_ratio": m["valid_ratio"], "n_samples": m["n_samples"]}


def generate_figures(folder: Path, data: ProcessedDataset, n: int, seed: int, compute: bool = True) -> dict:
    """Generate-mode figures of a model on `n` seeded test samples, computed once and cached beside it; with
    `compute=False` only a cached measurement is reported (decoding is the slowest part of the benchmark) and a
    model never measured gets none (its seeds are listed with each figure)."""
    key = f"generate:{n}:{seed}"
    if not compute:
        path = folder / "bench-results.json"
        return json.loads(path.read_text()).get(key, {}) if path.is_file() else {}
    return cached(folder, key, lambda: generate_metrics(folder, data, n, seed))


def encoder_hr1(folder: Path) -> tuple[float, float]:
    m = json.loads((folder / "metrics.json").read_text())["test"]
    return m["candidates/hr@1"], m.get("candidates/hr@1_last", float("nan"))


def model_figures(name: str, folder: Path, data: ProcessedDataset, args, seed: int) -> dict[str, float]:
    """The figures of one trained model (the generate-mode ones computed once and cached beside it)."""
    if name in ("mostpop", "sasrec"):
        hr1, last = encoder_hr1(folder)
        return {"hr@1": hr1, "hr@1_last": last}
    m = json.loads((folder / "metrics.json").read_text())
    g = generate_figures(folder, data, args.generate_samples, seed, not args.skip_generate)
    out = {"hr@1": m["test/hr@1"], "hr@1_last": m["test/hr@1_last"], "generate_hr@1": g.get("hr@1"),
           "valid_ratio": g.get("valid_ratio"), "train_seconds": m["train_seconds"]}
    if not name.startswith("sft"):
        out["reference_seconds"] = m["reference_seconds"]
    return out


def collect(args, data: ProcessedDataset) -> dict:
    """Mean/std/per-seed figures of every model trained so far under `--work` (each model over the seeds it has),
    so that an interrupted or partial run still reports everything measured, with its seeds."""
    folders = ({"mostpop": "mostpop", "sasrec": "sasrec", "sft": "sft-hybrid"} | {n: n for n in VARIANTS}
               | {"sft_summary": "sft-hybrid+summary", "sdpo_summary": "sdpo-hybrid+summary"})
    result: dict = {}
    for name, sub in folders.items():
        per_seed = {seed: model_figures(name, args.work / f"seed{seed}" / sub, data, args, seed)
                    for seed in args.seeds if (args.work / f"seed{seed}" / sub / "metrics.json").is_file()}
        if per_seed:
            seeds = list(per_seed)
            keys = list(next(iter(per_seed.values())))
            result[name] = {k: summary([per_seed[s][k] for s in seeds], seeds) for k in keys}
    result["gap_closed"] = gap_closed(args, result)
    result.update({
        "device": f"cpu ({machine()['cpu']}, {torch.get_num_threads()} torch threads)", "machine": machine(),
        "scale": (f"cpu: tiny Llama 2x128 ({LLM_PRESET.name}), hybrid prompts (hybrid+summary for the *_summary models); SFT one epoch on {args.sft_samples} "
                  f"training samples; S-DPO one epoch on {args.sdpo_samples} samples, beta 1, lr {args.lr}, batch "
                  f"16, best of 2 validation rounds on {args.max_valid_samples} valid samples; score-mode hr@1 on the "
                  f"whole `all` test set ({args.max_test_samples or len(data.split('test'))} samples); generate-mode "
                  f"metrics on {args.generate_samples} seeded test samples; each model's seeds are listed with it"),
        "n_test": args.max_test_samples or len(data.split("test")), "date": time.strftime("%Y-%m-%d"),
        "command": "python bench/sdpo.py quality " + " ".join(sys.argv[2:])})
    return result


def gap_closed(args, result: dict) -> dict:
    """Share of the SFT model's hr@1 gap to SASRec that S-DPO (N=3) closes, per prompt kind and seed:
    (sdpo - sft) / (sasrec - sft), on the seeds where all three were measured."""
    out = {}
    for prompt, (sft, sdpo) in {"hybrid": ("sft", "sdpo"), "hybrid+summary": ("sft_summary", "sdpo_summary")}.items():
        if not all(k in result for k in (sft, sdpo, "sasrec")):
            continue
        hr = {k: result[k]["hr@1"]["seeds"] for k in (sft, sdpo, "sasrec")}
        seeds = [int(s) for s in hr[sdpo] if s in hr[sft] and s in hr["sasrec"]]
        out[prompt] = summary([(hr[sdpo][str(s)] - hr[sft][str(s)]) / (hr["sasrec"][str(s)] - hr[sft][str(s)])
                               for s in seeds], seeds)
    return out


def write_quality(args, data: ProcessedDataset) -> None:
    result = collect(args, data)
    print(json.dumps({n: {k: v["mean"] for k, v in r.items()} for n, r in result.items()
                      if isinstance(r, dict) and "hr@1" in r}, indent=1))
    if args.write:
        for key, value in result.items():
            update_results(RESULTS, key, value)


def quality(args) -> int:
    """Train what is missing, seed by seed, and rewrite the results after every trained model."""
    data = ProcessedDataset.load(args.data)
    for seed in [] if args.no_train else args.seeds:
        work = args.work / f"seed{seed}"
        enc = {m: train_encoder(m, args.data, work / m, seed) for m in ("mostpop", "sasrec")}
        sft = train_sft(args, enc["sasrec"], work / "sft-hybrid", seed)
        write_quality(args, data)
        for name, options in VARIANTS.items():
            if name in args.variants and not (work / name / "metrics.json").is_file():
                train_sdpo(args, sft, work / name, seed, options)
                write_quality(args, data)
        if "hybrid+summary" in args.prompts and not (work / "sdpo-hybrid+summary" / "metrics.json").is_file():
            sft_summary = train_sft(args, enc["sasrec"], work / "sft-hybrid+summary", seed, prompt="hybrid+summary")
            write_quality(args, data)
            train_sdpo(args, sft_summary, work / "sdpo-hybrid+summary", seed, VARIANTS["sdpo"])
            write_quality(args, data)
    write_quality(args, data)
    return 0


def step_cost(args) -> int:
    """One training step of each kind on the same batches (see the module docstring)."""
    from llmrec.data.sampling import subset
    from llmrec.encoders.checkpoint import load_encoder
    from llmrec.llm.datamodule import prompt_loader
    from llmrec.llm.logprobs import sequence_logprobs
    from llmrec.llm.train import TrainLLMConfig, build_recommender
    from llmrec.preference.losses import sdpo_loss
    from llmrec.preference.naive import concatenated_logprobs
    from llmrec.preference.negatives import preference_items

    data = ProcessedDataset.load(args.data)
    encoder = load_encoder(train_encoder("sasrec", args.data, args.work / "seed0" / "sasrec", 0), data)
    config = resolve_config(TrainLLMConfig, {"data": args.data, "out": args.work / "unused", "device": "cpu",
                                             "cache_dir": args.work / "cache", "seed": 0}, LLM_PRESET)
    lm, _ = build_recommender(config, data, encoder)
    lm.train()
    train = subset(data.split("train"), args.batches * 16, 0)
    items = {n: torch.as_tensor(preference_items(train, n, 0)) for n in (3, "all")}
    sft_batches = list(prompt_loader(train, lm.builder, 16, with_answer=True))
    prompt_batches = list(prompt_loader(train, lm.builder, 16, with_answer=False))
    opt = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-5)

    def step(kind: str, i: int) -> None:
        if kind == "sft":
            loss = lm.loss(sft_batches[i])
        else:
            n = 3 if kind in ("sdpo_n3", "naive_n3") else "all"
            its = items[n][16 * i:16 * (i + 1)]
            fn = concatenated_logprobs if kind.startswith("naive") else sequence_logprobs
            logps = fn(lm, prompt_batches[i], its)
            ref = logps.detach()
            loss = sdpo_loss(logps[:, 0], logps[:, 1:], ref[:, 0], ref[:, 1:], 1.0).losses.mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    kinds = ["sft", "sdpo_n3", "sdpo_n19", "naive_n3"]
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for i in range(len(prompt_batches)):  # interleaved: every kind sees the same machine load
        for k in kinds:
            started = time.perf_counter()
            step(k, i)
            if i > 0:  # the first round warms up allocators and caches
                times[k].append(time.perf_counter() - started)
    lm.eval()
    started = time.perf_counter()
    with torch.no_grad():
        for i, batch in enumerate(prompt_batches):
            sequence_logprobs(lm, batch, items[3][16 * i:16 * (i + 1)])
    reference_s = (time.perf_counter() - started) / len(prompt_batches)
    med = {k: statistics.median(v) for k, v in times.items()}
    # FLOP bound: a decoder step costs ~ (tokens through the layers) x (per-token cost of layers) + (positions with
    # logits) x (output layer); report both token counts so the bound can be read for any model size
    b = prompt_batches[1]
    prompt_tokens = int(b.attention_mask.sum())
    ans = {n: int(lm.builder.answer_table()[1][items[n][16:32]].sum()) for n in (3, "all")}
    result = {
        "sft_s": med["sft"], "sdpo_n3_s": med["sdpo_n3"], "sdpo_n19_s": med["sdpo_n19"], "naive_n3_s": med["naive_n3"],
        "ratio_n3": med["sdpo_n3"] / med["sft"], "ratio_n19": med["sdpo_n19"] / med["sft"],
        "naive_ratio_n3": med["naive_n3"] / med["sft"], "reference_per_batch_s": reference_s,
        "tokens_per_batch": {"prompt": prompt_tokens, "answers_n3": ans[3], "answers_n19": ans["all"],
                             "sft_answer": int((sft_batches[1].labels != -100).sum())},
        "flop_bound": ("layers: S-DPO runs prompt + all 1+N answers once, (prompt + answers_nN) / (prompt + "
                       "sft_answer) tokens of an SFT step; logits: answers_nN / sft_answer positions. For the tiny "
                       "2x128 model the output layer (vocabulary x 128) costs about as much per position as both "
                       "decoder layers, so the answer-heavy N=19 step costs more here than on a 7B model"),
        "layer_token_ratio_n3": (prompt_tokens + ans[3]) / (prompt_tokens + int((sft_batches[1].labels != -100).sum())),
        "layer_token_ratio_n19": (prompt_tokens + ans["all"]) / (prompt_tokens + int((sft_batches[1].labels != -100).sum())),
        "batches": len(prompt_batches) - 1, "batch_size": 16,
        "peak_mem_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "model": "tiny Llama 2x128 (llm-tiny-cpu.yaml), hybrid prompts, all weights trained",
        "machine": machine(), "date": time.strftime("%Y-%m-%d"),
        "command": "python bench/sdpo.py step-cost " + " ".join(sys.argv[2:])}
    print(json.dumps(result, indent=2))
    if args.write:
        update_results(RESULTS, "step_cost", {k: result[k] for k in ("sft_s", "sdpo_n3_s", "sdpo_n19_s", "naive_n3_s",
                                                                      "ratio_n3", "ratio_n19")})
        update_results(RESULTS, "step_cost_details", result)
        update_results(RESULTS, "peak_mem_gib", result["peak_mem_gib"])
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["quality", "step-cost"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--prompts", nargs="+", default=["hybrid"], choices=["hybrid", "hybrid+summary"],
                   help="hybrid+summary adds SFT and S-DPO (N=3) with hybrid+summary prompts")
    p.add_argument("--data", type=Path, default=ROOT / "data/processed/ml-100k-llara-all")
    p.add_argument("--work", type=Path, default=ROOT / "checkpoints/bench-sdpo")
    p.add_argument("--sft-samples", type=int, default=20000)
    p.add_argument("--sdpo-samples", type=int, default=4000)
    p.add_argument("--generate-samples", type=int, default=1000, help="test samples ranked in generate mode")
    p.add_argument("--skip-generate", action="store_true",
                   help="report generate-mode figures only where already measured (cached); decode nothing")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-valid-samples", type=int, default=1000, help="valid samples ranked per validation round")
    p.add_argument("--max-test-samples", type=int, default=None, help="smoke runs only: a test subset")
    p.add_argument("--batches", type=int, default=6, help="step-cost: timed batches of 16 (+1 warm-up)")
    p.add_argument("--no-train", action="store_true",
                   help="quality: train nothing, report every model already trained under --work for --seeds")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return quality(args) if args.what == "quality" else step_cost(args)


if __name__ == "__main__":
    raise SystemExit(main())
