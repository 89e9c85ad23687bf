"""The shared multi-process options: declared once in TrainerOptions, checked in one line by
`llmrec.training.distributed`, and the threads each process gets."""

import dataclasses
import importlib.util

import pytest

from llmrec.base.errors import ConfigError
from llmrec.training.distributed import check_strategy, process_count, threads_per_process
from llmrec.training.options import STRATEGIES, TrainerOptions


def test_options_are_declared_with_their_defaults():
    fields = {f.name: f for f in dataclasses.fields(TrainerOptions)}
    assert (fields["devices"].default, fields["num_nodes"].default, fields["strategy"].default,
            fields["accumulate_grad_batches"].default) == (1, 1, "auto", 1)
    assert STRATEGIES == ("auto", "ddp", "ddp_find_unused_parameters_true", "fsdp", "deepspeed")


@pytest.mark.parametrize(("strategy", "devices", "nodes", "expected"), [
    ("auto", 1, 1, "auto"), ("auto", 2, 1, "ddp"), ("auto", 1, 2, "ddp"), ("ddp", 2, 1, "ddp"),
    ("ddp_find_unused_parameters_true", 2, 1, "ddp_find_unused_parameters_true")])
def test_strategy_on_cpu(strategy, devices, nodes, expected):
    assert check_strategy(strategy, "cpu", devices, nodes) == expected


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed"])
def test_sharded_strategies_are_refused_on_cpu_in_one_line(strategy):
    with pytest.raises(ConfigError, match=rf"^option --strategy {strategy}: .*does not run on CPU; use --strategy "
                                          r"ddp on CPU") as e:
        check_strategy(strategy, "cpu", 2, 1)
    assert "\n" not in str(e.value)


def test_fsdp_is_accepted_on_gpu():
    assert check_strategy("fsdp", "gpu", 8, 4) == "fsdp"


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed here")
def test_deepspeed_without_its_package_says_how_to_install_it():
    with pytest.raises(ConfigError, match=r"deepspeed package is not installed; `pip install deepspeed`"):
        check_strategy("deepspeed", "gpu", 8, 1)


def test_process_count():
    assert process_count(8, 4) == 32


@pytest.mark.parametrize(("local", "cores", "expected"), [(1, 2, 2), (2, 2, 1), (3, 2, 1), (2, 8, 4), (3, 8, 2)])
def test_threads_per_process_share_the_cores(local, cores, expected):
    assert threads_per_process(local, cores) == expected


def test_threads_per_process_defaults_to_this_machine():
    assert threads_per_process(1) >= 1
    with pytest.raises(ValueError):
        threads_per_process(0)
