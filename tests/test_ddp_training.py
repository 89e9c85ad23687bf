"""Every training stage under Lightning DDP: real 2-process runs (`python -m llmrec ... --devices 2`, gloo on the
CPU), each bounded by a timeout, at tiny shapes.

What is checked, per the rules in `llmrec.training.distributed`: each stage completes and its checkpoint
evaluates in one process; only rank 0 wrote (no temporary folder left, no Lightning folder in the working
directory, every process exits 0); each process took its share of the cores; the curriculum's coin and the
keep-best decisions are the same on every rank; the sharded validation equals a one-process validation of the
same weights exactly; S-DPO's sharded reference log-probs equal one process's; a killed DDP run resumed with the
same processes ends like an uninterrupted one (and another process count is refused in one line); FSDP on a CPU
is refused in one line; torchrun with two "nodes" on this machine (loopback) trains too.

Runs launched here are started through the CLI, never in-process with devices > 1 (Lightning's launcher would
re-run pytest in its child process).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_llm_support import saved_encoder, tiny_dataset
from tiny import SMALL_DATA, TINY_LLAMA, flags

from llmrec.base.atomic import read_output_marker
from llmrec.commands.cli import main
from llmrec.data.dataset import ProcessedDataset
from llmrec.data.sampling import subset
from llmrec.evaluation.metrics import hit_ratio_at_k, ndcg_at_k, target_ranks
from llmrec.llm.checkpoint import load_recommender
from llmrec.llm.datamodule import prompt_loader
from llmrec.llm.ranking import score_candidates
from llmrec.preference.negatives import preference_items
from llmrec.preference.reference import (
    REFERENCE_FILE,
    compute_reference,
    load_reference,
)
from llmrec.training.distributed import threads_per_process
from llmrec.training.resume import LATEST, resume_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the in-process parts (1-process runs, checks)

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds for one multi-process run (about 40 s here on a busy 2-core machine)
# 48 training samples, 12 valid: 2 epochs of 12 steps per rank (batch 2 x 2 processes), validation twice an epoch
LLM_OPTIONS = ["--epochs", "2", "--val-check-interval", "0.5", "--eval-batch-size", "4", "--max-valid-samples", "12",
               "--max-test-samples", "8", "--lr", "3e-3", "--device", "cpu", "--no-progress-bar", "--resume-every",
               "2", *flags(TINY_LLAMA)]
LLM_KEYS = ["valid/hr@1", "best_step", "valid/history", "test/hr@1", "test/candidates/ndcg@5"]


def _env(record: Path | None = None) -> dict[str, str]:
    # no OMP_NUM_THREADS: each process must choose its own share of the cores
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LLMREC_RANK_RECORD")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    if record is not None:
        env["LLMREC_RANK_RECORD"] = str(record)
    return env


def run_llmrec(args: list[str], cwd: Path, record: Path | None = None) -> float:
    """Run `python -m llmrec ARGS` in `cwd` (2 processes when ARGS say --devices 2); fail unless it exits 0.
    Returns its wall-clock seconds."""
    cwd.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "llmrec", *args], cwd=cwd, env=_env(record), capture_output=True,
                          text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return time.perf_counter() - started


def records(folder: Path, event: str) -> dict[int, list[dict]]:
    """The `event` lines each rank recorded (LLMREC_RANK_RECORD), by rank, without the event and rank fields."""
    out: dict[int, list[dict]] = {}
    for path in sorted(folder.glob("rank-*.jsonl")):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry.pop("event") == event:
                out.setdefault(entry.pop("rank"), []).append(entry)
    return out


def only_outputs(parent: Path, names: set[str]) -> None:
    """`parent` holds exactly `names`: no temporary `.NAME.*.tmp` folder, no resume state, nothing else."""
    assert {p.name for p in parent.iterdir()} == names


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> Path:
    """`data/`, `enc/` (a GRU4Rec), `one/` (a 1-process SFT, batch 4, which also builds the tiny base in
    `cache/`) and `runs/two/` (the same run on 2 processes, batch 2 each: the same effective batch), with each
    rank's records in `two-record/`."""
    root = tmp_path_factory.mktemp("ddp")
    tiny_dataset(**SMALL_DATA).save(root / "data")
    saved_encoder(ProcessedDataset.load(root / "data"), root / "enc")
    common = ["train-llm", "--data", str(root / "data"), "--encoder", str(root / "enc"), "--cache-dir",
              str(root / "cache"), *LLM_OPTIONS]
    assert main([*common, "--batch-size", "4", "--out", str(root / "one")]) == 0
    seconds = run_llmrec([*common, "--batch-size", "2", "--devices", "2", "--out", str(root / "runs" / "two")],
                         root / "cwd", root / "two-record")
    (root / "two-seconds.txt").write_text(f"{seconds:.1f}\n")
    return root


def _llm_command(root: Path, out: Path) -> list[str]:
    return ["train-llm", "--data", str(root / "data"), "--encoder", str(root / "enc"), "--cache-dir",
            str(root / "cache"), *LLM_OPTIONS, "--batch-size", "2", "--devices", "2", "--out", str(out)]


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_two_process_sft_completes_and_only_rank_zero_wrote(ddp):
    two = ddp / "runs" / "two"
    assert read_output_marker(two) is not None and (two / "logs").is_dir()
    only_outputs(ddp / "runs", {"two"})  # no temporary folder of any rank, the resume state removed
    assert list((ddp / "cwd").iterdir()) == []  # no lightning_logs/ or anything else in the working directory
    metrics = _metrics(two)
    assert (metrics["processes"], metrics["effective_batch_size"]) == (2, 4)
    assert metrics["torch_threads"] == threads_per_process(2)
    threads = records(ddp / "two-record", "threads")
    assert sorted(threads) == [0, 1]
    assert all(t == [{"threads": threads_per_process(2), "local_processes": 2}] for t in threads.values())


def test_the_two_process_checkpoint_evaluates_in_one_process(ddp, capsys):
    assert main(["evaluate", "--ckpt", str(ddp / "runs" / "two"), "--data", str(ddp / "data"), "--max-samples", "4",
                 "--out", str(ddp / "eval-two")]) == 0
    assert (ddp / "eval-two" / "metrics.json").is_file()


def test_the_curriculum_coin_is_the_same_on_every_rank(ddp):
    coins = records(ddp / "two-record", "coin")
    assert sorted(coins) == [0, 1]
    assert coins[0] == coins[1]
    assert [c["step"] for c in coins[0]] == list(range(24))  # one draw per step
    # the schedule counts each rank's steps (12 batches of 2 per epoch, not 24 of one process's 2): the
    # linear curriculum reaches 1 at the end, and the LR schedule spans the same 24 steps
    assert [c["probability"] for c in coins[0]] == pytest.approx([s / 24 for s in range(24)])
    assert records(ddp / "two-record", "schedule") == {0: [{"total": 24, "warmup": 1}],
                                                        1: [{"total": 24, "warmup": 1}]}
    # the linear curriculum draws text-only batches early and hybrid ones later: both paths ran under DDP (a
    # text-only batch leaves the projector without gradient on every rank)
    assert {c["hybrid"] for c in coins[0]} == {True, False}


def test_keep_best_decides_the_same_on_every_rank(ddp):
    rounds = records(ddp / "two-record", "valid")
    assert sorted(rounds) == [0, 1] and len(rounds[0]) == 4  # 2 epochs x 2 validations (the end is one of them)
    assert rounds[0] == rounds[1]
    metrics = _metrics(ddp / "runs" / "two")
    assert metrics["best_step"] == rounds[1][-1]["best_step"]
    assert metrics["valid/hr@1"] == rounds[1][-1]["best_score"]


def one_process_validation(ckpt: Path, data: ProcessedDataset, max_valid: int, seed: int, batch_size: int
                           ) -> tuple[float, float]:
    """(hr@1, ndcg@5) of checkpoint `ckpt` on the valid subset of training, ranked as a validation round ranks
    it, in this one process."""
    lm = load_recommender(ckpt, data)
    lm.eval()
    valid = subset(data.split("valid"), max_valid, seed + 1)
    ranks = []
    with torch.no_grad():
        for batch in prompt_loader(valid, lm.builder, batch_size, False,
                                   summary_max_length=getattr(lm.encoder, "max_length", 50)):
            ranks.append(target_ranks(score_candidates(lm, batch, hybrid=True), batch.target_index))
    ranks = torch.cat(ranks)
    return float(hit_ratio_at_k(ranks, 1)), float(ndcg_at_k(ranks, 5))


def test_sharded_validation_equals_a_one_process_validation_of_the_same_weights(ddp):
    metrics = _metrics(ddp / "runs" / "two")
    best = next(h for h in metrics["valid/history"] if h["step"] == metrics["best_step"])
    hr1, ndcg5 = one_process_validation(ddp / "runs" / "two", ProcessedDataset.load(ddp / "data"), 12, 0, 4)
    assert (best["valid/hr@1"], best["valid/ndcg@5"]) == pytest.approx((hr1, ndcg5), abs=1e-6)


def test_two_processes_track_one_process_at_the_same_effective_batch(ddp):
    # the same 48 samples per epoch in batches of 4 (one process) or 2 + 2 (two): the shuffles differ (torch's
    # RandomSampler vs DistributedSampler), so the runs are not equal; at this size (12 valid samples, 24 steps)
    # their best valid hr@1 differ by at most a few samples (observed: see the report)
    one, two = _metrics(ddp / "one"), _metrics(ddp / "runs" / "two")
    assert abs(one["valid/hr@1"] - two["valid/hr@1"]) <= 3 / 12 + 1e-6
    assert (one["effective_batch_size"], two["effective_batch_size"]) == (4, 4)


@pytest.mark.parametrize("command", ["train-llm", "train-sdpo", "train-encoder"])
def test_fsdp_on_a_cpu_is_refused_in_one_line_before_any_work(command, ddp, tmp_path, capsys):
    args = {"train-llm": ["--encoder", str(ddp / "enc")], "train-sdpo": ["--sft", str(ddp / "one")],
            "train-encoder": []}[command]
    started = time.perf_counter()
    assert main([command, "--data", str(ddp / "data"), *args, "--out", str(tmp_path / "out"), "--device", "cpu",
                 "--devices", "2", "--strategy", "fsdp"]) == 2
    assert time.perf_counter() - started < 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--strategy fsdp" in err[0] and "does not run on CPU" in err[0]
    assert not (tmp_path / "out").exists()


def test_too_few_valid_batches_for_the_processes_is_refused_in_one_line_before_any_work(ddp, tmp_path, capsys):
    # 4 valid samples in one batch of 4: the second process would have nothing to rank (and the first would wait
    # for it); refused after reading the data, before a model is built or a process started
    started = time.perf_counter()
    assert main(["train-llm", "--data", str(ddp / "data"), "--encoder", str(ddp / "enc"), "--devices", "2",
                 "--max-valid-samples", "4", "--eval-batch-size", "4", "--device", "cpu",
                 "--out", str(tmp_path / "out")]) == 2
    assert time.perf_counter() - started < 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "4 samples make 1 batch(es) of 4, fewer than the 2 processes" in err[0]
    assert not (tmp_path / "out").exists()


def test_two_process_sdpo_completes_with_the_one_process_reference(ddp):
    out = ddp / "sdpo-runs" / "sdpo"
    run_llmrec(["train-sdpo", "--sft", str(ddp / "one"), "--data", str(ddp / "data"), "--negatives", "2",
                "--epochs", "1", "--batch-size", "2", "--eval-batch-size", "4", "--max-train-samples", "16",
                "--max-valid-samples", "12", "--max-test-samples", "8", "--device", "cpu", "--no-progress-bar",
                "--devices", "2", "--accumulate-grad-batches", "2", "--out", str(out)],
               ddp / "cwd-sdpo", ddp / "sdpo-record")
    only_outputs(ddp / "sdpo-runs", {"sdpo"})
    metrics = _metrics(out)
    assert (metrics["processes"], metrics["effective_batch_size"]) == (2, 8)
    # 16 samples: 8 per rank, 4 batches of 2, an optimiser step every 2 batches: 2 steps
    assert records(ddp / "sdpo-record", "schedule") == {0: [{"total": 2, "warmup": 0}],
                                                         1: [{"total": 2, "warmup": 0}]}
    assert metrics["best_step"] == 2
    rounds = records(ddp / "sdpo-record", "valid")
    assert sorted(rounds) == [0, 1] and rounds[0] == rounds[1]
    # the reference log-probs, computed sharded and gathered, equal one process's computation with the SFT model
    data = ProcessedDataset.load(ddp / "data")
    stored = load_reference(out / REFERENCE_FILE)
    full_train = data.split("train")
    train = full_train.iloc[stored.sample_index.numpy()].reset_index(drop=True)
    items = preference_items(train, 2, 0)
    assert np.array_equal(stored.items.numpy(), items)
    one = compute_reference(load_recommender(ddp / "one", data), train, items, batch_size=4)
    torch.testing.assert_close(stored.logprobs, one, rtol=0, atol=1e-5)
    # the SFT start, ranked sharded, is the one-process validation of the SFT weights
    hr1, _ = one_process_validation(ddp / "one", data, 12, 0, 4)
    assert metrics["sft/valid/hr@1"] == pytest.approx(hr1, abs=1e-6)
    assert main(["evaluate", "--ckpt", str(out), "--data", str(ddp / "data"), "--max-samples", "4",
                 "--out", str(ddp / "eval-sdpo")]) == 0


def test_two_process_encoder_completes_and_decides_as_one_process_would(ddp):
    out = ddp / "enc-runs" / "sasrec"
    run_llmrec(["train-encoder", "--data", str(ddp / "data"), "--model", "sasrec", "--hidden-size", "16",
                "--max-length", "8", "--batch-size", "8", "--max-epochs", "3", "--eval-batch-size", "4",
                "--device", "cpu", "--no-progress-bar", "--devices", "2", "--out", str(out)],
               ddp / "cwd-enc", ddp / "enc-record")
    only_outputs(ddp / "enc-runs", {"sasrec"})
    assert list((ddp / "cwd-enc").iterdir()) == []
    metrics = _metrics(out)
    assert (metrics["processes"], metrics["effective_batch_size"], metrics["torch_threads"]) == \
        (2, 16, threads_per_process(2))
    rounds = records(ddp / "enc-record", "valid")
    assert sorted(rounds) == [0, 1] and len(rounds[0]) == 3 and rounds[0] == rounds[1]
    # the kept epoch's sharded validation score equals rank 0's one-process evaluation of the saved weights
    assert metrics["valid"][metrics["monitor"].removeprefix("valid/")] == pytest.approx(rounds[1][-1]["best_score"],
                                                                                      abs=1e-6)
    assert main(["evaluate", "--ckpt", str(out), "--data", str(ddp / "data"), "--max-samples", "4",
                 "--out", str(ddp / "eval-enc")]) == 0


def _kill_group_after_state(args: list[str], out: Path, cwd: Path, min_step: int = 4) -> None:
    """Start `python -m llmrec ARGS` (2 processes) in its own process group and SIGKILL the whole group as soon
    as a resume state of at least `min_step` steps is complete."""
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "llmrec", *args], cwd=cwd, env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    latest = resume_folder(out) / LATEST
    deadline = time.monotonic() + TIMEOUT
    try:
        while True:
            if latest.exists() and json.loads(latest.read_text())["global_step"] >= min_step:
                break
            if proc.poll() is not None:
                raise AssertionError(f"the run ended (code {proc.returncode}) before a resume state of step "
                                     f"{min_step}: {proc.stderr.read()[-2000:]}")
            assert time.monotonic() < deadline, f"no resume state after {TIMEOUT}s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # rank 0, its child rank 1, every process of the run
    finally:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "the run finished before the kill: give it more steps"
    assert not out.exists() or read_output_marker(out) is None


def test_a_killed_ddp_run_resumed_with_the_same_processes_ends_like_an_uninterrupted_one(ddp, capsys):
    out = ddp / "resumed-runs" / "two"
    _kill_group_after_state(_llm_command(ddp, out), out, ddp / "cwd-kill")
    # another process count is refused in one line (the state records --devices)
    command = _llm_command(ddp, out)
    command[command.index("--devices") + 1] = "1"
    assert main([*command, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--devices 2 -> 1" in err[0]
    run_llmrec([*_llm_command(ddp, out), "--resume"], ddp / "cwd-resume", ddp / "resume-record")
    only_outputs(ddp / "resumed-runs", {"two"})
    full, resumed = _metrics(ddp / "runs" / "two"), _metrics(out)
    for key in LLM_KEYS:
        assert resumed[key] == full[key], key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_nodes_on_loopback(ddp):
    out = ddp / "torchrun-runs" / "two"
    port = _free_port()
    command = _llm_command(ddp, out)
    command[command.index("--devices") + 1] = "1"
    (ddp / "cwd-torchrun").mkdir()
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node",
                                "1", "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port",
                                str(port), "-m", "llmrec", *command, "--num-nodes", "2", "--threads", "1"],
                               cwd=ddp / "cwd-torchrun", env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
              for node in (0, 1)]
    try:
        errors = [agent.communicate(timeout=TIMEOUT)[1] for agent in agents]
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    assert [agent.returncode for agent in agents] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    only_outputs(ddp / "torchrun-runs", {"two"})
    metrics = _metrics(out)
    assert (metrics["processes"], metrics["effective_batch_size"]) == (2, 4)
    # the same run as Lightning's own launcher made: the same ranks, data shards and coin
    two = _metrics(ddp / "runs" / "two")
    for key in LLM_KEYS:
        assert metrics[key] == two[key], key
