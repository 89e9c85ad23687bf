"""Serving benchmarks (issue 12): whole-catalog quality, load over loopback HTTP, and cold start.

    .venv/bin/python bench/serving.py all --write          # the three below, one run, into bench/results/serving.json
    .venv/bin/python bench/serving.py full-catalog --write
    .venv/bin/python bench/serving.py load --write         # also measures the cold start
    .venv/bin/python bench/serving.py load --smoke         # a few requests: checks the script runs, writes nothing
    .venv/bin/python bench/serving.py batching --ckpt checkpoints/demo/sdpo-hybrid-sasrec --write     # "tiny"
    .venv/bin/python bench/serving.py batching --ckpt checkpoints/bench-pretrained/... --write       # "pretrained"
    .venv/bin/python bench/serving.py models --ckpt checkpoints/demo/sdpo-hybrid-sasrec \
        --ckpt checkpoints/bench-pretrained/sft_hybrid_500_lora --write     # models.tiny, models.pretrained
    .venv/bin/python bench/serving.py memory --ckpt DIR     # only the memory breakdown (a fresh process), printed

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

models (issue 20): each served model (`--ckpt`, repeated; `models.<label>`, `tiny` or `pretrained` from the
checkpoint's facts) measured in one invocation, every server a real `llmrec serve` subprocess (`--batch-size`,
`--batch-wait-ms`, `--threads`; default torch's own thread count) over loopback HTTP:
- cold start (`cold_start_s`): launch -> first 200 from /health (`to_health`) -> first answered POST /recommend
  (`to_first_answer`); `load_reported` is the load time the server prints. The page cache is whatever earlier
  steps left: the checkpoint has just been read by this process (warm), the interpreter too.
- latency: `--requests` POST /recommend (whole-catalog retrieval, k 10, distinct test histories, after an 8-request
  warm-up) at concurrency 1 and `--concurrency`: p50/p99 ms and requests/s, every answer checked against a
  direct `Recommender` call as in `load` (`errors`, `mismatches`). Default requests per concurrency: 1000 for a
  tiny model (p99 is then the 10th slowest), 100 for a pretrained one (about 1 s a request on 2 cores: the two
  float32 runs and the int8 run then take about 5 minutes; p99 is the 2nd slowest, a rough figure).
- memory: the server's RSS after start, after its first answer, after the runs, and its peak (VmHWM of
  /proc/PID/status), beside the checkpoint on disk (`disk`: the folder, its bundle, the weights the loader reads,
  the faiss file, and a LoRA checkpoint's base model weights); and where it goes (`breakdown`), measured in a
  fresh `python bench/serving.py memory` process that does what `llmrec serve` does step by step: RSS after the
  interpreter, `import torch`, transformers/peft, faiss, pandas/pyarrow, fastapi/uvicorn, llmrec, the tokenizer,
  the catalog's first parquet read, the model load, the first answer and a batch of `batch_size`; the
  parameters' bytes by part and the faiss index's.
- int8 (`llmrec serve --quantize int8`: dynamic int8 linear layers on a merged copy): requests/s and latency of
  a lone client (concurrency 1) on the same histories (`rps_ratio` = int8 / float32), each answer checked against
  a direct int8 call run alone; and how rankings change against float32 on the first `--agreement-samples` of
  those histories, ranked in full (k = the retrieval depth): `agreement.lone` (int8 one request at a time, what a
  lone client gets) and `agreement.batched` (int8 in batches of `--batch-size`, as under load: a dynamic int8
  layer scales each batch's activations by the batch's own range, so int8 answers depend on the batch; float32
  ones do not, beyond 1e-6). `keep`: the rule `KEEP_RULE` (top-1 agreement >= 0.99 and mean top-10 overlap
  >= 0.98 in both, and >= 1.1x the requests/s of float32 for a lone client); `within_tolerance` and `faster`
  say which part failed. int8 under concurrent load is not measured: its answers could not be checked.
Every part records its load average before and after (`parts`, and each run), the threads of the server and of
this process, with machine, date and command; the other sections of the results file are kept.

merge (issue 20; `merge.<label>`): what merging a LoRA checkpoint's adapters at load saves (`Recommender.
from_pretrained` merges them; `merge_adapters=False` keeps them as peft layers, as serving did before). Both
are loaded in this one process and answer the same `--requests` test histories (default 48), directly (no
HTTP): in batches of `--batch-size` and, for the first `--probe-requests` of them, one at a time. Each batch (or
lone request) is run by both back to back, which one goes first alternating, so that drift in the machine's
speed hits both alike. `speedup` = unmerged seconds / merged seconds; `agreement` compares the two rankings in
full (k = the retrieval depth), as for int8.
"""

from __future__ import annotations

import argparse
import copy
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

from machine import cpu_name, update_results, with_earlier_runs  # bench/machine.py (scripts run from bench/)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results" / "serving.json"
DEFAULT_CKPT = ROOT / "checkpoints" / "demo" / "llm-hybrid-sasrec"
DEFAULT_DATA = ROOT / "data" / "processed" / "ml-100k-llara-all"
SCORE_TOLERANCE = 1e-3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["full-catalog", "load", "all", "batching", "models", "memory", "merge"])
    parser.add_argument("--ckpt", type=Path, action="append", default=None,
                        help=f"LLM checkpoint folder to serve (default: {DEFAULT_CKPT.relative_to(ROOT)}); models: "
                             f"repeat it, one section per checkpoint")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the prepared dataset it was trained on")
    parser.add_argument("--max-users", type=int, default=None, help="full-catalog: at most this many test users")
    parser.add_argument("--requests", type=int, default=None,
                        help=f"load, batching: requests sent (default 500); models: requests at each concurrency "
                             f"(default {MODEL_REQUESTS['tiny']} for a tiny model, {MODEL_REQUESTS['pretrained']} "
                             f"for a pretrained one)")
    parser.add_argument("--concurrency", type=int, default=16, help="load: client threads")
    parser.add_argument("--agreement-samples", type=int, default=200,
                        help="models: test histories ranked by float32 and int8 to compare the rankings")
    parser.add_argument("--batch-size", type=int, default=16, help="load: micro-batch size of the batched server")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="load: micro-batch wait window")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the server and this process "
                                                                   "(batching: this process only; the servers "
                                                                   "run at --thread-choices)")
    parser.add_argument("--thread-choices", type=int, nargs="+", default=None,
                        help="batching: torch thread counts probed for each server (default: 1 up to the cores)")
    parser.add_argument("--probe-requests", type=int, default=96, help="batching: requests per thread probe; merge: "
                                                                         "the first this many are also ranked alone")
    parser.add_argument("--label", default=None, help="batching, models (one --ckpt): key under `batching` / "
                                                      "`models` (default: tiny or pretrained, from the "
                                                      "checkpoint's facts)")
    parser.add_argument("--smoke", action="store_true", help="tiny scale (20 users, 24 requests); never written")
    parser.add_argument("--write", action="store_true", help="update the results file")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"results file (default: "
                                                                      f"{RESULTS.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    args.ckpts = args.ckpt or [DEFAULT_CKPT]
    if len(args.ckpts) > 1 and args.mode != "models":
        parser.error(f"--ckpt: {args.mode} serves one checkpoint; several are for `models`")
    if len(args.ckpts) > 1 and args.label:
        parser.error("--label names one checkpoint's section; with several --ckpt each gets tiny or pretrained")
    args.ckpt = args.ckpts[0]
    if args.requests is None and args.mode != "models":
        args.requests = MERGE_REQUESTS if args.mode == "merge" else 500
    if args.smoke:
        args.max_users, args.requests, args.concurrency = min(args.max_users or 20, 20), 24, 4
        args.probe_requests, args.agreement_samples = 8, 8
    args.thread_choices = sorted(set(args.thread_choices or range(1, (os.cpu_count() or 1) + 1)))
    if args.thread_choices[0] < 1:
        parser.error("--thread-choices must be >= 1")
    for name in ("requests", "concurrency", "batch_size", "probe_requests", "agreement_samples"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.smoke and args.write:
        parser.error("--smoke results are not benchmark figures: leave out --write")
    return args


def machine() -> dict[str, Any]:
    import platform

    import torch

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
    import torch

    from llmrec.evaluation.metrics import hit_ratio_at_k, ndcg_at_k

    r = torch.tensor(ranks)
    return {f"hr@{k}": hit_ratio_at_k(r, k), f"ndcg@{k}": ndcg_at_k(r, k)}


def full_catalog(rec, samples: list[tuple[list[int], int]], batch: int = 32) -> dict[str, Any]:
    """Encoder full ranking vs retrieve-then-rerank on the same users (see the module docstring)."""
    import torch

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
    import numpy as np

    test = data.split("test")
    order = np.random.default_rng(seed).permutation(len(test))
    rows = [order[i % len(order)] for i in range(n)]
    return [{"history": data.user_sequence(int(test["user_id"].iloc[r]))[:int(test["position"].iloc[r])]
             .astype(int).tolist(), "k": 10} for r in rows]


def launch_server(ckpt: Path, batch_size: int, batch_wait_ms: float, threads: int | None,
                  extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """`llmrec serve` (with `extra` options) on 127.0.0.1 with a free port, once its /health answers 200:
    {"proc", "port", "started" (perf_counter at launch), "seconds" (launch -> healthy), "load_s" (the load time
    it printed), "threads" (the torch threads it printed)}."""
    env = {k: v for k, v in os.environ.items() if k != "LLMREC_TOKEN"}
    cmd = [sys.executable, "-m", "llmrec", "serve", "--ckpt", str(Path(ckpt).resolve()), "--host", "127.0.0.1",
           "--port", "0", "--batch-size", str(batch_size), "--batch-wait-ms", str(batch_wait_ms), "--device", "cpu",
           *extra]
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
    loaded, torch_threads = re.search(r"loaded in ([\d.]+) s", line), re.search(r"(\d+) torch threads", line)
    while True:
        try:
            if post_or_get(port, "GET", "/health", timeout=5)[0] == 200:
                return {"proc": proc, "port": port, "started": started, "seconds": time.perf_counter() - started,
                        "load_s": float(loaded.group(1)) if loaded else None,
                        "threads": int(torch_threads.group(1)) if torch_threads else None}
        except OSError:
            pass
        if proc.poll() is not None or time.perf_counter() - started > 300:
            proc.kill()
            raise SystemExit("llmrec serve never became healthy")
        time.sleep(0.02)


def start_server(ckpt: Path, batch_size: int, batch_wait_ms: float, threads: int | None) -> tuple[Any, int, float]:
    """`llmrec serve` on 127.0.0.1 with a free port; (process, port, seconds from start to a healthy /health)."""
    served = launch_server(ckpt, batch_size, batch_wait_ms, threads)
    return served["proc"], served["port"], served["seconds"]


def stop_server(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# a client's patience: at concurrency 16 a pretrained model's request waits for a whole batch of 16 prompts
# (about 25 s for SmolLM2 on 2 quiet cores, minutes on a busy machine), which is slow, not an error
CLIENT_TIMEOUT_S = 900.0


def post_or_get(port: int, method: str, path: str, body: Any = None, conn: http.client.HTTPConnection | None = None,
                timeout: float = CLIENT_TIMEOUT_S) -> tuple[int, Any]:
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
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT_S)
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
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT_S)
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
    write_labelled(path, "batching", label, section)


def batching_label(ckpt: Path) -> str:
    """`tiny` for a checkpoint on a tiny base llmrec built, else `pretrained`."""
    from llmrec.llm.checkpoint import read_facts

    return "tiny" if read_facts(ckpt).base.tiny else "pretrained"


# ------------------------------------------------------------------------------------------------ models
MIB = 1 << 20
MODEL_REQUESTS = {"tiny": 1000, "pretrained": 100}  # per concurrency level (see the module docstring)
MERGE_REQUESTS = 48  # merge: histories ranked by both (a pretrained model takes about 2 s each here)
AGREEMENT_K = 10  # the served k: agreement compares the top 10 (and every score of the LLM's whole ranking)
INT8_MIN_TOP1, INT8_MIN_TOPK, INT8_MIN_SPEEDUP = 0.99, 0.98, 1.1
KEEP_RULE = (f"keep --quantize int8 iff, against float32 on the same histories (one request at a time and in "
             f"batches), top-1 agreement >= {INT8_MIN_TOP1} and mean top-{AGREEMENT_K} overlap >= {INT8_MIN_TOPK}, "
             f"and a lone client gets >= {INT8_MIN_SPEEDUP}x the requests/s")
WEIGHT_FILES = ("model/*.safetensors", "adapter/*.safetensors", "base/*.safetensors", "new_token_rows.safetensors",
                "projector.safetensors", "encoder/encoder.safetensors")  # what the loader reads as weights


def proc_status(text: str) -> dict[str, int]:
    """The `kB` lines of a /proc/PID/status text, in bytes: {"VmRSS": ..., "VmHWM": ..., "RssAnon": ...}."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        parts = value.split()
        if sep and len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            out[key.strip()] = int(parts[0]) * 1024
    return out


def process_memory(pid: int) -> dict[str, float]:
    """Process `pid`'s resident memory now (`rss_mb`, VmRSS) and its peak so far (`peak_mb`, VmHWM), in MiB."""
    path = Path(f"/proc/{pid}/status")
    status = proc_status(path.read_text())
    if "VmRSS" not in status or "VmHWM" not in status:
        raise SystemExit(f"{path}: no VmRSS / VmHWM line; the memory figures need Linux's /proc")
    return {"rss_mb": status["VmRSS"] / MIB, "peak_mb": status["VmHWM"] / MIB}


def agreement(reference: list[list[dict[str, Any]]], other: list[list[dict[str, Any]]],
              k: int = AGREEMENT_K) -> dict[str, Any]:
    """How far `other`'s answers are from `reference`'s (the same histories, in order; items best first):
    `top1_agreement` (share of answers with the same first item), `topk_overlap` (mean share of the reference's
    top k also in the other's top k), `rankings_changed` (answers whose top k differ in items or order) and
    `max_score_diff` (largest |score difference| of an item both answers scored, over every item given)."""
    if len(reference) != len(other) or not reference:
        raise ValueError(f"agreement needs as many answers on each side, at least one: got {len(reference)} and "
                         f"{len(other)}")
    top1 = overlap = changed = 0
    worst = 0.0
    for ref, got in zip(reference, other):
        a, b = [i["id"] for i in ref[:k]], [i["id"] for i in got[:k]]
        top1 += bool(a and b) and a[0] == b[0]
        overlap += len(set(a) & set(b)) / max(len(a), 1)
        changed += a != b
        scores = {i["id"]: i["score"] for i in got if i["score"] is not None}
        for i in ref:
            if i["score"] is not None and i["id"] in scores:
                worst = max(worst, abs(i["score"] - scores[i["id"]]))
    n = len(reference)
    return {"answers": n, "k": k, "top1_agreement": top1 / n, "topk_overlap": overlap / n,
            "rankings_changed": changed, "max_score_diff": worst}


def int8_verdict(agreements: dict[str, dict[str, Any]], speedup: float) -> dict[str, Any]:
    """`KEEP_RULE` applied: whether every agreement is within tolerance, int8 is faster, and so kept."""
    within = all(a["top1_agreement"] >= INT8_MIN_TOP1 and a["topk_overlap"] >= INT8_MIN_TOPK
                 for a in agreements.values())
    faster = speedup >= INT8_MIN_SPEEDUP
    return {"within_tolerance": within, "faster": faster, "keep": within and faster, "rule": KEEP_RULE}


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files under `folder` (symbolic links are not followed)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
    return total


def disk_sizes(folder: Path, base: Path | None) -> dict[str, Any]:
    """The checkpoint on disk, in MiB: the whole folder, its bundle (the files its manifest lists: what serving
    verifies), the weights the loader reads (`WEIGHT_FILES`) and the faiss index file; for a LoRA checkpoint whose
    base model lives elsewhere, that base's weights too (`base`: its folder, None when bundled or fully tuned)."""
    from llmrec.base.atomic import OUTPUT_MARKER

    manifest = json.loads((folder / OUTPUT_MARKER).read_text()) if (folder / OUTPUT_MARKER).is_file() else {}
    weights = {str(p.relative_to(folder)): p.stat().st_size / MIB for pattern in WEIGHT_FILES
               for p in sorted(folder.glob(pattern))}
    index = folder / "encoder" / "items.faiss"
    out = {"folder_mb": folder_bytes(folder) / MIB,
           "bundle_mb": sum(f.get("size", 0) for f in manifest.get("files", {}).values()) / MIB,
           "weights_mb": sum(weights.values()), "weights_files_mb": weights,
           "faiss_file_mb": index.stat().st_size / MIB if index.is_file() else 0.0}
    if base is not None:
        out["base_folder"] = str(base)
        out["base_weights_mb"] = sum(p.stat().st_size for p in base.glob("*.safetensors")) / MIB
    return out


def module_bytes(module) -> int:
    """Bytes of a torch module's parameters and buffers."""
    import itertools

    return sum(t.numel() * t.element_size() for t in itertools.chain(module.parameters(), module.buffers()))


def memory_breakdown(ckpt: Path, threads: int | None) -> dict[str, Any]:
    """Where a served model's memory goes, measured in THIS process, which must be fresh (`memory` mode: torch
    not imported yet): RSS after each step of what `llmrec serve` does (`steps`: rss_mb and delta_mb), the peak,
    and the sizes of what the model holds (parameters by part, the faiss index)."""
    if "torch" in sys.modules:
        raise RuntimeError("memory_breakdown needs a fresh process (torch is imported already): run "
                           "`python bench/serving.py memory --ckpt DIR`")
    me = os.getpid()
    steps: list[dict[str, Any]] = []

    def step(name: str) -> None:
        rss = process_memory(me)["rss_mb"]
        steps.append({"step": name, "rss_mb": rss, "delta_mb": rss - (steps[-1]["rss_mb"] if steps else 0.0)})

    step("python and the standard library")
    import torch

    if threads:
        torch.set_num_threads(threads)
    step("import torch (and numpy)")
    import peft  # noqa: F401  (LoRA checkpoints)
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM  # noqa: F401  (lazy modules)

    step("import transformers, peft")
    try:
        import faiss

        step("import faiss")
    except ImportError:
        pass
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    step("import pandas, pyarrow")
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401

    step("import fastapi, uvicorn, pydantic")
    from llmrec.data.catalog import Catalog
    from llmrec.llm.backbone import load_tokenizer
    from llmrec.llm.checkpoint import TOKENIZER_DIR
    from llmrec.serving import lifecycle, serve, server  # noqa: F401  (what `llmrec serve` imports)
    from llmrec.serving.recommender import Recommender

    step("import llmrec (and what else it imports)")
    tokenizer = load_tokenizer(ckpt / TOKENIZER_DIR)  # noqa: F841  (kept alive: its memory stays counted)
    step("the tokenizer (loaded once more with the model)")
    tokenizer_mb = steps[-1]["delta_mb"]
    Catalog.load(ckpt)  # pyarrow's first parquet read sets up its memory pool: ~20 MB that is not the model
    step("read catalog.parquet (the first parquet read; read once more with the model)")
    rec = Recommender.from_pretrained(ckpt, device="cpu")
    step("load the model (Recommender.from_pretrained)")
    ids = [rec.item(i)["id"] for i in range(1, len(rec.titles)) if rec.titles[i]]
    histories = [[ids[(10 * u + j) % len(ids)] for j in range(10)] for u in range(rec.batch_size)]
    rec.recommend(histories[0])
    step("first answer")
    rec.recommend_many(histories)
    step(f"a batch of {len(histories)} answers")
    lm = rec.lm
    parts = {"llm": lm.model, "encoder": lm.encoder, "projector": lm.projector}
    params = {name: module_bytes(m) / MIB for name, m in parts.items() if m is not None}
    params["item_table"] = (lm.item_table.numel() * lm.item_table.element_size() / MIB
                            if lm.item_table is not None else 0.0)
    index_mb = 0.0
    if rec.index is not None:
        import faiss

        index_mb = faiss.serialize_index(rec.index.index).nbytes / MIB
    return {"steps": steps, "peak_mb": process_memory(me)["peak_mb"], "parameters_mb": params,
            "parameters_total_mb": sum(params.values()), "tokenizer_mb": tokenizer_mb,
            "faiss_index_mb": index_mb, "threads": torch.get_num_threads()}


def run_memory_breakdown(ckpt: Path, threads: int | None) -> dict[str, Any]:
    """`memory_breakdown` in a fresh `python bench/serving.py memory` process."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "memory", "--ckpt", str(Path(ckpt).resolve())]
    if threads:
        cmd += ["--threads", str(threads)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the memory breakdown of {ckpt} failed (exit {done.returncode}): "
                         f"{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def one_at_a_time(rec, bodies: list[dict[str, Any]], k: int) -> list[list[dict[str, Any]]]:
    """Direct answers, each alone in its model pass (what a lone client of the server gets)."""
    return [rec.recommend(b["history"], k=k) for b in bodies]


def in_batches(rec, bodies: list[dict[str, Any]], k: int, size: int) -> list[list[dict[str, Any]]]:
    """Direct answers, `size` histories per `recommend_many` call."""
    out: list[list[dict[str, Any]]] = []
    for start in range(0, len(bodies), size):
        out += rec.recommend_many([b["history"] for b in bodies[start:start + size]], k=k)
    return out


def timed(what: dict[str, Any], name: str, work, *args):
    """`work(*args)`, noting its seconds and the load average before and after under `what[name]`."""
    before, started = load_average(), time.perf_counter()
    result = work(*args)
    what[name] = {"seconds": time.perf_counter() - started, "load_average": {"before": before,
                                                                             "after": load_average()}}
    return result


def serve_and_measure(ckpt: Path, args: argparse.Namespace, quantize: str,
                      plan: list[tuple[str, list[dict[str, Any]], int, list]]) -> dict[str, Any]:
    """Start `llmrec serve --quantize QUANTIZE`, time its cold start (start -> first 200 from /health -> first
    answered /recommend), read its memory (after start, after the first answer, peak after the runs), run each
    (name, bodies, concurrency, expected answers) of `plan` with the load average before and after, stop it."""
    served = launch_server(ckpt, args.batch_size, args.batch_wait_ms, args.threads, ("--quantize", quantize))
    proc, port = served["proc"], served["port"]
    out: dict[str, Any] = {}
    try:
        after_start = process_memory(proc.pid)["rss_mb"]
        first_body, first_expected = plan[0][1][0], plan[0][3][0]
        status, body = post_or_get(port, "POST", "/recommend", first_body)
        to_first = time.perf_counter() - served["started"]
        first_ok = status == 200 and same_items(body["items"], first_expected)
        after_first = process_memory(proc.pid)["rss_mb"]
        drive(port, plan[0][1][:8], 2)  # warm-up: connection setup, the allocations of a batch of 2
        runs = {}
        for name, bodies, concurrency, expected in plan:
            before = load_average()
            runs[name] = {**summarize(drive(port, bodies, concurrency), expected), "concurrency": concurrency,
                          "load_average": {"before": before, "after": load_average()}}
            print(f"  {quantize}, {name}: {json.dumps(runs[name])}", flush=True)
        memory = process_memory(proc.pid)
        out = {"cold_start_s": {"to_health": served["seconds"], "to_first_answer": to_first,
                                "load_reported": served["load_s"]},
               "first_answer_correct": first_ok, "threads": served["threads"], "latency": runs,
               "memory": {"after_start_mb": after_start, "after_first_answer_mb": after_first,
                          "after_runs_mb": memory["rss_mb"], "peak_mb": memory["peak_mb"]}}
    finally:
        stop_server(proc)
    return out


def models(args: argparse.Namespace, data, ckpt: Path, label: str) -> dict[str, Any]:
    """The `models.<label>` section (see the module docstring)."""
    from llmrec.llm.checkpoint import base_folder
    from llmrec.llm.quantize import quantized
    from llmrec.serving.recommender import Recommender

    parts: dict[str, Any] = {}
    start_load = load_average()
    breakdown = timed(parts, "memory_breakdown", run_memory_breakdown, ckpt, args.threads)
    requests = args.requests or MODEL_REQUESTS[label]
    bodies = request_bodies(data, max(requests, args.agreement_samples))
    served, sample = bodies[:requests], bodies[:args.agreement_samples]
    rec = Recommender.from_pretrained(ckpt, device="cpu")
    base = None if rec.facts.finetune == "full" else base_folder(Path(ckpt), rec.facts, None)
    bundled = base is not None and Path(ckpt).resolve() in base.resolve().parents  # `base/` inside the folder
    disk = disk_sizes(Path(ckpt), None if base is None or bundled else base)
    k = max(AGREEMENT_K, rec.retrieve_n)  # the LLM's whole ranking: every score it gives is compared
    float32 = timed(parts, "reference_float32", in_batches, rec, bodies, k, args.batch_size)
    rec8 = copy.copy(rec)  # the same catalog, encoder and index; `serve --quantize int8` swaps `lm` the same way
    rec8.lm = quantized(rec.lm, "int8")
    int8_lone = timed(parts, "reference_int8_lone", one_at_a_time, rec8, bodies, k)
    int8_batched = timed(parts, "reference_int8_batched", in_batches, rec8, sample, k, args.batch_size)
    del rec, rec8  # this process is the client from now on: it must not hold the models' memory
    gc.collect()
    cut = [a[:10] for a in float32[:requests]]  # the served k is 10: an answer is the first k of any longer one
    plain = timed(parts, "serve_float32", serve_and_measure, ckpt, args, "none",
                  [("c1", served, 1, cut), (f"c{args.concurrency}", served, args.concurrency, cut)])
    fast = timed(parts, "serve_int8", serve_and_measure, ckpt, args, "int8",
                 [("c1", served, 1, [a[:10] for a in int8_lone[:requests]])])
    speedup = fast["latency"]["c1"]["rps"] / plain["latency"]["c1"]["rps"]
    agreements = {"lone": agreement(float32[:len(sample)], int8_lone[:len(sample)]),
                  "batched": agreement(float32[:len(sample)], int8_batched)}
    runs = [*plain["latency"].values(), *fast["latency"].values()]
    return {"requests": requests, "k": 10, "concurrency": [1, args.concurrency], "batch_size": args.batch_size,
            "batch_wait_ms": args.batch_wait_ms,
            "threads": {"server": plain["threads"], "client": _torch_threads()},
            "errors": sum(r["errors"] for r in runs) + (not plain["first_answer_correct"])
            + (not fast["first_answer_correct"]),
            "mismatches": sum(r["mismatches"] for r in runs),
            "cold_start_s": plain["cold_start_s"],
            "latency": {name: {key: r[key] for key in ("p50_ms", "p99_ms", "rps", "errors", "mismatches")}
                        for name, r in plain["latency"].items()},
            "memory": {"server": plain["memory"], "disk": disk, "breakdown": breakdown},
            "int8": {"rps_c1": fast["latency"]["c1"]["rps"], "rps_ratio": speedup,
                     "p50_ms_c1": fast["latency"]["c1"]["p50_ms"], "p99_ms_c1": fast["latency"]["c1"]["p99_ms"],
                     "agreement_samples": len(sample), "agreement": agreements, **int8_verdict(agreements, speedup),
                     "cold_start_s": fast["cold_start_s"], "memory": fast["memory"]},
            "runs": {"float32": plain["latency"], "int8": fast["latency"]},
            "parts": parts, "load_average": {"start": start_load, "end": load_average()}}


def merge(args: argparse.Namespace, data) -> dict[str, Any]:
    """The `merge.<label>` section (see the module docstring)."""
    from llmrec.serving.recommender import Recommender

    start_load = load_average()
    merged = Recommender.from_pretrained(args.ckpt, device="cpu")
    if merged.facts.finetune != "lora":
        raise SystemExit(f"--ckpt {args.ckpt}: a {merged.facts.finetune} fine-tuned checkpoint has no adapters to "
                         f"merge; give a LoRA one")
    unmerged = Recommender.from_pretrained(args.ckpt, device="cpu", merge_adapters=False)
    bodies = request_bodies(data, args.requests)
    lone = bodies[:min(args.probe_requests, len(bodies))]
    k = max(AGREEMENT_K, merged.retrieve_n)
    for rec in (merged, unmerged):  # warm-up: first-call allocations
        rec.recommend(bodies[0]["history"], k=k)
    recs = {"merged": merged, "unmerged": unmerged}
    seconds = {"batched": {"merged": 0.0, "unmerged": 0.0}, "lone": {"merged": 0.0, "unmerged": 0.0}}
    answers: dict[str, dict[str, list]] = {part: {"merged": [], "unmerged": []} for part in seconds}
    chunks = [("batched", bodies[i:i + args.batch_size]) for i in range(0, len(bodies), args.batch_size)]
    chunks += [("lone", [body]) for body in lone]
    for n, (part, chunk) in enumerate(chunks):
        for name in (("merged", "unmerged") if n % 2 == 0 else ("unmerged", "merged")):
            started = time.perf_counter()
            answers[part][name] += recs[name].recommend_many([b["history"] for b in chunk], k=k)
            seconds[part][name] += time.perf_counter() - started
    figures = {part: {"requests": len(answers[part]["merged"]), "seconds_merged": s["merged"],
                      "seconds_unmerged": s["unmerged"], "speedup": s["unmerged"] / s["merged"],
                      "agreement": agreement(answers[part]["unmerged"], answers[part]["merged"], k)}
               for part, s in seconds.items()}
    return {"k": k, "batch_size": args.batch_size, "threads": _torch_threads(), **figures,
            "load_average": {"start": start_load, "end": load_average()}}


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def memory_summary(label: str, section: dict[str, Any]) -> str:
    """One paragraph saying where the served model's memory goes (for the README)."""
    mem, disk, b = section["memory"]["server"], section["memory"]["disk"], section["memory"]["breakdown"]
    steps = ", ".join(f"{s['step']} {s['delta_mb']:.0f}" for s in b["steps"])
    base = f" + a {disk['base_weights_mb']:.1f} MiB base model" if "base_weights_mb" in disk else ""
    return (f"{label}: the server holds {mem['after_start_mb']:.0f} MiB after start, "
            f"{mem['after_first_answer_mb']:.0f} after its first answer, {mem['peak_mb']:.0f} at its peak, for a "
            f"{disk['folder_mb']:.1f} MiB checkpoint folder ({disk['weights_mb']:.1f} MiB of weights{base}). In a "
            f"fresh process (MiB): {steps}; peak {b['peak_mb']:.0f}. The parameters are "
            f"{b['parameters_total_mb']:.1f} MiB, the faiss index {b['faiss_index_mb']:.1f} MiB.")


def write_labelled(path: Path, key: str, label: str, section: dict[str, Any]) -> None:
    """Set `<key>.<label>` of the results file, keeping the other labels and sections, and the measurement it
    replaces under `earlier_runs`."""
    current = json.loads(path.read_text()).get(key, {}) if path.is_file() else {}
    if isinstance(current.get(label), dict):
        section = with_earlier_runs(section, current[label])
    update_results(path, key, {**current, label: section})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mode == "memory":  # before torch is imported: the breakdown starts from a bare interpreter
        print(json.dumps(memory_breakdown(args.ckpt, args.threads), indent=2), flush=True)
        return 0
    import torch

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
    if args.mode == "merge":
        label = args.label or batching_label(args.ckpt)
        section = {**merge(args, data), "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                   "command": command, "checkpoint": str(args.ckpt), "data": str(args.data)}
        print(json.dumps({"merge": {label: section}}, indent=2), flush=True)
        if args.write:
            write_labelled(args.results, "merge", label, section)
            print(f"wrote merge.{label} into {args.results}", flush=True)
        return 0
    if args.mode == "models":
        labels = [args.label or batching_label(ckpt) for ckpt in args.ckpts]
        if len(set(labels)) < len(labels):
            raise SystemExit(f"--ckpt: {len(labels)} checkpoints for the labels {', '.join(labels)}; give one tiny "
                             f"and one pretrained checkpoint (or run them one at a time with --label)")
        for ckpt, label in zip(args.ckpts, labels):
            print(f"models.{label}: {ckpt}", flush=True)
            section = {**models(args, data, ckpt, label), "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                       "command": command, "checkpoint": str(ckpt), "data": str(args.data)}
            shown = {k: v for k, v in section.items() if k not in ("runs", "parts")}
            print(json.dumps({"models": {label: shown}}, indent=2), flush=True)
            print(memory_summary(label, section), flush=True)
            if args.write:  # each checkpoint as soon as it is measured: a later failure keeps it
                write_labelled(args.results, "models", label, section)
                print(f"wrote models.{label} into {args.results}", flush=True)
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
