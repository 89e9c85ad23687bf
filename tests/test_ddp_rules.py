"""The pure rules of a multi-process run (`llmrec.training.distributed`), checked in this one process: which rank a
process is, how many threads it takes, which samples each rank trains on and evaluates, and the resumable train
loader under a `DistributedSampler`. The real 2-process runs are in test_ddp_training.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from llmrec.base import device
from llmrec.base.errors import ConfigError
from llmrec.encoders.datamodule import LengthBucketSampler
from llmrec.training import distributed
from llmrec.training.distributed import (
    check_shards,
    check_valid_shards,
    gather_in_order,
    gather_objects,
    global_rank,
    run_facts,
    set_process_threads,
    shard_batches,
    shard_sampler,
    threads_per_process,
    train_sampler,
)
from llmrec.training.resume import _ResumableLoader, _shuffle_state

LAUNCH_ENV = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
              "LOCAL_WORLD_SIZE")


@pytest.fixture
def clean_env(monkeypatch):
    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(("env", "devices", "expected"), [
    ({}, 1, 0),
    ({"RANK": "3", "LOCAL_RANK": "1"}, 2, 3),                        # torchrun
    ({"LOCAL_RANK": "1"}, 2, 1),                                     # Lightning's launcher, one machine
    ({"LOCAL_RANK": "1", "NODE_RANK": "2"}, 4, 9),                   # Lightning's launcher, third machine
    ({"NODE_RANK": "1"}, 2, 2),                                      # the launching process of the second machine
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8"}, 4, 5),              # srun
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, 2, 0),              # one SLURM task: Lightning launches the rest
])
def test_global_rank_before_any_trainer(clean_env, env, devices, expected):
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert global_rank(devices) == expected


@pytest.mark.parametrize(("n", "batch", "world"), [(12, 4, 2), (13, 4, 2), (10, 3, 3), (5, 1, 2), (7, 8, 1)])
def test_shards_are_whole_one_process_batches_each_sample_once(n, batch, world):
    shards = [shard_batches(n, batch, r, world) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    one = [list(range(s, min(s + batch, n))) for s in range(0, n, batch)]
    for r, shard in enumerate(shards):
        assert shard == [i for b in one[r::world] for i in b]
        assert list(shard_sampler(n, batch, r, world)) == shard


def test_a_rank_without_a_batch_is_refused_in_one_line():
    check_shards(8, 4, 2, "validation", "hint")
    check_valid_shards(400, 8, 4, 2, 1)  # 8 of 400 valid samples: 2 batches for 2 processes
    with pytest.raises(ConfigError, match=r"^validation: 8 samples make 2 batch\(es\) of 4, fewer than the 4 "):
        check_valid_shards(400, 8, 4, 2, 2)
    with pytest.raises(ConfigError, match=r"^validation: 3 samples make 1 batch\(es\) of 4, fewer than the 2 "
                                          r"processes; lower it$"):
        check_shards(3, 4, 2, "validation", "lower it")


def test_training_shards_are_seeded_disjoint_and_reshuffled_each_epoch():
    data = list(range(11))
    a = [train_sampler(data, r, 2, seed=7) for r in range(2)]
    b = [train_sampler(data, r, 2, seed=7) for r in range(2)]
    assert [list(s) for s in a] == [list(s) for s in b]  # same seed, same shards
    assert len(list(a[0])) == len(list(a[1])) == 6  # padded to the same length: the same number of steps
    assert set(a[0]) | set(a[1]) == set(data)
    first = list(a[0])
    for s in a:
        s.set_epoch(1)
    assert list(a[0]) != first and set(a[0]) | set(a[1]) == set(data)


def test_length_buckets_are_split_between_ranks_with_equal_counts():
    lengths = np.random.default_rng(0).integers(1, 9, size=45).tolist()
    one = list(LengthBucketSampler(lengths, 4, seed=3))
    ranks = [LengthBucketSampler(lengths, 4, seed=3, rank=r, world=2) for r in range(2)]
    shares = [list(s) for s in ranks]
    assert len(shares[0]) == len(shares[1]) == len(ranks[0]) == 6  # 12 batches -> 6 each
    assert sorted(map(tuple, shares[0] + shares[1])) == sorted(map(tuple, one))
    odd = [list(LengthBucketSampler(lengths[:41], 4, seed=3, rank=r, world=2)) for r in range(2)]  # 11 batches
    assert len(odd[0]) == len(odd[1]) == 6
    # one batch repeated (the padding), every batch of one process present
    assert {tuple(b) for b in odd[0] + odd[1]} == {tuple(b) for b in LengthBucketSampler(lengths[:41], 4, seed=3)}


def test_the_resumable_loader_passes_the_epoch_to_a_distributed_sampler():
    from lightning_fabric.utilities.data import _set_sampler_epoch

    dataset = list(range(10))
    loader = _ResumableLoader(DataLoader(dataset, batch_size=2, sampler=train_sampler(dataset, 1, 2, seed=0)))
    _set_sampler_epoch(loader, 3)  # what Lightning's fit loop does at each epoch start
    assert loader.loader.sampler.epoch == 3
    assert _shuffle_state(loader.loader)["sampler_epoch"] == 3  # recorded in the resume state
    sampler = train_sampler(dataset, 1, 2, seed=0)
    sampler.set_epoch(3)
    assert [int(x) for b in loader for x in b] == list(sampler)


def test_threads_are_shared_only_when_the_user_did_not_choose(clean_env):
    before = torch.get_num_threads()
    clean_env.delenv("OMP_NUM_THREADS", raising=False)
    clean_env.setattr(device, "_requested_threads", None)
    try:
        assert set_process_threads(1) == before  # one process: nothing changes
        torch.set_num_threads(2)
        assert set_process_threads(2) == threads_per_process(2) == torch.get_num_threads()
        assert distributed.os.environ["OMP_NUM_THREADS"] == str(threads_per_process(2))  # kept by Lightning
        clean_env.delenv("OMP_NUM_THREADS")
        clean_env.setattr(device, "_requested_threads", 2)  # --threads 2
        torch.set_num_threads(2)
        assert set_process_threads(2) == 2
        clean_env.setattr(device, "_requested_threads", None)
        clean_env.setenv("OMP_NUM_THREADS", "2")  # the environment's choice
        assert set_process_threads(2) == 2
    finally:
        torch.set_num_threads(before)


def test_run_facts_give_the_effective_batch():
    assert run_facts(8, 4, 2, 3, 1) == {"processes": 8, "effective_batch_size": 192, "torch_threads": 1}


class _Alone:
    _trainer = None


def test_gathering_in_one_process_puts_rows_in_sample_order():
    values = torch.tensor([[5, 50], [3, 30], [4, 40]])
    out = gather_in_order(_Alone(), values, torch.tensor([2, 0, 1]), 3)
    assert out.tolist() == [[3, 30], [4, 40], [5, 50]]
    with pytest.raises(RuntimeError, match="exactly once"):
        gather_in_order(_Alone(), values, torch.tensor([2, 0, 0]), 3)


def test_gathering_objects_in_one_process():
    class Trainer:
        world_size = 1

    assert gather_objects(Trainer(), {"rng": [1, 2]}) == [{"rng": [1, 2]}]


def test_each_gpu_process_makes_its_own_gpu_current(clean_env):
    calls = []
    clean_env.setattr(torch.cuda, "set_device", calls.append)
    distributed.use_local_gpu("gpu")  # the launching process (no LOCAL_RANK yet): torch's default GPU 0
    distributed.use_local_gpu("cpu")
    clean_env.setenv("LOCAL_RANK", "3")
    distributed.use_local_gpu("cpu")
    distributed.use_local_gpu("gpu")
    assert calls == [3]
    clean_env.delenv("LOCAL_RANK")
    clean_env.setenv("SLURM_LOCALID", "2")  # srun started this process
    distributed.use_local_gpu("gpu")
    assert calls == [3, 2]


@pytest.mark.parametrize(("env", "expected"), [
    ({}, 0),
    ({"LOCAL_RANK": "1"}, 1),                          # Lightning's launcher, torchrun
    ({"SLURM_LOCALID": "3"}, 3),                       # srun
    ({"LOCAL_RANK": "1", "SLURM_LOCALID": "0"}, 1),    # a process Lightning started inside one SLURM task
])
def test_local_rank_says_which_gpu_of_the_machine(clean_env, env, expected):
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert distributed.local_rank() == expected
