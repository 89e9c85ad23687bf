"""Issue 9, classes 5, 6, 9 and 10: option values are refused at parse time from each option's declared range,
with one line and exit status 2; a diverging training run stops with a clear error and leaves no output; flags
must be spelled in full. Property-based: every numeric option of every command either refuses a value with
exit 2 and one line, or accepts it (and the cheap commands then run without a traceback).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import itertools
import math
import typing
from pathlib import Path
from unittest import mock

import pytest
import torch
from data_fixtures import write_grouplens_100k
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmrec.commands import cli
from llmrec.base.config import check_config, option_range, resolve_config, scalar_kind
from llmrec.base.device import lightning_accelerator
from llmrec.encoders.synthetic import synthetic_dataset
from llmrec.encoders.train import TrainEncoderConfig, run_train_encoder
from llmrec.base.errors import ConfigError, TrainingDiverged

COMMANDS = list(cli.COMMANDS)


def config_class(command: str) -> type:
    return cli.COMMANDS[command].load().config


def run_cli(argv: list[str], run=None) -> tuple[int, str, object]:
    """`llmrec ARGV` -> (exit status, stderr, the config the run function got). With `run`, the command's run
    function is replaced (nothing is trained); argparse errors (SystemExit) count as an exit status."""
    err = io.StringIO()
    seen = {}
    patch = contextlib.nullcontext()
    if run is not None:
        stage = cli.COMMANDS[next(a for a in argv if not a.startswith("-"))].load()

        def record(config):
            seen["config"] = config
            return run(config)

        patch = mock.patch.object(importlib.import_module(stage.run.__module__), stage.run.__name__, record)
    threads = torch.get_num_threads()
    # --threads changes process-wide state: keep the test process as it was (inter-op threads can be set
    # only once per process, so that call is recorded, not made)
    interop = mock.patch.object(torch, "set_num_interop_threads", lambda n: seen.setdefault("interop", n))
    with patch, interop, contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as e:
            code = e.code
        finally:
            torch.set_num_threads(threads)
    return code, err.getvalue(), seen.get("config")


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------------------------------ class 5 + 9
ISSUE_EXAMPLES = [
    (["train-encoder", "--lr", "nan"], "option --lr: got nan, expected a finite number > 0"),
    (["train-encoder", "--lr=inf"], "option --lr: got inf, expected a finite number > 0"),
    (["train-encoder", "--lr=-inf"], "option --lr: got -inf, expected a finite number > 0"),
    (["train-encoder", "--weight-decay", "nan"], "option --weight-decay: got nan, expected a finite number >= 0"),
    (["train-encoder", "--batch-size", "0"], "option --batch-size: got 0, expected an integer >= 1"),
    (["train-encoder", "--eval-batch-size", "0"], "option --eval-batch-size: got 0, expected an integer >= 1"),
    (["train-encoder", "--dropout", "1"], "option --dropout: got 1.0, expected a finite number in [0, 1)"),
    (["train-llm", "--lr", "nan"], "option --lr: got nan, expected a finite number > 0"),
    (["train-llm", "--weight-decay", "nan"], "option --weight-decay: got nan, expected a finite number >= 0"),
    (["train-llm", "--epochs", "0"], "option --epochs: got 0, expected an integer >= 1"),
    (["train-llm", "--epochs", "-1"], "option --epochs: got -1, expected an integer >= 1"),
    (["train-llm", "--max-valid-samples", "0"], "option --max-valid-samples: got 0, expected an integer >= 1"),
    (["train-llm", "--max-train-samples", "0"], "option --max-train-samples: got 0, expected an integer >= 1"),
    (["train-llm", "--curriculum-constant", "2.5"],
     "option --curriculum-constant: got 2.5, expected a finite number in [0, 1]"),
    (["train-llm", "--batch-size", "0"], "option --batch-size: got 0, expected an integer >= 1"),
    (["train-llm", "--eval-batch-size", "0"], "option --eval-batch-size: got 0, expected an integer >= 1"),
    (["train-llm", "--tiny-heads", "0"], "option --tiny-heads: got 0, expected an integer >= 1"),
    (["train-llm", "--lora-r", "0"], "option --lora-r: got 0, expected an integer >= 1"),
    (["train-llm", "--val-check-interval", "0"],
     "option --val-check-interval: got 0.0, expected a finite number in (0, 1]"),
    (["train-llm", "--val-check-interval", "1.5"],
     "option --val-check-interval: got 1.5, expected a finite number in (0, 1]"),
    (["train-llm", "--max-steps", "0"], "option --max-steps: got 0, expected an integer >= 1, or -1"),
    (["train-llm", "--precision", "bf17"], "argument --precision: invalid choice: 'bf17'"),
    (["evaluate", "--max-samples", "0"], "option --max-samples: got 0, expected an integer >= 1"),
    (["evaluate", "--max-new-tokens", "0"], "option --max-new-tokens: got 0, expected an integer >= 1"),
    (["evaluate", "--max-new-tokens", "-5"], "option --max-new-tokens: got -5, expected an integer >= 1"),
    (["evaluate", "--batch-size", "0"], "option --batch-size: got 0, expected an integer >= 1"),
    (["prepare", "--candidates", "1"], "option --candidates: got 1, expected an integer >= 2"),
    (["prepare", "--seed", "-1"], "option --seed: got -1, expected an integer in [0, 4294967295]"),
    (["demo", "--llm-test-samples", "0"], "option --llm-test-samples: got 0, expected an integer >= 1"),
    (["demo", "--stages", "prepare", "train"], "argument --stages: invalid choice: 'train'"),
    (["prepare", "--threads", "0"], "option --threads: got 0, expected an integer in [1, 4096]"),
]


@pytest.mark.parametrize(("argv", "message"), ISSUE_EXAMPLES, ids=[" ".join(a) for a, _ in ISSUE_EXAMPLES])
def test_bad_option_values_are_refused_before_anything_runs(argv, message):
    def must_not_run(config):
        raise AssertionError("the run function was called")

    code, err, _ = run_cli(argv, run=must_not_run)
    assert code == 2
    assert message in one_line(err)


def test_yaml_values_are_checked_by_the_same_declaration(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("lr: .nan\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: option 'lr': got nan, expected a finite number > 0"):
        resolve_config(config_class("train-llm"), {}, f)
    f.write_text("curriculum-constant: 2.5\n")
    code, err, _ = run_cli(["train-llm", "--config", str(f)], run=lambda c: 0)
    assert code == 2 and "run.yaml: option 'curriculum-constant': got 2.5, expected a finite number in [0, 1]" \
        in one_line(err)
    f.write_text("max-steps: -1\n")  # the declared extra value (-1 = no limit)
    assert resolve_config(config_class("train-llm"), {}, f).max_steps == -1


def test_python_api_gets_the_same_checks(tmp_path):
    with pytest.raises(ConfigError, match="option --lr: got nan, expected a finite number > 0"):
        run_train_encoder(TrainEncoderConfig(data=tmp_path, out=tmp_path / "o", lr=float("nan")))
    with pytest.raises(ConfigError, match="option --max-new-tokens: got -5"):
        check_config(config_class("evaluate")(max_new_tokens=-5))
    check_config(config_class("evaluate")())
    assert not (tmp_path / "o").exists()


def test_help_shows_the_range(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train-llm", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "hybrid probability of the `constant` schedule (default: 1.0; a finite number in [0, 1])" in text
    assert "(default: -1; an integer >= 1, or -1)" in text
    assert "--threads THREADS" in text


def numeric_fields(cls: type) -> list[tuple[str, type, object]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind = scalar_kind(hints[f.name])
        if kind in (int, float):
            out.append((f.name, kind, option_range(f)))
    return out


def test_every_numeric_option_declares_its_range_and_defaults_are_in_it():
    """One declaration per option: a command added later that forgets a range fails here."""
    for command in COMMANDS + ["<common>"]:
        cls = cli.CommonOptions if command == "<common>" else config_class(command)
        for name, kind, spec in numeric_fields(cls):
            assert spec.declared, f"{command} --{name}: no range declared"
        check_config(cls())  # every default is inside its own range
    # spot-check declarations against hand-written expectations
    spec = {n: s for n, _, s in numeric_fields(config_class("train-llm"))}
    assert spec["curriculum_constant"].accepts(1.0) and not spec["curriculum_constant"].accepts(1.01)
    assert spec["warmup_ratio"].accepts(0.0) and not spec["warmup_ratio"].accepts(-1e-9)
    assert not spec["lr"].accepts(0.0) and spec["lr"].accepts(1e-9) and not spec["lr"].accepts(math.inf)
    assert spec["max_steps"].accepts(-1) and not spec["max_steps"].accepts(-2) and not spec["max_steps"].accepts(0)


def test_device_gpu_without_a_gpu_is_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for command in ("train-encoder", "train-llm", "evaluate"):
        for device in ("cuda", "gpu"):
            code, err, _ = run_cli([command, "--device", device], run=lambda c: 0)
            assert code == 2
            assert f"option --device {device}: no CUDA GPU is available on this machine" in one_line(err)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        lightning_accelerator("cuda")
    assert lightning_accelerator("auto") == "cpu" and lightning_accelerator("cpu") == "cpu"


def test_threads_option_sets_torch_threads():
    def check(config):
        assert torch.get_num_threads() == 1  # set before the run starts
        assert not hasattr(config, "threads")  # not part of the command's (saved) config
        return 0

    code, err, _ = run_cli(["prepare", "--threads", "1"], run=check)
    assert code == 0, err


# ------------------------------------------------------------------------------------------------ class 10
@pytest.mark.parametrize("argv", [["prepare", "--candidate", "5"], ["train-encoder", "--batch", "3"],
                                  ["train-llm", "--lr", "1e-3", "--curriculum-const", "0.5"], ["--verb", "prepare"]])
def test_flags_must_be_spelled_in_full(argv):
    code, err, _ = run_cli(argv, run=lambda c: 0)
    assert code == 2
    line = one_line(err)
    assert "unrecognized arguments" in line or "ambiguous" in line or "invalid choice" in line


def test_parser_errors_are_one_line():
    code, err, _ = run_cli(["train-encoder", "--batch-size", "two"], run=lambda c: 0)
    assert code == 2
    assert one_line(err) == ("llmrec train-encoder: error: argument --batch-size: invalid int value: 'two' "
                             "(see `llmrec train-encoder --help`)")


# ------------------------------------------------------------------------------------------------ class 6
def fit_tiny(guard, nan_loss_at: int | None = None, inf_weight_at: int | None = None, steps: int = 6):
    import pytorch_lightning as pl

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)
            self.unused = torch.nn.Parameter(torch.zeros(3))  # trainable, but outside the loss

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x).squeeze(-1), y)
            if nan_loss_at is not None and self.global_step >= nan_loss_at:
                loss = loss * float("nan")
            if inf_weight_at is not None and self.global_step == inf_weight_at:
                with torch.no_grad():
                    self.unused[1] = float("inf")
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = torch.utils.data.TensorDataset(torch.randn(16, 2), torch.randn(16))
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[guard], accelerator="cpu")
    trainer.fit(Module(), torch.utils.data.DataLoader(data, batch_size=2))
    return trainer


def test_divergence_guard_stops_on_a_nan_loss():
    from llmrec.training.divergence import DivergenceGuard

    with pytest.raises(TrainingDiverged, match=r"at step 3 \(epoch 0\): the training loss is nan; stopped, and "
                                               r"nothing was saved.*lower --lr \(it is 10\)"):
        fit_tiny(DivergenceGuard(hint="lower --lr (it is 10)"), nan_loss_at=2)


def test_divergence_guard_stops_on_a_non_finite_weight():
    from llmrec.training.divergence import DivergenceGuard, non_finite_weights

    with pytest.raises(TrainingDiverged, match=r"the trainable weight\(s\) unused hold nan or inf values"):
        fit_tiny(DivergenceGuard(weights_every=1), inf_weight_at=2)
    # checked only every N steps while training, but always at the end
    with pytest.raises(TrainingDiverged, match=r"at step 4 .*unused"):
        fit_tiny(DivergenceGuard(weights_every=1000), inf_weight_at=2, steps=4)
    layer = torch.nn.Linear(2, 2)
    with torch.no_grad():
        layer.bias[0] = float("nan")
    layer.weight.requires_grad_(False)
    layer.weight.data.fill_(float("inf"))  # frozen weights are not the guard's business
    assert non_finite_weights(layer) == ["bias"]


def test_divergence_guard_lets_a_healthy_run_finish():
    from llmrec.training.divergence import DivergenceGuard

    assert fit_tiny(DivergenceGuard(weights_every=1)).global_step == 6


def test_a_diverging_train_encoder_run_exits_2_and_saves_nothing(tmp_path):
    data = synthetic_dataset(n_users=30, n_items=20, protocol="loo").save(tmp_path / "data")
    out = tmp_path / "enc"
    code, err, _ = run_cli(["train-encoder", "--data", str(data), "--out", str(out), "--hidden-size", "8",
                            "--max-length", "5", "--max-epochs", "3", "--lr", "1e30", "--no-progress-bar"])
    assert code == 2
    line = [x for x in err.splitlines() if "error:" in x]
    assert len(line) == 1 and "training diverged at step" in line[0] and "nothing was saved" in line[0]
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no output, no temporary


# ------------------------------------------------------------------------------------------------ properties
FLOATS = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-12, 0.1, 0.5, 0.999, 1.0, 1.5,
                                    2.5, -0.1, -1.0, 1e30]),
                   st.floats(allow_nan=True, allow_infinity=True, width=32))
INTS = st.one_of(st.integers(-3, 3), st.sampled_from([-1, 0, 1, 2, 7, 2**31, 2**32, 2**32 - 1, -(2**40)]),
                 st.integers())
FIELDS = [(command, name, kind, spec) for command in COMMANDS
          for name, kind, spec in numeric_fields(config_class(command))]
FIELDS += [("prepare", name, kind, spec) for name, kind, spec in numeric_fields(cli.CommonOptions)]


def flag_value(kind: type, value: float) -> str:
    return repr(float(value)) if kind is float else str(int(value))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_numeric_option_is_refused_with_one_line_or_accepted_exactly(data):
    """Over every numeric option of every command (the run function replaced: nothing is trained)."""
    command, name, kind, spec = data.draw(st.sampled_from(FIELDS))
    value = data.draw(FLOATS if kind is float else INTS)
    flag = "--" + name.replace("_", "-")
    code, err, config = run_cli([command, f"{flag}={flag_value(kind, value)}"], run=lambda c: 0)
    if code == 2:
        line = one_line(err)
        assert line.startswith(f"llmrec {command}: error: ") and flag in line
        assert not spec.accepts(float(value) if kind is float else int(value))
    else:
        assert code == 0 and err == ""
        if name != "threads":
            got = getattr(config, name)
            got = got[0] if isinstance(got, list) and len(got) == 1 else got  # a list option given one item
            assert got == (float(value) if kind is float else int(value))
            assert kind is int or math.isfinite(got)  # nan/inf never reach a run


@pytest.fixture(scope="module")
def cheap_inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cheap")
    return {"raw": write_grouplens_100k(root / "raw"),
            "data": synthetic_dataset(n_users=24, n_items=20, protocol="loo").save(root / "data"),
            "root": root}


SMALL_INTS = st.one_of(st.integers(-2, 12), st.sampled_from([40, 41, 200]))
SMALL_FLOATS = st.sampled_from([math.nan, math.inf, -1.0, 0.0, 1e-6, 0.01, 0.3, 0.99, 1.0, 3.0])
RUNS = itertools.count()  # a fresh --out per example
ENCODER_CAPPED = {"max_epochs": 2, "min_epochs": 2, "patience": 3}  # a run stays a second or two


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_prepare_refuses_with_one_line_or_runs(cheap_inputs, data):
    name, kind, _ = data.draw(st.sampled_from(numeric_fields(config_class("prepare"))))
    value = data.draw(SMALL_INTS if kind is int else SMALL_FLOATS)
    out = cheap_inputs["root"] / f"prepared-{next(RUNS)}"
    code, err, _ = run_cli(["prepare", "--raw", str(cheap_inputs["raw"]), "--out", str(out), "--no-download",
                            f"--{name.replace('_', '-')}={flag_value(kind, value)}"])
    if code == 2:
        one_line("\n".join(x for x in err.splitlines() if " INFO " not in x and " WARNING " not in x))
        assert not out.exists()
    else:
        assert code == 0 and (out / "meta.json").is_file()


@pytest.mark.slow
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_train_encoder_refuses_with_one_line_or_runs(cheap_inputs, data):
    """A real (tiny, one- or two-epoch) run for each accepted value: no traceback, whatever the value."""
    model = data.draw(st.sampled_from(["sasrec", "gru4rec", "caser"]))
    name, kind, _ = data.draw(st.sampled_from(numeric_fields(config_class("train-encoder"))))
    if name in ENCODER_CAPPED:
        value = data.draw(st.integers(-1, ENCODER_CAPPED[name]))
    else:
        value = data.draw(SMALL_INTS if kind is int else SMALL_FLOATS)
    out = cheap_inputs["root"] / f"enc-{next(RUNS)}"
    code, err, _ = run_cli(["train-encoder", "--data", str(cheap_inputs["data"]), "--out", str(out),
                            "--model", model, "--hidden-size", "8", "--max-length", "4", "--max-epochs", "1",
                            "--no-progress-bar", f"--{name.replace('_', '-')}={flag_value(kind, value)}"])
    if code == 2:
        errors = [x for x in err.splitlines() if "error:" in x]
        assert len(errors) == 1 and "Traceback" not in err, err
        assert not out.exists()
    else:
        assert code == 0 and (out / "metrics.json").is_file()


def test_out_of_memory_is_one_line_but_a_bug_is_not_hidden():
    def alloc(config):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 68719476736 bytes.\nmore detail")

    code, err, _ = run_cli(["train-encoder", "--hidden-size", "99999999"], run=alloc)
    assert code == 2
    line = one_line(err)
    assert line.startswith("llmrec train-encoder: error: out of memory ([enforce fail") and "--batch-size" in line

    def bug(config):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_cli(["train-encoder"], run=bug)
