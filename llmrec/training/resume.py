"""Resumable training: a periodic, atomic training state beside the output folder, and `--resume` from it.

Every training stage (`train-encoder`, `train-llm`, `train-sdpo`) adds `ResumeCheckpoint` to its Lightning
Trainer. Every `every_n_steps` optimiser steps, and after every validation round, it writes the whole training
state to `<out>.resume/` (`resume_folder(out)`), never inside `<out>` (an output folder exists only once its
command finished, see `llmrec.base.atomic`) and never under the hidden `.<out>.*.tmp` temporaries (the next run's
stale-temporary cleanup removes those). Nothing is pickled:

    <out>.resume/
      .llmrec-resume.json        this project's marker: command and the resolved config the state belongs to
      latest.json                which state folder is the newest COMPLETE one (replaced atomically, last)
      state-<step>/              one save: weights.safetensors (trainable parameters + persistent buffers),
                                 optimizer.safetensors (per-parameter state tensors), tensors.safetensors
                                 (torch's CPU RNG state, the module's generators), state.json (loop counters,
                                 optimiser param groups, LR-scheduler state, numpy/python RNG states, KeepBest's
                                 history and scores, other callbacks' state, the data order), complete.json last
      best-<step>.safetensors    KeepBest's best weights (written only when the best round changes)

A SIGKILL at any moment leaves either the previous complete state or the new one: `latest.json` names a state
folder only after its `complete.json` exists, and older folders are removed only after `latest.json` moved on.

Resuming restores all of it before the first training batch and replays the data order exactly: the train
loader is wrapped (`_ResumableLoader`) so that each epoch's shuffling state (the DataLoader's seeded
`torch.Generator`, or a batch sampler's `epoch` counter) is recorded at the epoch's start, and a resumed epoch
starts from that state and skips the batches already trained on. Lightning's own loop counters come from its
loops' `state_dict()` (plain integers, stored as JSON). On a CPU with a fixed seed the resumed run therefore
trains on the same batches with the same dropout masks, and ends with the same weights and metrics as an
uninterrupted run. Creating a loader's iterator no longer draws from the global torch RNG (that draw only seeds
worker processes, which llmrec does not use), so where an epoch starts does not shift the dropout stream.

Several processes (DDP): every rank takes part in a save (their RNG states and module states differ: each rank
draws dropout masks for its own batches) and rank 0 alone writes it, each other rank's part under `ranks` in
state.json; on `--resume` every rank loads the same state folder and takes back its own part. The config
recorded in the marker holds `devices` and `num_nodes`, so a state is resumed only with the same processes.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file, save_file

from llmrec.base.atomic import atomic_write_text
from llmrec.base.config import config_to_dict
from llmrec.base.errors import CheckpointError
from llmrec.base.markers import MarkerSpec, find_marker, read_marker, write_marker
from llmrec.training.distributed import gather_objects
from llmrec.training.keep_best import KeepBest, load_trainable_state, trainable_state

log = logging.getLogger(__name__)

RESUME_SUFFIX = ".resume"
MARKER = ".llmrec-resume.json"
SPEC = MarkerSpec(kind="llmrec-resume", version=1, what="an llmrec resume state",
                  writer="`llmrec train-encoder`, `train-llm` or `train-sdpo`")
FORMAT, FORMAT_VERSION = SPEC.kind, SPEC.version
LATEST = "latest.json"
LATEST_SPEC = MarkerSpec(kind=None, version=None, what="a resume state's pointer to its newest complete state",
                         writer="llmrec training")
STATE = "state.json"
STATE_SPEC = MarkerSpec(kind=None, version=None, what="a saved training state", writer="llmrec training")
COMPLETE = "complete.json"
_START_OVER = "run without --resume to start training over"
# options that do not change what is trained: a state made with other values of these is still resumable
IGNORED_OPTIONS = ("resume", "resume_every", "progress_bar", "threads", "torch_threads")


def resume_folder(out: str | os.PathLike) -> Path:
    """Where the resume state of output folder `out` lives: its sibling `<out>.resume`."""
    out = Path(out)
    return out.with_name(out.name + RESUME_SUFFIX)


def resume_config(config: Any) -> dict[str, Any]:
    """The resolved config a resume state belongs to (JSON-normalised), without `IGNORED_OPTIONS`."""
    values = {k: v for k, v in config_to_dict(config).items() if k not in IGNORED_OPTIONS}
    return json.loads(json.dumps(values, default=str))


def _is_ours(folder: Path) -> bool:
    return find_marker(folder / MARKER, SPEC) is not None


def _latest_state(folder: Path) -> Path | None:
    """The newest complete state folder of resume folder `folder`, or None."""
    latest = find_marker(folder / LATEST, LATEST_SPEC)
    if latest is None or not isinstance(latest.get("state"), str):
        return None
    state = folder / latest["state"]
    return state if (state / COMPLETE).is_file() else None


def prepare_resume(out: str | os.PathLike, command: str, config: Any, resume: bool) -> Path | None:
    """Check the resume state of `llmrec <command> --out out` before any slow work.

    With `resume`: returns the state folder to resume from, or raises a one-line `CheckpointError` when there is
    none or it was made with another config. Without: returns None (a new run overwrites an old state of this
    command at its first save). Refuses a `<out>.resume` that is not this project's.
    """
    folder = resume_folder(out)
    if folder.exists() and not _is_ours(folder):
        raise CheckpointError(f"{folder} exists and is not an llmrec resume state (no {MARKER}); move it away or "
                              f"choose another --out")
    if not resume:
        if folder.exists() and _latest_state(folder) is not None:
            log.warning("starting over: the saved training state in %s will be replaced (give --resume to continue "
                        "it instead)", folder)
        return None
    state = _latest_state(folder) if folder.exists() else None
    if state is None:
        raise CheckpointError(f"--resume: no saved training state at {folder} (nothing to resume); run without "
                              f"--resume to start training")
    marker = read_marker(folder / MARKER, SPEC, error=CheckpointError, advice=_START_OVER)
    if marker.get("command") != command:
        raise CheckpointError(f"--resume: {folder} is the state of `llmrec {marker.get('command')}`, not "
                              f"`llmrec {command}`; run without --resume or choose another --out")
    saved, now = marker.get("config", {}), resume_config(config)
    differ = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if differ:
        shown = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)!r} -> {now.get(k)!r}" for k in differ[:3])
        raise CheckpointError(f"--resume: the state in {folder} was made with another config ({shown}"
                              f"{' ...' if len(differ) > 3 else ''}); give the same options, or run without "
                              f"--resume to start over")
    return state


def remove_resume_state(out: str | os.PathLike) -> None:
    """Delete the resume state of `out` (a finished run no longer needs it)."""
    folder = resume_folder(out)
    if folder.is_dir() and _is_ours(folder):
        shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------------------ JSON encoding
def _to_json(value: Any) -> Any:
    """Plain JSON of callback / scheduler / optimiser values; small tensors become {"tensor": ..., "dtype": ...}."""
    if isinstance(value, torch.Tensor):
        return {"tensor": value.detach().cpu().tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, np.ndarray):
        return {"ndarray": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, dict):
        return {"dict": [[_to_json(k), _to_json(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"tuple": [_to_json(v) for v in value]}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a resume state")


def _from_json(value: Any) -> Any:
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, dict):
        if "tensor" in value:
            return torch.tensor(value["tensor"], dtype=getattr(torch, value["dtype"]))
        if "ndarray" in value:
            return np.asarray(value["ndarray"], dtype=value["dtype"])
        if "tuple" in value:
            return tuple(_from_json(v) for v in value["tuple"])
        if "dict" in value:
            return {_from_json(k): _from_json(v) for k, v in value["dict"]}
    return value


# ------------------------------------------------------------------------------------------ RNG states
def rng_states() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON part, tensor part) of the python, numpy, torch CPU (and CUDA) global RNG states."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda.{i}"] = s
    return {"python": _to_json(random.getstate()), "numpy": _to_json(np.random.get_state())}, tensors


def set_rng_states(values: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    random.setstate(_from_json(values["python"]))
    np.random.set_state(_from_json(values["numpy"]))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted((k for k in tensors if k.startswith("torch_cuda.")), key=lambda k: int(k.split(".")[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])


# ------------------------------------------------------------------------------------------ optimiser
def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Split `optimizer.state_dict()` into JSON (param groups, scalar entries) and tensors `state.<i>.<key>`."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in sd["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                scalars[f"{index}.{key}"] = _to_json(value)
    return {"param_groups": _to_json(sd["param_groups"]), "scalars": scalars}, tensors


def load_optimizer_state(optimizer: torch.optim.Optimizer, values: dict[str, Any],
                         tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for name, value in values["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = _from_json(value)
    optimizer.load_state_dict({"state": state, "param_groups": _from_json(values["param_groups"])})


# ------------------------------------------------------------------------------------------ data order
def _shuffle_state(loader: Any) -> dict[str, Any]:
    """What decides the order of the next epoch of `loader`: its torch generator and/or a sampler's epoch."""
    state: dict[str, Any] = {}
    generator = getattr(loader, "generator", None)
    if isinstance(generator, torch.Generator):
        state["generator"] = generator.get_state().tolist()
    for name in ("batch_sampler", "sampler"):
        epoch = getattr(getattr(loader, name, None), "epoch", None)
        if isinstance(epoch, int) and not isinstance(epoch, bool):
            state[f"{name}_epoch"] = epoch
    return state


def _set_shuffle_state(loader: Any, state: dict[str, Any]) -> None:
    if "generator" in state:
        loader.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
    for name in ("batch_sampler", "sampler"):
        if f"{name}_epoch" in state:
            getattr(loader, name).epoch = state[f"{name}_epoch"]


class _ResumableLoader:
    """Wraps the train DataLoader: records each epoch's shuffling state, and replays a resumed epoch.

    `resume_at = (shuffle state, k)`: the next epoch starts from that shuffling state and skips its first k
    batches (they are drawn, not trained on, so the order of the rest is unchanged).
    """

    def __init__(self, loader: Any):
        self.loader = loader
        self.epoch_start: dict[str, Any] = _shuffle_state(loader)
        self.resume_at: tuple[dict[str, Any], int] | None = None

    def __len__(self) -> int:
        return len(self.loader)

    # the wrapped loader's samplers, where Lightning's fit loop looks for `set_epoch` (a `DistributedSampler`
    # reshuffles each epoch so)
    @property
    def sampler(self) -> Any:
        return getattr(self.loader, "sampler", None)

    @property
    def batch_sampler(self) -> Any:
        return getattr(self.loader, "batch_sampler", None)

    # Lightning's `_Stateful` protocol: tells its fit loop that this loader resumes mid-epoch by itself (the state
    # lives in the resume folder's state.json, see `ResumeCheckpoint`)
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def __iter__(self) -> Iterator[Any]:
        # a generator: nothing is drawn until the first batch is asked for (Lightning calls `iter()` once just to
        # check that a loader is iterable)
        skip = 0
        if self.resume_at is not None:
            state, skip = self.resume_at
            _set_shuffle_state(self.loader, state)
            self.resume_at = None
        self.epoch_start = _shuffle_state(self.loader)
        with torch.random.fork_rng(devices=[]):  # the iterator's worker base seed must not move the global RNG
            iterator = iter(self.loader)
            for _ in range(skip):
                next(iterator)
        yield from iterator


# ------------------------------------------------------------------------------------------ callback
class ResumeCheckpoint(pl.Callback):
    """Save the training state to `folder` every `every_n_steps` steps and after each validation; resume from
    `resume_from` (a state folder given by `prepare_resume`) when set.

    `command` and `config` are recorded in the folder's marker (a later `--resume` compares them). Stateful
    callbacks of the trainer (e.g. `EarlyStopping`) are saved through their `state_dict()`; KeepBest's scores,
    history and best weights explicitly. A LightningModule may add its own state by defining
    `resume_state() -> (json dict, tensor dict)` and `load_resume_state(json dict, tensor dict)`.
    """

    def __init__(self, folder: str | os.PathLike, command: str, config: dict[str, Any], every_n_steps: int = 50,
                 resume_from: Path | None = None):
        self.folder, self.command, self.config = Path(folder), command, config
        self.every_n_steps, self.resume_from = max(int(every_n_steps), 1), resume_from
        self.saves = 0
        self.save_seconds = 0.0
        self._loader: _ResumableLoader | None = None
        self._loop_after_batch: dict[str, Any] | None = None
        self._pending_rng: tuple[dict[str, Any], dict[str, torch.Tensor]] | None = None
        self._best_file: str | None = None
        self._best_step: int | None = None
        self._original_train_dataloader: Any = None
        self._resume_data: tuple[dict[str, Any], int] | None = None
        self._batch_idx = -1
        self._state_json: dict[str, Any] | None = None
        # training seconds before this process: those recorded in the state resumed from (0 for a fresh run, or a
        # state written before they were recorded), so that a run stopped and resumed reports its whole training
        # time, not its last process's; the work redone after a stop is not counted twice
        self.seconds_before = 0.0
        self._train_started: float | None = None

    # ---------------------------------------------------------------- wiring the train loader
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if stage != "fit" or datamodule is None or self._original_train_dataloader is not None:
            return
        original = datamodule.train_dataloader
        self._original_train_dataloader = original
        if self.resume_from is not None:
            # the train loader may be made before on_fit_start (`estimated_stepping_batches` in
            # configure_optimizers): it must know where the resumed epoch starts as soon as it exists
            data = self._saved_state()["data"]
            self._resume_data = (data["shuffle"], int(data["skip"]))

        def train_dataloader() -> _ResumableLoader:
            self._loader = _ResumableLoader(original())
            # a resumed epoch replays from its start state, skipping the batches already trained on
            self._loader.resume_at, self._resume_data = self._resume_data, None
            return self._loader

        datamodule.train_dataloader = train_dataloader  # this datamodule instance only, undone in teardown

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._original_train_dataloader is not None and trainer.datamodule is not None:
            del trainer.datamodule.train_dataloader  # the class's method again
            self._original_train_dataloader = None

    # ---------------------------------------------------------------- restore
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.resume_from is None:
            return
        state = self.resume_from
        facts = self._saved_state()
        load_trainable_state(pl_module, load_file(str(state / "weights.safetensors")))
        optimizers = trainer.optimizers
        for i, optimizer in enumerate(optimizers):
            load_optimizer_state(optimizer, facts["optimizers"][i], _prefixed(
                load_file(str(state / "optimizer.safetensors")), f"{i}."))
        for config, saved in zip(trainer.lr_scheduler_configs, facts["schedulers"], strict=True):
            config.scheduler.load_state_dict(_from_json(saved))
        trainer.fit_loop.load_state_dict(facts["fit_loop"])
        tensors = load_file(str(state / "tensors.safetensors"))
        for callback in trainer.callbacks:
            if isinstance(callback, KeepBest):
                _load_keep_best(callback, facts["keep_best"], self.folder)
            elif callback is not self and type(callback).__qualname__ in facts["callbacks"]:
                callback.load_state_dict(_from_json(facts["callbacks"][type(callback).__qualname__]))
        rng = (facts["rng"], _prefixed(tensors, "rng."))
        module = (facts["module"], _prefixed(tensors, "module."))
        if trainer.global_rank > 0:  # this rank's own RNG and module state (saved by rank 0 for it)
            own = facts["ranks"][trainer.global_rank - 1]
            rng = (own["rng"], _from_json(own["rng_tensors"]))
            module = (own["module"], _from_json(own["module_tensors"]))
        if hasattr(pl_module, "load_resume_state"):
            pl_module.load_resume_state(*module)
        self._pending_rng = rng
        self._best_file, self._best_step = facts["keep_best"].get("best_file"), facts["keep_best"]["best_step"]
        self.seconds_before = float(facts.get("train_seconds", 0.0))
        for callback in trainer.callbacks:
            if isinstance(callback, KeepBest):  # a best round found after the resume counts from the run's start
                callback.seconds_before = self.seconds_before
        trainer.should_stop = bool(facts["should_stop"])  # e.g. early stopping decided at the saved validation
        log.info("resuming from %s: epoch %d, step %d", state, facts["epoch"], facts["global_step"])

    def _saved_state(self) -> dict[str, Any]:
        """The `state.json` of the state resumed from, read once (the train loader and the restore both use it)."""
        if self._state_json is None:
            assert self.resume_from is not None
            self._state_json = read_marker(self.resume_from / STATE, STATE_SPEC, error=CheckpointError,
                                           advice=_START_OVER)
        return self._state_json

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # from the first training batch on, as KeepBest: a stage's work at the fit's start is not training time
        self._train_started = time.perf_counter()

    def train_seconds(self) -> float:
        """Seconds of training so far, the processes before a resume included (`seconds_before`)."""
        now = time.perf_counter()
        return self.seconds_before + (now - self._train_started if self._train_started is not None else 0.0)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._pending_rng is not None:  # after every loader iterator is made: the global RNGs as saved
            set_rng_states(*self._pending_rng)
            self._pending_rng = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.saves:
            log.info("resume state: %d save(s) to %s, %.2fs in all", self.saves, self.folder, self.save_seconds)

    # ---------------------------------------------------------------- save
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._loop_after_batch = trainer.fit_loop.state_dict()  # plain integers; Lightning's own restart point
        self._batch_idx = batch_idx
        loop = trainer.fit_loop.epoch_loop
        validates = loop._should_check_val_fx(trainer.fit_loop._data_fetcher)
        if not validates and trainer.global_step % self.every_n_steps == 0:
            self.save(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a validation round inside fit (not the final `trainer.validate`): KeepBest and EarlyStopping, earlier in
        # the callback list, have recorded it, so a resumed run does not repeat it
        if not trainer.sanity_checking and trainer.state.fn == "fit" and self._loop_after_batch is not None:
            self.save(trainer, pl_module)

    def save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the state as of the end of the last training batch (and its validation, if one ran)."""
        started = time.perf_counter()
        assert self._loop_after_batch is not None and self._loader is not None
        rng_values, rng_tensors = rng_states()
        module_values, module_tensors = ({}, {})
        if hasattr(pl_module, "resume_state"):
            module_values, module_tensors = pl_module.resume_state()
        # every rank's own part (a collective: all ranks save at the same steps); rank 0 writes them all
        parts = gather_objects(trainer, {"rng": rng_values, "rng_tensors": _to_json(rng_tensors),
                                         "module": module_values, "module_tensors": _to_json(module_tensors)})
        if trainer.global_rank != 0:
            return
        self._write_marker()
        step = int(trainer.global_step)
        name = f"state-{step:09d}-{self.saves:05d}"
        tmp = self.folder / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(_contiguous(trainable_state(pl_module)), str(tmp / "weights.safetensors"))
        optimizers, optimizer_tensors = [], {}
        for i, optimizer in enumerate(trainer.optimizers):
            values, tensors = optimizer_state(optimizer)
            optimizers.append(values)
            optimizer_tensors.update({f"{i}.{k}": v for k, v in tensors.items()})
        save_file(optimizer_tensors, str(tmp / "optimizer.safetensors"))
        tensors = {**{f"rng.{k}": v for k, v in rng_tensors.items()},
                   **{f"module.{k}": v for k, v in module_tensors.items()}}
        save_file(_contiguous(tensors), str(tmp / "tensors.safetensors"))
        last_of_epoch = self._batch_idx + 1 >= trainer.num_training_batches
        facts = {
            "global_step": step, "epoch": int(trainer.current_epoch), "batch_idx": int(self._batch_idx),
            "train_seconds": self.train_seconds(),
            "should_stop": bool(trainer.should_stop),
            "fit_loop": self._loop_after_batch,
            # the epoch after the last batch starts from the loader's current state; a mid-epoch resume replays
            # this epoch from its start state and skips the batches done
            "data": {"shuffle": _shuffle_state(self._loader.loader) if last_of_epoch else self._loader.epoch_start,
                     "skip": 0 if last_of_epoch else self._batch_idx + 1},
            "optimizers": optimizers,
            "schedulers": [_to_json(c.scheduler.state_dict()) for c in trainer.lr_scheduler_configs],
            "rng": rng_values, "module": module_values,
            "ranks": parts[1:],  # the other ranks' RNG and module states (DDP), by rank
            "keep_best": self._keep_best_state(trainer),
            "callbacks": {type(c).__qualname__: _to_json(c.state_dict()) for c in trainer.callbacks
                          if c is not self and not isinstance(c, KeepBest) and c.state_dict()},
        }
        (tmp / STATE).write_text(json.dumps(facts) + "\n", encoding="utf-8")
        (tmp / COMPLETE).write_text(json.dumps({"global_step": step}) + "\n", encoding="utf-8")
        os.replace(tmp, self.folder / name)
        atomic_write_text(self.folder / LATEST, json.dumps({"state": name, "global_step": step}) + "\n")
        self.saves += 1
        self._clean(keep={name, facts["keep_best"].get("best_file")})
        self.save_seconds += time.perf_counter() - started

    # ---------------------------------------------------------------- helpers
    def _write_marker(self) -> None:
        marker = self.folder / MARKER
        if marker.exists():
            return
        if self.folder.exists() and not _is_ours(self.folder):
            raise CheckpointError(f"{self.folder} exists and is not an llmrec resume state; not writing into it")
        if self.folder.exists() and self.resume_from is None:
            shutil.rmtree(self.folder)  # a new run: the previous run's state is of no use any more
        self.folder.mkdir(parents=True, exist_ok=True)
        write_marker(marker, SPEC, {"command": self.command, "config": self.config}, indent=1)

    def _keep_best_state(self, trainer: pl.Trainer) -> dict[str, Any]:
        keep_best = next((c for c in trainer.callbacks if isinstance(c, KeepBest)), None)
        if keep_best is None:
            return {"best_step": None}
        if keep_best.best_state is not None and (self._best_file is None or keep_best.best_step != self._best_step
                                                 or not (self.folder / self._best_file).exists()):
            self._best_file = f"best-{keep_best.best_step:09d}-{self.saves:05d}.safetensors"
            save_file(_contiguous(keep_best.best_state), str(self.folder / f".{self._best_file}.tmp"))
            os.replace(self.folder / f".{self._best_file}.tmp", self.folder / self._best_file)
            self._best_step = keep_best.best_step
        return {"best_score": _to_json(keep_best.best_score), "best_step": keep_best.best_step,
                "best_epoch": keep_best.best_epoch, "best_metrics": keep_best.best_metrics,
                "seconds_to_best": keep_best.seconds_to_best, "history": keep_best.history,
                "batches_since_validation": keep_best.batches_since_validation,
                "best_file": self._best_file if keep_best.best_state is not None else None}

    def _clean(self, keep: set[str | None]) -> None:
        for child in self.folder.iterdir():
            if child.name in keep or child.name in (MARKER, LATEST):
                continue
            if child.name.startswith(("state-", "best-", ".state-", ".best-")):
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)


def _load_keep_best(keep_best: KeepBest, saved: dict[str, Any], folder: Path) -> None:
    if saved.get("best_step") is None:
        return
    keep_best.best_score = float(saved["best_score"])
    keep_best.best_step, keep_best.best_epoch = int(saved["best_step"]), int(saved["best_epoch"])
    keep_best.best_metrics = dict(saved["best_metrics"])
    keep_best.seconds_to_best = float(saved["seconds_to_best"])
    keep_best.history = list(saved["history"])
    keep_best.batches_since_validation = int(saved["batches_since_validation"])
    keep_best.best_state = load_file(str(folder / saved["best_file"])) if saved.get("best_file") else None


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
