"""One trainer for every training stage (llmrec.training.options / trainer): the shared option declarations, the
trainer built from them, and progress reporting that is the same for train-encoder, train-llm and train-sdpo."""

import dataclasses
import logging
from pathlib import Path

import pytest
from pytorch_lightning.callbacks import EarlyStopping, TQDMProgressBar

from llmrec.base.config import option_range
from llmrec.encoders.synthetic import synthetic_dataset
from llmrec.encoders.train import TrainEncoderConfig, run_train_encoder
from llmrec.llm.train import TrainLLMConfig
from llmrec.preference.train import TrainSDPOConfig
from llmrec.training import progress as training_progress
from llmrec.training import trainer as training_trainer
from llmrec.training.divergence import DivergenceGuard
from llmrec.training.keep_best import KeepBest
from llmrec.training.options import TrainerOptions, trainer_option
from llmrec.training.progress import LogProgress
from llmrec.training.trainer import build_trainer

STAGES = [TrainEncoderConfig, TrainLLMConfig, TrainSDPOConfig]
# the stage field that holds each trainer option (the encoder's epochs are its --max-epochs)
NAMES = {TrainEncoderConfig: {"epochs": "max_epochs"}}


def stage_options(cls) -> TrainerOptions:
    config = cls()
    return config.trainer_options(10) if cls is TrainEncoderConfig else TrainerOptions.of(config)


@pytest.mark.parametrize("cls", STAGES, ids=lambda c: c.__name__)
def test_every_stage_declares_its_trainer_options_as_the_shared_declaration(cls):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    declared = [f for f in dataclasses.fields(TrainerOptions) if "help" in f.metadata]
    offered = 0
    for shared in declared:
        name = NAMES.get(cls, {}).get(shared.name, shared.name)
        if name not in fields:
            continue
        offered += 1
        assert option_range(fields[name]) == option_range(shared), name
        assert fields[name].type == shared.type or name == "max_epochs", name
    assert offered >= 6  # device, seed, progress bar, epochs, resume, resume every at least


def test_the_stages_keep_their_own_defaults_and_the_shared_ones():
    enc, sft, sdpo = TrainEncoderConfig(), TrainLLMConfig(), TrainSDPOConfig()
    assert (enc.seed, enc.max_epochs, enc.resume_every) == (42, 200, 500)
    assert (sft.seed, sft.epochs, sft.resume_every) == (0, 4, 50)
    assert (sdpo.seed, sdpo.epochs, sdpo.resume_every) == (0, 3, 50)
    assert enc.progress_bar is sft.progress_bar is sdpo.progress_bar is None  # bar on a terminal, lines elsewhere
    assert enc.device == sft.device == sdpo.device == "auto"


def test_trainer_option_refuses_names_that_are_not_shared_flags():
    with pytest.raises(ValueError, match="trainer_option\\('devicez'\\): not a command-line option"):
        trainer_option("devicez")
    with pytest.raises(ValueError, match="'log_every_n_steps'"):  # a loop option set in code, not a flag
        trainer_option("log_every_n_steps")


def test_options_of_a_config_take_its_fields_and_the_overrides():
    config = TrainLLMConfig(epochs=2, max_steps=7, seed=3, precision="bf16-mixed", progress_bar=False)
    options = TrainerOptions.of(config, log_every_n_steps=4)
    assert (options.epochs, options.max_steps, options.seed, options.precision, options.progress_bar,
            options.log_every_n_steps, options.min_epochs, options.deterministic) == (
        2, 7, 3, "bf16-mixed", False, 4, None, False)
    enc = TrainEncoderConfig(max_epochs=9, min_epochs=2).trainer_options(n_batches=120)
    assert (enc.epochs, enc.min_epochs, enc.log_every_n_steps, enc.deterministic, enc.precision) == (
        9, 2, 50, True, "32-true")


def test_build_trainer_wires_the_shared_callbacks_in_order(tmp_path):
    keep_best, early = KeepBest("valid/x"), EarlyStopping(monitor="valid/x", mode="max")
    options = TrainerOptions(device="cpu", epochs=3, max_steps=5, progress_bar=False, log_every_n_steps=2)
    trainer = build_trainer(options, [keep_best, early], log_dir=tmp_path, what="t")
    ours = [c for c in trainer.callbacks if isinstance(c, (KeepBest, EarlyStopping, DivergenceGuard, LogProgress))]
    assert [type(c) for c in ours] == [KeepBest, EarlyStopping, DivergenceGuard, LogProgress]
    assert (trainer.max_epochs, trainer.max_steps, trainer.log_every_n_steps) == (3, 5, 2)
    assert trainer.num_devices == 1 and not trainer.checkpoint_callback
    assert {Path(lg.log_dir).name for lg in trainer.loggers} >= {"csv"}


@pytest.mark.parametrize("cls", STAGES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("terminal", [True, False])
def test_every_stage_shows_a_bar_on_a_terminal_and_log_lines_elsewhere(cls, terminal, monkeypatch):
    monkeypatch.setattr(training_progress, "interactive", lambda: terminal)
    options = dataclasses.replace(stage_options(cls), device="cpu")
    trainer = build_trainer(options, what="stage")
    bars = [c for c in trainer.callbacks if isinstance(c, TQDMProgressBar)]
    lines = [c for c in trainer.callbacks if isinstance(c, LogProgress)]
    if terminal:
        assert bars and not lines
    else:
        assert not bars and len(lines) == 1 and lines[0].every == 30.0


def test_train_encoder_off_a_terminal_logs_progress_lines(tmp_path, monkeypatch, caplog):
    """The README's promise: off a terminal, a periodic progress line (every 30 s; here every step)."""
    data = synthetic_dataset(n_users=30, n_items=20, protocol="loo").save(tmp_path / "loo")
    monkeypatch.setattr(training_progress, "interactive", lambda: False)
    plain = training_trainer.trainer_progress
    monkeypatch.setattr(training_trainer, "trainer_progress",
                        lambda progress_bar, what: plain(progress_bar, every=0.0, what=what))
    caplog.set_level(logging.INFO, logger="llmrec.progress")
    config = TrainEncoderConfig(data=data, out=tmp_path / "enc", hidden_size=8, max_length=6, batch_size=8,
                                max_epochs=1, device="cpu")
    assert config.progress_bar is None and run_train_encoder(config) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "llmrec.progress"]
    assert lines and all(line.startswith("train-encoder: step ") for line in lines)
    assert "samples/s" in lines[-1] and " left" in lines[-1]
