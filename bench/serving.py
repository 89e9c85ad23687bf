"""Serving benchmarks (issue 12): whole-catalog quality, load over loopback HTTP, and cold start.

    .venv/bin/python bench/serving.py all --write          # the three below, one run, into bench/results/serving.json
    .venv/bin/python bench/serving.py full-catalog --write
    .venv/bin/python bench/serving.py load --write         # also measures the cold start
    .venv/bin/python bench/serving.py load --smoke         # a few requests: checks the script runs, writes nothing
    .venv/bin/python bench/serving.py batching --ckpt checkpoints/demo/sdpo-hybrid-sasrec --write     # "tiny"
    .venv/bin/python bench/serving.py batching --ckpt checkpoints/bench-pretrained/... --write       # "pretrained"

Defaults: the demo-scale model `checkpoints/demo/llm-hybrid-sasrec` and the data it was trained on,
`data/processed/ml-100k-llara-all` (`llmrec demo` builds both).

full-catalog: every test user's final sample of ML-100K `llara` (one per user). The history is the user's whole
past before the target; items of it are never recommended. The encoder's own full ranking and the retrieve-then-
rerank pipeline (`Recommender.recommend`: the encoder's top N of the whole catalog re-ranked by the LLM) are
compared with HR@10 and NDCG@10 on the same users; both use the same sequence representation (the encoder over
the most recent `history_window` items, what the served model sees) and the same N (`retrieve_n`). HR@N of the
encoder (`retrieval_hr@N`) bounds what re-ranking can reach.

load: `llmrec serve` is started on 127.0.0.1 (a free port) as a subprocess; a client sends `--requests` POST
/recommend (whole-catalog retrieval, k = 10; distinct histories of test samples) from `--concurrency` threads
with keep-alive connections. Every answer is checked against a direct `Recommender.recommend_many` call for the
same history (same items and ranks; scores within 1e-3: a batch of other sizes pads prompts differently):
`errors` (non-200 or no answer) and `mismatches`. Latency p50/p99 and requests/s with micro-batching
(`--batch-size`, `--batch-wait-ms`), then the same requests against a server with `--batch-size 1` in the same
run (`rps_unbatched`). cold_start_s: `llmrec serve` start -> first 200 from /health (`serve_to_health`), and
`Recommender.from_pretrained` -> first answer in this process (`from_pretrained_to_first_answer`).

batching (issue 20): what micro-batching gains, measured side by side in one run on the same checkpoint, each
server a real `llmrec serve` subprocess over loopback HTTP. First a short probe (`--probe-requests` at
`--concurrency`) of the batch-size-1 server and of the batched one (`--batch-size`, `--batch-wait-ms`) at each
torch thread count of `--thread-choices` (default 1 up to the cores): each kind of server then runs at ITS best
thread count, so the baseline is not an unbatched server fighting itself for the cores. Then `--requests`
requests at `--concurrency` against each (`speedup` = requests/s batched / batch size 1), and the same requests
from one client (concurrency 1) against both at the baseline's thread count (`lone_client_ratio`: whether the
batching machinery costs a lone client anything). Every answer is checked as in `load`; threads, the probe and
the load average (1/5/15 min, before and after each run: the client runs on the same machine) are recorded under
`batching.<label>` (`--label`; default `tiny` or `pretrained` from the checkpoint's facts), with machine, date and
command; the other sections of the results file are kept.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import cpu_name, update_results  # bench/machine.py (scripts run from bench/)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results" / "serving.json"
DEFAULT_CKPT = ROOT / "checkpoints" / "demo" / "llm-hybrid-sasrec"
DEFAULT_DATA = ROOT / "data" / "processed" / "ml-100k-llara-all"
SCORE_TOLERANCE = 1e-3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["full-catalog", "load", "all", "batching"])
    parser.add_argument("--ckpt", type=Path, default=DEFAULT_CKPT, help="LLM checkpoint folder to serve")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the prepared dataset it was trained on")
    parser.add_argument("--max-users", type=int, default=None, help="full-catalog: at most this many test users")
    parser.add_argument("--requests", type=int, default=500, help="load: requests sent")
    parser.add_argument("--concurrency", type=int, default=16, help="load: client threads")
    parser.add_argument("--batch-size", type=int, default=16, help="load: micro-batch size of the batched server")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="load: micro-batch wait window")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the server and this process "
                                                                   "(batching: this process only; the servers "
                                                                   "run at --thread-choices)")
    parser.add_argument("--thread-choices", type=int, nargs="+", default=None,
                        help="batching: torch thread counts probed for each server (default: 1 up to the cores)")
    parser.add_argument("--probe-requests", type=int, default=96, help="batching: requests per thread probe")
    parser.add_argument("--label", default=None, help="batching: key under `batching` (default: tiny or pretrained, "
                                                      "from the checkpoint's facts)")
    parser.add_argument("--smoke", action="store_true", help="tiny scale (20 users, 24 requests); never written")
    parser.add_argument("--write", action="store_true", help="update the results file")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"results file (default: "
                                                                      f"{RESULTS.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    if args.smoke:
        args.max_users, args.requests, args.concurrency = min(args.max_users or 20, 20), 24, 4
        args.probe_requests = 8
    args.thread_choices = sorted(set(args.thread_choices or range(1, (os.cpu_count() or 1) + 1)))
    if args.thread_choices[0] < 1:
        parser.error("--thread-choices must be >= 1")
    for name in ("requests", "concurrency", "batch_size", "probe_requests"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.smoke and args.write:
        parser.error("--smoke results are not benchmark figures: leave out --write")
    return args


def machine() -> dict[str, Any]:
    import platform

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


# ------------------------------------------------------------------------------------------------ quality
def final_samples(data, max_users: int | None) -> list[tuple[list[int], int]]:
    """(whole past before the target, target) of each test user's final sample, in user order."""
    from llmrec.data.sampling import final_position_mask

    test = data.split("test")
    last = test[final_position_mask(test)].sort_values("user_id")
    if max_users is not None:
        last = last.iloc[:max_users]
    return [(data.user_sequence(int(u))[:int(p)].astype(int).tolist(), int(t))
            for u, p, t in zip(last["user_id"], last["position"], last["target"])]


def hr_ndcg(ranks: list[int], k: int = 10) -> dict[str, float]:
    """HR@k and NDCG@k from 0-based target ranks (a rank >= k, or a missing target, is a miss)."""
    from llmrec.evaluation.metrics import hit_ratio_at_k, ndcg_at_k

    r = torch.tensor(ranks)
    return {f"hr@{k}": hit_ratio_at_k(r, k), f"ndcg@{k}": ndcg_at_k(r, k)}


def full_catalog(rec, samples: list[tuple[list[int], int]], batch: int = 32) -> dict[str, Any]:
    """Encoder full ranking vs retrieve-then-rerank on the same users (see the module docstring)."""
    from llmrec.evaluation.metrics import mask_seen_items, target_ranks

    encoder = rec.lm.encoder
    if encoder is None:
        raise SystemExit(f"{rec.folder} has text-only prompts: it cannot retrieve from the whole catalog")
    enc_ranks: list[int] = []
    rerank_ranks: list[int] = []
    started = time.perf_counter()
    for start in range(0, len(samples), batch):
        chunk = samples[start:start + batch]
        histories = [h for h, _ in chunk]
        targets = torch.tensor([t for _, t in chunk])
        with torch.inference_mode():
            seq = encoder.encode([h[-rec.history_window:] for h in histories])  # what retrieval uses
            scores = (seq @ rec.lm.item_table.T).float().cpu()
            mask_seen_items(scores, histories)  # padding and every history item out, the target too if seen
            enc_ranks += target_ranks(scores, targets).tolist()
        for (_, target), items in zip(chunk, rec.recommend_many(histories, k=10)):
            ids = [i["id"] for i in items]
            rerank_ranks.append(ids.index(target) if target in ids else 10)
    return {"encoder": hr_ndcg(enc_ranks), "rerank": hr_ndcg(rerank_ranks), "retrieve_n": rec.retrieve_n,
            f"retrieval_hr@{rec.retrieve_n}": hr_ndcg(enc_ranks, rec.retrieve_n)[f"hr@{rec.retrieve_n}"],
            "n_users": len(samples), "history_window": rec.history_window,
            "seconds": time.perf_counter() - started}


# ------------------------------------------------------------------------------------------------ load
def request_bodies(data, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` POST /recommend bodies: the whole pasts of distinct test samples (cycled if there are fewer)."""
    test = data.split("test")
    order = np.random.default_rng(seed).permutation(len(test))
    rows = [order[i % len(order)] for i in range(n)]
    return [{"history": data.user_sequence(int(test["user_id"].iloc[r]))[:int(test["position"].iloc[r])]
             .astype(int).tolist(), "k": 10} for r in rows]


def start_server(ckpt: Path, batch_size: int, batch_wait_ms: float, threads: int | None) -> tuple[Any, int, float]:
    """`llmrec serve` on 127.0.0.1 with a free port; (process, port, seconds from start to a healthy /health)."""
    env = {k: v for k, v in os.environ.items() if k != "LLMREC_TOKEN"}
    cmd = [sys.executable, "-m", "llmrec", "serve", "--ckpt", str(Path(ckpt).resolve()), "--host", "127.0.0.1",
           "--port", "0", "--batch-size", str(batch_size), "--batch-wait-ms", str(batch_wait_ms), "--device", "cpu"]
    if threads:
        cmd += ["--threads", str(threads)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = proc.stdout.readline()
    match = re.search(r"on http://127\.0\.0\.1:(\d+) ", line)
    if not match:
        proc.kill()
        raise SystemExit(f"llmrec serve did not start: {line!r} (exit {proc.wait()})")
    port = int(match.group(1))
    while True:
        try:
            if post_or_get(port, "GET", "/health", timeout=5)[0] == 200:
                return proc, port, time.perf_counter() - started
        except OSError:
            pass
        if proc.poll() is not None or time.perf_counter() - started > 300:
            proc.kill()
            raise SystemExit("llmrec serve never became healthy")
        time.sleep(0.02)


def stop_server(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def post_or_get(port: int, method: str, path: str, body: Any = None, conn: http.client.HTTPConnection | None = None,
                timeout: float = 120) -> tuple[int, Any]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        if own:
            conn.close()


def drive(port: int, bodies: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """Send every body to POST /recommend from `concurrency` threads (keep-alive connections); latencies in ms,
    answers (None for an error) in body order, wall seconds."""
    answers: list[Any] = [None] * len(bodies)
    latencies: list[float] = [0.0] * len(bodies)
    next_index = iter(range(len(bodies)))
    lock = threading.Lock()

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                try:
                    status, body = post_or_get(port, "POST", "/recommend", bodies[i], conn)
                    answers[i] = body["items"] if status == 200 else None
                except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                latencies[i] = (time.perf_counter() - t0) * 1000
        finally:
            conn.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    return {"answers": answers, "latencies_ms": latencies, "seconds": time.perf_counter() - started}


def same_items(got: list[dict[str, Any]] | None, want: list[dict[str, Any]]) -> bool:
    """Same items at the same ranks, scores within SCORE_TOLERANCE (near-ties may swap)."""
    if got is None or len(got) != len(want):
        return False
    g, w = {i["id"]: i["score"] for i in got}, {i["id"]: i["score"] for i in want}
    if set(g) != set(w) or any(abs(g[i] - w[i]) > SCORE_TOLERANCE for i in g):
        return False
    return all(a["id"] == b["id"] or abs(a["score"] - b["score"]) <= SCORE_TOLERANCE for a, b in zip(got, want))


def summarize(run: dict[str, Any], expected: list[list[dict[str, Any]]]) -> dict[str, Any]:
    lat = sorted(run["latencies_ms"])
    errors = sum(a is None for a in run["answers"])
    mismatches = sum(a is not None and not same_items(a, e) for a, e in zip(run["answers"], expected))
    return {"requests": len(lat), "errors": errors, "mismatches": mismatches,
            "p50_ms": statistics.median(lat), "p99_ms": lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))],
            "rps": len(lat) / run["seconds"]}


def load(args: argparse.Namespace, rec, data, cold_python: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """(load section, cold_start_s section)."""
    bodies = request_bodies(data, args.requests)
    expected: list[list[dict[str, Any]]] = []
    for start in range(0, len(bodies), 32):
        expected += rec.recommend_many([b["history"] for b in bodies[start:start + 32]], k=10)
    runs = {}
    cold_serve = None
    for name, size, wait in (("batched", args.batch_size, args.batch_wait_ms), ("unbatched", 1, 0.0)):
        proc, port, seconds = start_server(args.ckpt, size, wait, args.threads)
        cold_serve = seconds if cold_serve is None else cold_serve
        try:
            drive(port, bodies[:min(8, len(bodies))], 2)  # warm-up: first-call allocations, connection setup
            runs[name] = summarize(drive(port, bodies, args.concurrency), expected)
        finally:
            stop_server(proc)
        print(f"{name}: {json.dumps(runs[name])}", flush=True)
    section = {**runs["batched"], "concurrency": args.concurrency, "batch_size": args.batch_size,
               "batch_wait_ms": args.batch_wait_ms, "rps_unbatched": runs["unbatched"]["rps"],
               "unbatched": runs["unbatched"], "speedup": runs["batched"]["rps"] / runs["unbatched"]["rps"]}
    return section, {"serve_to_health": cold_serve, "from_pretrained_to_first_answer": cold_python}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_against(ckpt: Path, batch_size: int, batch_wait_ms: float, threads: int,
                plan: list[tuple[str, list[dict[str, Any]], int]], expected: dict[str, list]) -> dict[str, Any]:
    """Start `llmrec serve` (batch size, wait, torch threads), warm it up, run each (name, bodies, concurrency) of
    `plan` in turn, stop it; each run's summary (as `summarize`) with the threads and the load average."""
    proc, port, _ = start_server(ckpt, batch_size, batch_wait_ms, threads)
    out = {}
    try:
        warm = plan[0][1][:8]
        drive(port, warm, 2)  # first-call allocations, connection setup
        for name, bodies, concurrency in plan:
            before = load_average()
            out[name] = {**summarize(drive(port, bodies, concurrency), expected[name]), "concurrency": concurrency,
                         "batch_size": batch_size, "threads": threads, "load_average": {"before": before,
                                                                                         "after": load_average()}}
            print(f"  batch size {batch_size}, {threads} threads, {name}: {json.dumps(out[name])}", flush=True)
    finally:
        stop_server(proc)
    return out


def batching(args: argparse.Namespace, data) -> dict[str, Any]:
    """The `batching.<label>` section (see the module docstring)."""
    from llmrec.serving.recommender import Recommender

    bodies = request_bodies(data, args.requests)
    probe = bodies[:min(args.probe_requests, len(bodies))]
    rec = Recommender.from_pretrained(args.ckpt, device="cpu")  # the direct answers every HTTP one must equal
    want: list[list[dict[str, Any]]] = []
    for start in range(0, len(bodies), 32):
        want += rec.recommend_many([b["history"] for b in bodies[start:start + 32]], k=10)
    del rec  # this process is the client from now on: it must not hold the model's memory
    gc.collect()
    expected = {"probe": want[:len(probe)], "concurrent": want, "lone": want}
    kinds = {"batched": args.batch_size, "batch1": 1}
    started_load = load_average()
    probes: dict[str, dict[str, float]] = {kind: {} for kind in kinds}
    for kind, size in kinds.items():
        for threads in args.thread_choices:
            run = run_against(args.ckpt, size, args.batch_wait_ms, threads, [("probe", probe, args.concurrency)],
                              expected)
            probes[kind][str(threads)] = run["probe"]["rps"]
    best = {kind: int(max(rps, key=rps.get)) for kind, rps in probes.items()}
    runs: dict[str, dict[str, Any]] = {}
    concurrent, lone = ("concurrent", bodies, args.concurrency), ("lone", bodies, 1)
    same = best["batched"] == best["batch1"]
    got = run_against(args.ckpt, args.batch_size, args.batch_wait_ms, best["batched"],
                      [concurrent, lone] if same else [concurrent], expected)
    runs["batched"] = got["concurrent"]
    if same:
        runs["lone_batched"] = got["lone"]
    else:  # the lone client compares the two servers at the same (the baseline's) thread count
        runs["lone_batched"] = run_against(args.ckpt, args.batch_size, args.batch_wait_ms, best["batch1"], [lone],
                                           expected)["lone"]
    got = run_against(args.ckpt, 1, args.batch_wait_ms, best["batch1"], [concurrent, lone], expected)
    runs["batch1"], runs["lone_batch1"] = got["concurrent"], got["lone"]
    return {"speedup": runs["batched"]["rps"] / runs["batch1"]["rps"],
            "lone_client_ratio": runs["lone_batched"]["rps"] / runs["lone_batch1"]["rps"],
            "rps_batched": runs["batched"]["rps"], "rps_batch1": runs["batch1"]["rps"],
            "rps_lone_batched": runs["lone_batched"]["rps"], "rps_lone_batch1": runs["lone_batch1"]["rps"],
            "concurrency": args.concurrency, "requests": len(bodies), "batch_size": args.batch_size,
            "batch_wait_ms": args.batch_wait_ms, "threads_batched": best["batched"], "threads_batch1": best["batch1"],
            "threads_lone": best["batch1"],
            "thread_probe": {"requests": len(probe), "concurrency": args.concurrency, "rps": probes},
            "errors": sum(r["errors"] for r in runs.values()),
            "mismatches": sum(r["mismatches"] for r in runs.values()), "runs": runs,
            "load_average": {"start": started_load, "end": load_average()}}


def write_batching(path: Path, label: str, section: dict[str, Any]) -> None:
    """Set `batching.<label>` of the results file, keeping the other labels and sections."""
    current = json.loads(path.read_text()).get("batching", {}) if path.is_file() else {}
    update_results(path, "batching", {**current, label: section})


def batching_label(ckpt: Path) -> str:
    """`tiny` for a checkpoint on a tiny base llmrec built, else `pretrained`."""
    from llmrec.llm.checkpoint import read_facts

    return "tiny" if read_facts(ckpt).base.tiny else "pretrained"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from llmrec.data.dataset import ProcessedDataset
    from llmrec.serving.recommender import Recommender

    data = ProcessedDataset.load(args.data)
    command = "python bench/serving.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.mode == "batching":
        label = args.label or batching_label(args.ckpt)
        section = {**batching(args, data), "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                   "command": command, "checkpoint": str(args.ckpt), "data": str(args.data)}
        print(json.dumps({"batching": {label: {k: v for k, v in section.items() if k != "runs"}}}, indent=2),
              flush=True)
        if args.write:
            write_batching(args.results, label, section)
            print(f"wrote batching.{label} into {args.results}")
        return 0
    started = time.perf_counter()
    rec = Recommender.from_pretrained(args.ckpt, device="cpu")
    rec.recommend(data.user_sequence(int(data.split("test")["user_id"].iloc[0]))[:5].astype(int).tolist())
    cold_python = time.perf_counter() - started
    result: dict[str, Any] = {}
    if args.mode in ("full-catalog", "all"):
        result["full_catalog"] = full_catalog(rec, final_samples(data, args.max_users))
        print(json.dumps({"full_catalog": result["full_catalog"]}, indent=2), flush=True)
    if args.mode in ("load", "all"):
        result["load"], result["cold_start_s"] = load(args, rec, data, cold_python)
        print(json.dumps({"load": result["load"], "cold_start_s": result["cold_start_s"]}, indent=2), flush=True)
    result.update({"machine": machine(), "date": time.strftime("%Y-%m-%d"),
                   "command": command,
                   "checkpoint": str(args.ckpt), "data": str(args.data)})
    if args.write:
        for key, value in result.items():
            update_results(args.results, key, value)
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
