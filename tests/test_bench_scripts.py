"""The GPU benchmark script is only ever run on a lent GPU: keep it runnable by smoke-running it on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "llm_gpu.py", *args], cwd=BENCH, capture_output=True, text=True,
                          timeout=600)


def test_gpu_benchmark_runs_end_to_end_at_the_tiny_shape_on_cpu():
    done = run_bench("--shape", "tiny", "--device", "cpu", "--n-samples", "8", "--score-batch", "4",
                     "--generate-batch", "4", "--train-batch", "2", "--train-steps", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout[done.stdout.index("{\n"):])
    assert result["shape"] == "tiny" and result["device"] == "cpu"
    for key in ("score_users_per_s", "generate_users_per_s", "train_tokens_per_s", "train_mfu"):
        assert result[key] > 0, key
    assert 250 < result["prompt_tokens_mean"] < 350  # the ~256-token prompts the GPU target is about


def test_gpu_benchmark_refuses_to_record_a_smoke_shape():
    done = run_bench("--shape", "tiny", "--device", "cpu", "--write")
    assert done.returncode != 0 and "records only the 7b shape" in done.stderr
