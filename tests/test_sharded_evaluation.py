"""`llmrec evaluate --devices 2`: the samples split over two real processes (Lightning's DDP launcher, gloo on
the CPU) give the one-process metrics.json and scores.parquet (`llmrec.training.sharding`), in score and
generate mode; only rank 0 writes; the options that cannot shard are refused in one line before any work. The
rankings cross processes as JSON bytes in tensors, never pickled, and arrive bit for bit.

The two-process runs are real subprocesses (`python -m llmrec evaluate ... --devices 2`: Lightning re-runs that
command line for rank 1), each bounded by a timeout; the one-process reference runs in this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import one_thread

from llmrec.base import device
from llmrec.commands.cli import main
from llmrec.evaluation.ranker import CandidateRanking
from llmrec.training.distributed import gather_objects, set_process_threads, threads_per_process
from llmrec.training.sharding import RANKINGS, Launch, concat_rankings, shard_map

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("seconds", "users_per_second")  # the only metrics that may differ between the runs
LAUNCH_ENV = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "LOCAL_WORLD_SIZE")


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """`python -m llmrec ARGS` in a fresh process with this checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("OMP_NUM_THREADS", None)  # the command sets each process's threads itself
    return subprocess.run([sys.executable, "-m", "llmrec", *args], check=False, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def evaluate_both(sft_run: Path, tmp: Path, mode: str) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """(one-process output, two-process output, the two-process run) of `--mode mode` on the whole test split."""
    common = ["--ckpt", str(sft_run / "sft"), "--data", str(sft_run / "data"), "--mode", mode, "--batch-size",
              "3", "--device", "cpu"]
    one, two = tmp / f"one-{mode}", tmp / f"two-{mode}"
    with one_thread():
        assert main(["evaluate", *common, "--out", str(one)]) == 0
    done = cli("evaluate", *common, "--out", str(two), "--devices", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    return one, two, done


def assert_same_evaluation(one: Path, two: Path) -> None:
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert list(m1) == list(m2)
    assert {k: v for k, v in m1.items() if k not in TIMING} == {k: v for k, v in m2.items() if k not in TIMING}
    s1, s2 = pd.read_parquet(one / "scores.parquet"), pd.read_parquet(two / "scores.parquet")
    assert list(s1.columns) == list(s2.columns) and len(s1) == len(s2) > 0
    exact = [c for c in s1.columns if c != "scores"]
    pd.testing.assert_frame_equal(s1[exact], s2[exact])  # same rows, same order on disk
    for a, b in zip(s1["scores"], s2["scores"]):  # the same batches, 1 thread each: equal bit for bit
        if a is None or b is None:
            assert a is None and b is None
        else:
            a, b = np.asarray(a), np.asarray(b)
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_two_processes_rank_like_one_in_score_mode(sft_run, tmp_path):
    one, two, done = evaluate_both(sft_run, tmp_path, "score")
    assert_same_evaluation(one, two)
    # both ranks ranked a share (batches of 3 of the 12 samples, none twice) and only rank 0 printed the metrics
    assert "(rank 0/2)" in done.stderr and "(rank 1/2)" in done.stderr
    assert done.stdout.count('"hr@1"') == 1
    share = f"2 processes share this machine's CPU: {threads_per_process(2)} torch threads each"
    assert done.stderr.count(share) == 2  # no --threads: each process took its share of the cores
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one-score", "two-score"]  # nothing else written
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


def test_two_processes_rank_like_one_in_generate_mode(sft_run, tmp_path):
    one, two, _ = evaluate_both(sft_run, tmp_path, "generate")
    assert_same_evaluation(one, two)
    assert pd.read_parquet(two / "scores.parquet")["scores"].isna().all()


@pytest.mark.parametrize("extra, message", [
    (["--strategy", "fsdp"], "option --strategy fsdp: `llmrec evaluate` splits the samples"),
    (["--strategy", "deepspeed"], "option --strategy deepspeed: `llmrec evaluate` splits the samples"),
])
def test_weight_sharding_strategies_are_refused_in_one_line(sft_run, tmp_path, capsys, extra, message):
    assert main(["evaluate", "--ckpt", str(sft_run / "sft"), "--data", str(sft_run / "data"), "--out",
                 str(tmp_path / "out"), "--devices", "2", "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_encoder_checkpoints_rank_in_one_process(small_data, encoder_dir, tmp_path, capsys):
    data = small_data.save(tmp_path / "data")
    assert main(["evaluate", "--ckpt", str(encoder_dir), "--data", str(data), "--out", str(tmp_path / "out"),
                 "--devices", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is an encoder checkpoint: it ranks in one process" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_each_of_several_processes_takes_its_share_of_the_cores_unless_threads_is_given(monkeypatch):
    for name in (*LAUNCH_ENV, "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    monkeypatch.setattr(device, "_requested_threads", None)  # (restored after the test)
    try:
        torch.set_num_threads(5)
        assert set_process_threads(Launch("cpu", devices=1).local_processes) == 5  # one process: torch's count
        assert set_process_threads(Launch("cpu", devices=2).local_processes) == threads_per_process(2)
        monkeypatch.delenv("OMP_NUM_THREADS")  # (set for the processes Lightning starts)
        device.set_threads(3)  # what `--threads 3` does
        assert device.requested_threads() == 3
        assert set_process_threads(Launch("cpu", devices=2).local_processes) == 3
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # torchrun says how many processes share this machine
        assert Launch("cpu", devices=2).local_processes == 3
    finally:
        torch.set_num_threads(before)


def test_a_process_knows_its_rank_from_the_launcher_before_the_work_runs(monkeypatch):
    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)
    assert Launch("cpu", devices=2).rank == 0  # the launching process
    monkeypatch.setenv("LOCAL_RANK", "1")  # the process Lightning's launcher started
    assert Launch("cpu", devices=2).rank == 1
    monkeypatch.setenv("NODE_RANK", "1")  # ... on the second machine
    assert Launch("cpu", devices=2, num_nodes=2).rank == 3
    assert Launch("cpu", devices=1).rank == 0  # one process: rank 0 whatever the environment says


def odd_ranking(dtype: type, texts: list[str] | None, rows: int = 4, seed: int = 0) -> CandidateRanking:
    """Scores with every kind of float a ranker may produce (NaN, infinities, -0.0, subnormals, random bits)."""
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((rows, 5)).astype(dtype)
    scores.flat[:6] = [np.nan, np.inf, -np.inf, -0.0, np.finfo(dtype).tiny / 3, np.finfo(dtype).max]
    chosen = rng.integers(-1, 10**12, rows).astype(np.int64)
    return CandidateRanking(scores, chosen, texts)


def assert_same_ranking(a: CandidateRanking, b: CandidateRanking) -> None:
    for x, y in ((a.scores, b.scores), (a.chosen, b.chosen)):
        if x is None or y is None:
            assert x is None and y is None
        else:
            assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
    assert a.texts == b.texts


@pytest.mark.parametrize("ranking", [
    odd_ranking(np.float32, None),
    odd_ranking(np.float64, ["a", "", "é \n \"x\"", "\u0000"]),
    CandidateRanking(None, np.array([3, -1], dtype=np.int64), ["Toy Story (1995)", "no answer"]),  # generate mode
    CandidateRanking(np.zeros((0, 0)), np.zeros(0, dtype=np.int64), []),
], ids=["float32", "float64-texts", "generate", "empty"])
def test_a_ranking_crosses_processes_as_json_bit_for_bit(ranking):
    text = json.dumps(RANKINGS.to_json(ranking))  # what goes over the wire: plain JSON text, no pickle
    assert_same_ranking(RANKINGS.from_json(json.loads(text)), ranking)


class _TwoRanks:
    """A trainer of 2 processes whose strategy's `all_gather` gives this process's tensor and the one the other
    rank would send (`other`, a JSON value it encodes the same way): the wire path of `gather_objects`."""

    world_size = 2

    def __init__(self, other):
        self.strategy = self
        self.root_device = torch.device("cpu")
        self.other = torch.frombuffer(bytearray(json.dumps(other).encode("utf-8")), dtype=torch.uint8)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dtype == torch.long:  # the lengths
            return torch.stack([tensor, torch.tensor([len(self.other)])])
        theirs = torch.zeros_like(tensor)
        theirs[:len(self.other)] = self.other
        return torch.stack([tensor, theirs])


def test_gathered_rankings_equal_the_local_ones_bit_for_bit():
    mine = [[0, RANKINGS.to_json(odd_ranking(np.float32, ["x"] * 4, seed=1))]]
    theirs = [[1, RANKINGS.to_json(odd_ranking(np.float32, ["longer text"] * 7, rows=7, seed=2))]]
    everyone = gather_objects(_TwoRanks(theirs), mine)
    assert everyone == [mine, theirs]
    got = [RANKINGS.from_json(r) for part in everyone for _, r in part]
    assert_same_ranking(got[0], odd_ranking(np.float32, ["x"] * 4, seed=1))
    assert_same_ranking(got[1], odd_ranking(np.float32, ["longer text"] * 7, rows=7, seed=2))
    joined = concat_rankings(got, "score")
    assert joined.scores.dtype == np.float32 and joined.scores.shape == (11, 5)


def test_gathering_from_several_processes_needs_a_codec():
    with pytest.raises(ValueError, match="needs a Codec"):
        shard_map(lambda i: i, 4, Launch("cpu", devices=2), "ranking")
    assert shard_map(lambda i: i * i, 4, Launch("cpu"), "ranking") == [0, 1, 4, 9]  # one process: a plain loop


def test_each_process_loads_its_model_onto_its_own_gpu(monkeypatch):
    from llmrec.training import sharding

    assert Launch("cpu", devices=2).torch_device() == "cpu"
    monkeypatch.setattr(sharding, "torch_device", lambda device: "cuda")  # a GPU machine, as torch would say
    monkeypatch.setenv("LOCAL_RANK", "1")  # set by Lightning's launcher and torchrun in the second process
    assert Launch("gpu", devices=2).torch_device() == "cuda:1"
    assert Launch("gpu", devices=1).torch_device() == "cuda"  # one process: where it always loaded
    monkeypatch.delenv("LOCAL_RANK")
    assert Launch("gpu", devices=2).torch_device() == "cuda:0"  # the launching process is local rank 0


def test_more_processes_than_gpus_are_refused_in_one_line(monkeypatch):
    from llmrec.base.errors import ConfigError
    from llmrec.training import sharding

    monkeypatch.setattr(sharding, "lightning_accelerator", lambda device: "gpu")  # a machine with one GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"^option --devices 2: this machine has 1 GPU\(s\) and `llmrec evaluate` "
                                          r"runs one process per GPU; pass --devices 1 or fewer \(or --device cpu\)$"):
        sharding.check_launch(Launch("gpu", devices=2), "evaluate")
    assert sharding.check_launch(Launch("gpu", devices=1, num_nodes=2), "evaluate") == "ddp"
