"""Resumable training (`llmrec.training.resume`): a run stopped at any point and resumed with `--resume` ends with
the same weights and metrics as an uninterrupted one; the saved state holds no pickle; an interrupted run leaves
no output folder; a state of another config is refused with one line.

The stage tests kill a real `python -m llmrec` training subprocess with SIGKILL as soon as its first resume state
exists, then resume it in this process and compare every metric with an uninterrupted run of the same options.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file, save_file
from test_llm_support import saved_encoder, tiny_dataset
from tiny import TINY_LLAMA, flags
from torch.utils.data import DataLoader, TensorDataset

from llmrec.base.atomic import read_output_marker
from llmrec.commands.cli import main
from llmrec.data.dataset import ProcessedDataset
from llmrec.base.errors import CheckpointError
from llmrec.training.keep_best import KeepBest
from llmrec.training.resume import (
    LATEST,
    ResumeCheckpoint,
    _from_json,
    _to_json,
    load_optimizer_state,
    optimizer_state,
    prepare_resume,
    resume_folder,
)

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ a toy fit, in process
class _Stop(Exception):
    pass


class _StopAt(pl.Callback):
    """Interrupts training right after optimiser step `step` (after every other callback saw that batch)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise _Stop


class _Toy(pl.LightningModule):
    """Dropout (global RNG), AdamW (optimizer state) and a per-step LambdaLR: each one breaks a naive resume. Its
    schedule reads `estimated_stepping_batches`, which makes Lightning build the train loader before `on_fit_start`
    (as the LLM stages do)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return ((self.net(x).squeeze(-1) - y) ** 2).mean()

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("valid/score", -((self.net(x).squeeze(-1) - y) ** 2).mean())

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=1e-2)
        total = self.trainer.estimated_stepping_batches
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / (total + 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class _ToyData(pl.LightningDataModule):
    """60 samples in batches of 8 (8 batches an epoch, the last one short), shuffled by a seeded generator."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(60, 4, generator=g)
        self.y = self.x.sum(1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=8, shuffle=True,
                          generator=torch.Generator().manual_seed(3))

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.x[:16], self.y[:16]), batch_size=8)


def _toy_fit(out: Path, stop: int | None = None, resume: bool = False):
    pl.seed_everything(0, verbose=False)
    module, keep_best = _Toy(), KeepBest("valid/score")
    state = prepare_resume(out, "toy", {"seed": 0}, resume)
    callbacks = [keep_best, ResumeCheckpoint(resume_folder(out), "toy", {"seed": 0}, 3, state)]
    trainer = pl.Trainer(max_epochs=3, val_check_interval=0.5, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=callbacks + ([_StopAt(stop)] if stop else []))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            trainer.fit(module, datamodule=_ToyData())
        except _Stop:
            return None
    return torch.cat([p.detach().flatten() for p in module.parameters()]), keep_best.history, trainer.global_step


@pytest.fixture(scope="module")
def toy_reference(tmp_path_factory):
    return _toy_fit(tmp_path_factory.mktemp("toy") / "full")


# stops: mid-epoch between saves (4, 7), right after a validation round (8: the epoch's last batch, validated),
# on a save step (9), in the next epochs (13, 20)
@pytest.mark.parametrize("stop", [4, 7, 8, 9, 13, 20])
def test_a_fit_stopped_anywhere_resumes_to_the_same_weights_and_history(stop, toy_reference, tmp_path):
    weights, history, steps = toy_reference
    assert steps == 24 and [h["step"] for h in history] == [4, 8, 12, 16, 20, 24]
    out = tmp_path / "run"
    assert _toy_fit(out, stop=stop) is None
    saved = json.loads((resume_folder(out) / LATEST).read_text())
    # saves every 3 steps and after each validation (steps 4, 8, ...): a stop at a validated step comes before
    # its validation, so the state is the previous save
    assert saved["global_step"] == {4: 3, 7: 6, 8: 6, 9: 9, 13: 12, 20: 18}[stop]
    resumed_weights, resumed_history, resumed_steps = _toy_fit(out, resume=True)
    assert resumed_steps == 24
    assert resumed_history == history  # the same validation rounds with the same scores, none repeated
    assert torch.equal(resumed_weights, weights)


class _SleepPerBatch(pl.Callback):
    """Each training batch takes at least `seconds` of wall time."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(self.seconds)


def test_a_resumed_fit_counts_the_training_seconds_before_the_stop(tmp_path):
    out, per_batch = tmp_path / "run", 0.05

    def fit(stop: int | None = None, resume: bool = False) -> tuple[ResumeCheckpoint, KeepBest]:
        pl.seed_everything(0, verbose=False)
        keep_best = KeepBest("valid/score")
        checkpoint = ResumeCheckpoint(resume_folder(out), "toy", {"seed": 0}, 3,
                                      prepare_resume(out, "toy", {"seed": 0}, resume))
        trainer = pl.Trainer(max_epochs=3, val_check_interval=0.5, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                             callbacks=[keep_best, checkpoint, _SleepPerBatch(per_batch)]
                             + ([_StopAt(stop)] if stop else []))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                trainer.fit(_Toy(), datamodule=_ToyData())
            except _Stop:
                pass
        return checkpoint, keep_best

    fit(stop=9)
    state = resume_folder(out) / json.loads((resume_folder(out) / LATEST).read_text())["state"]
    saved = json.loads((state / "state.json").read_text())
    assert saved["global_step"] == 9 and saved["train_seconds"] >= 9 * per_batch
    checkpoint, keep_best = fit(resume=True)
    assert checkpoint.seconds_before == saved["train_seconds"]
    # 24 batches in all; the resumed process alone trained 15 (0.75 s of sleep), less than the whole run's 1.2 s
    assert checkpoint.train_seconds() >= 24 * per_batch
    assert keep_best.best_step > 9 and keep_best.seconds_to_best >= keep_best.best_step * per_batch


def test_a_naive_restart_would_not_match(toy_reference, tmp_path):
    """The comparison above can fail: the same run without its optimiser, RNG and data-order state differs."""
    out = tmp_path / "run"
    assert _toy_fit(out, stop=9) is None
    state = resume_folder(out) / json.loads((resume_folder(out) / LATEST).read_text())["state"]
    save_file({}, str(state / "optimizer.safetensors"))  # drop Adam's moments: the resumed weights must differ
    facts = json.loads((state / "state.json").read_text())
    facts["optimizers"][0]["scalars"] = {}
    (state / "state.json").write_text(json.dumps(facts))
    resumed = _toy_fit(out, resume=True)
    assert not torch.equal(resumed[0], toy_reference[0])


def test_the_state_is_safetensors_and_json_only(tmp_path):
    out = tmp_path / "run"
    assert _toy_fit(out, stop=5) is None
    folder = resume_folder(out)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert all(f.endswith((".json", ".safetensors")) for f in files), files
    state = folder / json.loads((folder / LATEST).read_text())["state"]
    assert sorted(p.name for p in state.iterdir()) == ["complete.json", "optimizer.safetensors", "state.json",
                                                       "tensors.safetensors", "weights.safetensors"]
    tensors = load_file(str(state / "tensors.safetensors"))
    assert tensors["rng.torch_cpu"].dtype == torch.uint8
    facts = json.loads((state / "state.json").read_text())
    assert facts["global_step"] == 4 and facts["batch_idx"] == 3  # saved after the validation of step 4
    assert facts["data"]["skip"] == 4  # the resumed epoch skips the 4 batches it trained on
    assert [h["step"] for h in facts["keep_best"]["history"]] == [4]


def test_json_round_trip_of_optimiser_and_rng_values():
    value = {"a": (1, 2.5, None), 3: [torch.tensor([1.0, 2.0]), "x"], "t": torch.tensor(7, dtype=torch.int64)}
    back = _from_json(json.loads(json.dumps(_to_json(value))))
    assert back["a"] == (1, 2.5, None) and back[3][1] == "x"
    assert torch.equal(back[3][0], torch.tensor([1.0, 2.0])) and back["t"].dtype == torch.int64
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = torch.optim.Adam([param], lr=0.1, betas=(0.8, 0.9))
    param.grad = torch.tensor([0.5, 1.0])
    optimizer.step()
    values, tensors = optimizer_state(optimizer)
    other = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=0.5)
    load_optimizer_state(other, json.loads(json.dumps(values)), tensors)
    state = other.state_dict()
    assert state["param_groups"][0]["lr"] == 0.1 and tuple(state["param_groups"][0]["betas"]) == (0.8, 0.9)
    # Adam's first moment after one step: (1 - beta1) * grad = 0.2 * [0.5, 1.0]
    assert torch.allclose(state["state"][0]["exp_avg"], torch.tensor([0.1, 0.2]))


def test_resume_without_a_state_or_with_another_config_is_refused(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match="no saved training state"):
        prepare_resume(out, "toy", {"seed": 0}, True)
    assert _toy_fit(out, stop=5) is None
    with pytest.raises(CheckpointError, match=r"another config \(--seed 0 -> 1\)"):
        prepare_resume(out, "toy", {"seed": 1}, True)
    with pytest.raises(CheckpointError, match="not `llmrec other`"):
        prepare_resume(out, "other", {"seed": 0}, True)
    assert prepare_resume(out, "toy", {"seed": 0, "resume": True, "progress_bar": False}, True) is not None
    mine = tmp_path / "mine.resume"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not an llmrec resume state"):
        prepare_resume(tmp_path / "mine", "toy", {"seed": 0}, False)


# ------------------------------------------------------------------------------------------ real stages, killed
@pytest.fixture(scope="module")
def stage_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    tiny_dataset(n_users=36, n_items=24, seq_len=8, n_candidates=6).save(root / "data")
    return root


def _kill_after_first_state(args: list[str], out: Path, sig: int = signal.SIGKILL, timeout: float = 240.0) -> None:
    """Run `python -m llmrec ARGS` and send it `sig` (SIGKILL, or SIGINT as Ctrl-C does) as soon as its first
    resume state is complete."""
    # the killed run computes with as many torch threads as the in-process runs it is compared with (another count
    # rounds float sums differently: equal metrics, weights a few ulps apart)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    # a process started in the background inherits SIGINT ignored, and Python then never raises KeyboardInterrupt:
    # restore the default disposition so Ctrl-C reaches the child as it would from a terminal
    proc = subprocess.Popen([sys.executable, "-m", "llmrec", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    latest = resume_folder(out) / LATEST
    deadline = time.monotonic() + timeout
    try:
        while not latest.exists():
            if proc.poll() is not None:
                raise AssertionError(f"llmrec {args[0]} ended (code {proc.returncode}) before its first resume "
                                     f"state: {proc.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, f"no resume state after {timeout}s"
            time.sleep(0.02)
        proc.send_signal(sig)
    finally:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # never hang the suite: a run that ignored the signal is a failure
            proc.kill()
            proc.wait()
        proc.stderr.close()
    # Ctrl-C: Lightning stops gracefully and exits with 1
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 1), \
        f"the run ended with {proc.returncode}, not by the signal: give it more steps"
    # nothing a later stage could take for a finished output; the state survives beside it
    assert not out.exists() or read_output_marker(out) is None
    assert latest.exists()


def _timeless(value):
    """`value` without its wall-clock entries (`*seconds*`), which no two runs share."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if "seconds" not in k}
    return value


def _same_metrics(full: Path, resumed: Path, keys: list[str]) -> None:
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((resumed / "metrics.json").read_text())
    for key in keys:
        assert _timeless(b[key]) == _timeless(a[key]), key


def _kill_resume_compare(command: list[str], root: Path, name: str, keys: list[str]) -> None:
    full, resumed = root / f"{name}-full", root / f"{name}-resumed"
    assert main([*command, "--out", str(full)]) == 0
    assert not resume_folder(full).exists()  # a finished run removes its state
    _kill_after_first_state([*command, "--out", str(resumed)], resumed)
    # the training seconds before the stop are kept in the state; as if the killed process had trained 1,000 s,
    # the resumed run must report those plus its own
    state = resume_folder(resumed) / json.loads((resume_folder(resumed) / LATEST).read_text())["state"]
    facts = json.loads((state / "state.json").read_text())
    assert facts["train_seconds"] > 0
    (state / "state.json").write_text(json.dumps({**facts, "train_seconds": 1000.0}))
    started = time.monotonic()
    assert main([*command, "--out", str(resumed), "--resume"]) == 0
    assert 1000.0 < json.loads((resumed / "metrics.json").read_text())["train_seconds"] < \
        1000.0 + time.monotonic() - started
    assert not resume_folder(resumed).exists()
    _same_metrics(full, resumed, keys)


def test_train_encoder_killed_and_resumed_ends_like_an_uninterrupted_run(stage_data):
    command = ["train-encoder", "--data", str(stage_data / "data"), "--model", "sasrec", "--hidden-size", "8",
               "--num-layers", "1", "--num-heads", "1", "--max-length", "10", "--dropout", "0.3", "--batch-size", "2",
               "--max-epochs", "6", "--patience", "2", "--device", "cpu", "--no-progress-bar", "--resume-every", "3"]
    _kill_resume_compare(command, stage_data, "enc", ["valid", "test", "best_epoch", "epochs"])
    a = load_file(str(stage_data / "enc-full" / "encoder.safetensors"))
    b = load_file(str(stage_data / "enc-resumed" / "encoder.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


LLM_OPTIONS = ["--batch-size", "2", "--eval-batch-size", "4", "--max-valid-samples", "4", "--max-test-samples", "6",
               "--val-check-interval", "0.5", "--device", "cpu", "--no-progress-bar", "--resume-every", "2"]
LLM_KEYS = ["valid/hr@1", "best_step", "valid/history", "test/hr@1", "test/candidates/ndcg@5"]


@pytest.fixture(scope="module")
def sft(stage_data):
    # hybrid prompts with the linear curriculum: the module's coin decides text or hybrid per batch
    saved_encoder(ProcessedDataset.load(stage_data / "data"), stage_data / "enc")
    command = ["train-llm", "--data", str(stage_data / "data"), "--encoder", str(stage_data / "enc"), "--epochs", "2",
               "--max-train-samples", "24", "--lr", "3e-3", "--cache-dir", str(stage_data / "cache"),
               *flags(TINY_LLAMA), *LLM_OPTIONS]
    _kill_resume_compare(command, stage_data, "sft", LLM_KEYS)
    return stage_data / "sft-full"


def test_train_llm_killed_and_resumed_ends_like_an_uninterrupted_run(sft):
    assert (sft / "metrics.json").exists()


def test_train_sdpo_killed_and_resumed_ends_like_an_uninterrupted_run(sft, stage_data):
    command = ["train-sdpo", "--sft", str(sft), "--data", str(stage_data / "data"), "--loss", "beta-sdpo",
               "--negatives", "2", "--epochs", "2", "--max-train-samples", "16", "--lr", "1e-3",
               *LLM_OPTIONS]
    _kill_resume_compare(command, stage_data, "sdpo", LLM_KEYS)


def test_resume_of_another_config_is_one_line(stage_data, tmp_path, capsys):
    out = tmp_path / "enc"
    command = ["train-encoder", "--data", str(stage_data / "data"), "--model", "sasrec", "--hidden-size", "8",
               "--num-layers", "1", "--num-heads", "1", "--max-length", "10", "--batch-size", "2", "--max-epochs",
               "1000", "--patience", "1000", "--device", "cpu", "--no-progress-bar", "--resume-every", "2"]
    # 1000 epochs: the run must still be training when Ctrl-C arrives (it is stopped right after its first state)
    assert main([*command, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no saved training state" in err[0]
    _kill_after_first_state([*command, "--out", str(out)], out, sig=signal.SIGINT)
    assert main([*command, "--lr", "0.01", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--lr 0.001 -> 0.01" in err[0]
    shutil.rmtree(resume_folder(out))
