"""The launch examples of docs/launch/ stay correct: their llmrec command lines parse with the real `llmrec`
parser and resolve with the real config (every flag exists, every value is valid, the preset file exists), the
SLURM job's resources match the llmrec flags the way Lightning's SLURMEnvironment requires, and that environment,
given what SLURM sets for one task of the job, gives Lightning the rank the job means. Nothing is launched."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from llmrec.base.config import resolve_config
from llmrec.commands.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "docs" / "launch"
SBATCH = LAUNCH / "train-llm-multinode.sbatch"
TORCHRUN = LAUNCH / "train-llm-torchrun-loopback.sh"


def logical_lines(path: Path) -> list[str]:
    """The script's lines with backslash continuations joined."""
    return path.read_text().replace("\\\n", " ").splitlines()


def sbatch_options(path: Path) -> dict[str, str]:
    """`#SBATCH --key=value` (or `--key value`) directives, by key."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"#SBATCH\s+--([\w-]+)(?:[=\s]+(\S+))?", line)
        if m:
            out[m.group(1)] = m.group(2) or ""
    return out


def llmrec_args(path: Path, launcher: str) -> list[str]:
    """The arguments after `-m llmrec` of the one line that starts with `launcher` (`srun`, `torchrun`); shell
    variables are left as their literal text (they are values, never flags)."""
    lines = [line.strip() for line in logical_lines(path) if line.strip().startswith(launcher + " ")]
    assert len(lines) == 1, f"{path}: expected one `{launcher}` line, found {len(lines)}"
    words = shlex.split(lines[0], comments=True)
    start = next(i for i in range(len(words) - 1) if words[i:i + 2] == ["-m", "llmrec"])
    args = words[start + 2:]
    return args[:-1] if args and args[-1] == "&" else args


def parsed_config(args: list[str]):
    """The command's resolved config, as `llmrec` would build it (unknown flags fail the test)."""
    parser = build_parser(args[0])
    namespace, unknown = parser.parse_known_args(args)
    assert not unknown, f"flags llmrec {args[0]} does not have: {unknown}"
    return resolve_config(COMMANDS[args[0]].load().config, namespace, namespace.config)



@pytest.fixture(autouse=True)
def restore_environment():
    """Lightning's SLURM environment writes MASTER_ADDR/MASTER_PORT into os.environ when asked for the rendezvous
    address (gpu07 here): put the whole environment back, or every later multi-process run of this pytest process
    would try to meet on gpu07 and hang."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_the_sbatch_job_matches_its_llmrec_flags():
    options = sbatch_options(SBATCH)
    args = llmrec_args(SBATCH, "srun")
    assert args[0] == "train-llm" and args[args.index("--config") + 1] == "llmrec/configs/llm-lora-7b.yaml"
    assert (ROOT / args[args.index("--config") + 1]).is_file()
    config = parsed_config(args)
    gpus_per_node = int(re.fullmatch(r"gpu:(\d+)", options["gres"]).group(1))
    # what Lightning's SLURMEnvironment.validate_settings demands, plus one GPU per process
    assert int(options["ntasks-per-node"]) == config.devices == gpus_per_node == 4
    assert int(options["nodes"]) == config.num_nodes == 2
    assert config.device == "gpu" and config.strategy in ("ddp", "auto")
    assert (config.batch_size, config.accumulate_grad_batches) == (4, 2)  # the header's effective batch of 64
    assert config.batch_size * config.devices * config.num_nodes * config.accumulate_grad_batches == 64
    assert config.finetune == "lora" and config.precision == "bf16-true"  # the preset's values came through


def test_the_torchrun_example_parses_and_its_nodes_match_its_flags():
    line = next(x for x in logical_lines(TORCHRUN) if x.strip().startswith("torchrun "))
    torchrun = shlex.split(line)
    nnodes, per_node = (int(torchrun[torchrun.index(f) + 1]) for f in ("--nnodes", "--nproc-per-node"))
    assert torchrun[torchrun.index("--master-addr") + 1] == "127.0.0.1"  # loopback only
    config = parsed_config(llmrec_args(TORCHRUN, "torchrun"))
    assert (config.num_nodes, config.devices) == (nnodes, per_node) == (2, 1)
    assert config.device == "cpu"
    assert (ROOT / "llmrec" / "configs" / "llm-tiny-cpu-small.yaml").is_file()


def test_a_flag_llmrec_lacks_is_caught(tmp_path):
    # the parser check can fail: a misspelt flag in a copy of the job is reported
    broken = tmp_path / "job.sbatch"
    broken.write_text(SBATCH.read_text().replace("--num-nodes 2", "--num-node 2"))
    with pytest.raises(AssertionError, match="--num-node"):
        parsed_config(llmrec_args(broken, "srun"))


def slurm_task_env(monkeypatch, options: dict[str, str], proc_id: int) -> None:
    """What srun sets for global task `proc_id` of the job (block distribution: tasks fill a node first)."""
    nodes, per_node = int(options["nodes"]), int(options["ntasks-per-node"])
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK"):
        monkeypatch.delenv(name, raising=False)
    env = {"SLURM_NTASKS": nodes * per_node, "SLURM_PROCID": proc_id, "SLURM_LOCALID": proc_id % per_node,
           "SLURM_NODEID": proc_id // per_node, "SLURM_NNODES": nodes, "SLURM_NTASKS_PER_NODE": per_node,
           "SLURM_JOB_NAME": options["job-name"], "SLURM_JOB_ID": 123456, "SLURM_NODELIST": "gpu[07-08]"}
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))


def test_lightning_slurm_environment_gives_rank_5_of_the_job_its_place(monkeypatch):
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    options = sbatch_options(SBATCH)
    config = parsed_config(llmrec_args(SBATCH, "srun"))
    slurm_task_env(monkeypatch, options, 5)
    assert SLURMEnvironment.detect()
    env = SLURMEnvironment()
    assert env.creates_processes_externally  # srun starts every process: Lightning launches none
    assert (env.global_rank(), env.local_rank(), env.node_rank(), env.world_size()) == (5, 1, 1, 8)
    assert env.main_address == "gpu07"  # the first host of the node list: where rank 0 runs
    env.validate_settings(num_devices=config.devices, num_nodes=config.num_nodes)  # the job and flags agree
    with pytest.raises(ValueError, match="ntasks-per-node"):
        env.validate_settings(num_devices=config.devices * 2, num_nodes=config.num_nodes)
    with pytest.raises(ValueError, match="nodes"):
        env.validate_settings(num_devices=config.devices, num_nodes=config.num_nodes + 1)


def test_a_lightning_trainer_built_from_the_job_flags_takes_its_rank_from_slurm(monkeypatch):
    # the same flags through Lightning's own connector (a CPU stands in for the GPUs; no process group is started)
    import pytorch_lightning as pl
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    from lightning_fabric.utilities import rank_zero as fabric_rank_zero
    from pytorch_lightning.utilities import rank_zero

    options = sbatch_options(SBATCH)
    config = parsed_config(llmrec_args(SBATCH, "srun"))
    slurm_task_env(monkeypatch, options, 5)
    # building the trainer sets Lightning's process-wide rank (rank 5 here): put it back after the test, or every
    # later test in this process would run as a rank that must not write
    for module in {rank_zero, fabric_rank_zero}:
        monkeypatch.setattr(module.rank_zero_only, "rank", getattr(module.rank_zero_only, "rank", 0))
    trainer = pl.Trainer(accelerator="cpu", devices=config.devices, num_nodes=config.num_nodes,
                         strategy=config.strategy, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    assert isinstance(trainer.strategy.cluster_environment, SLURMEnvironment)
    assert (trainer.global_rank, trainer.local_rank, trainer.node_rank, trainer.world_size) == (5, 1, 1, 8)
