"""Benchmark `llmrec prepare` on MovieLens-100K: counts and wall time per protocol.

Runs the real command line (`python -m llmrec prepare ...`, so interpreter start-up and imports count) for
`llara` (eval positions last), `llara` with `--eval-positions all`, and `loo`, into a temporary folder, using the
offline source chain (files in data/raw/ml-100k, else the cached download in data/cache, else GroupLens, else the
recbole wheel from PyPI). Each run is repeated `--repeats` times and the median wall time is reported.
With `--cold`, one extra `llara` run starts from an empty cache and so includes fetching the data.

    python bench/prepare.py [--repeats 3] [--cold]      # writes bench/results/prepare.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from machine import cpu_name  # bench/machine.py (scripts run from bench/)

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"llara": ["--protocol", "llara"], "llara-all": ["--protocol", "llara", "--eval-positions", "all"],
        "loo": ["--protocol", "loo"]}


def _run(args: list[str], out: Path, cache: Path | None = None) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "llmrec", "prepare", "--dataset", "ml-100k", "--out", str(out), *args]
    if cache is not None:
        cmd += ["--cache", str(cache)]
    started = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return seconds, json.loads((out / "meta.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cold", action="store_true", help="also time one llara run with an empty cache (network)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "prepare.json")
    a = p.parse_args()

    import numpy
    import pandas
    import pyarrow

    from llmrec import __version__

    load_before = os.getloadavg()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="llmrec-bench-") as tmp:
        for name, args in RUNS.items():
            times, inside, meta = [], [], {}
            for i in range(a.repeats):
                seconds, meta = _run(args, Path(tmp) / f"{name}-{i}")
                times.append(seconds)
                inside.append(meta["seconds"])
                print(f"{name}: run {i + 1}/{a.repeats}: {seconds:.2f} s", flush=True)
            results[name] = {
                "n_users": meta["n_users"], "n_items": meta["n_items"], "n_interactions": meta["n_interactions"],
                "n_samples": meta["n_samples"], "seconds": round(statistics.median(times), 2),
                "seconds_runs": [round(t, 2) for t in times],
                "seconds_in_process": round(statistics.median(inside), 2),  # prepare() itself, without start-up
                "max_history": meta["max_history"],
                "eval_positions": meta["eval_positions"], "source": meta["source"]["kind"],
                "seed": meta["seed"], "n_candidates": meta["n_candidates"]}
        if a.cold:
            seconds, meta = _run(RUNS["llara"], Path(tmp) / "cold", cache=Path(tmp) / "empty-cache")
            results["llara"]["seconds_cold_cache"] = round(seconds, 2)
            results["llara"]["source_cold_cache"] = meta["source"]["kind"]
            print(f"llara with an empty cache ({meta['source']['kind']}): {seconds:.2f} s")

    report = {
        "ml-100k": results,
        "machine": f"{platform.system()} {platform.machine()}, {cpu_name()}, {os.cpu_count()} CPU cores (shared with "
                   f"other jobs)",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "versions": {"llmrec": __version__, "python": platform.python_version(), "pandas": pandas.__version__,
                     "pyarrow": pyarrow.__version__, "numpy": numpy.__version__},
        "seed": results["llara"]["seed"],
        "command": f"python bench/prepare.py --repeats {a.repeats}{' --cold' if a.cold else ''}",
        "timed_command": "python -m llmrec prepare --dataset ml-100k --protocol {llara,loo} "
                         "[--eval-positions all] --out TMP (median wall time of the whole process)",
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
