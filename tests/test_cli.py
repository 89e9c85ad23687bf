"""The `llmrec` entry point: subcommand dispatch, --config handling, and clear errors with exit status 2."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmrec.commands import cli
from llmrec.base.config import option
from llmrec.base.errors import DataError


@dataclass
class EchoConfig:
    name: str = option("world", "who to greet")
    fail: bool = option(False, "raise a user error")


def run_echo(config: EchoConfig) -> int:
    if config.fail:
        raise DataError(f"file {config.name}.csv line 3: expected 3 columns, got 2")
    print(f"hello {config.name}")
    return 0


@pytest.fixture()
def echo_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.COMMANDS, "echo", cli.Command(lambda: cli.Stage(EchoConfig, run_echo), "say hello"))


def test_dispatch_with_flags_and_config(echo_command: None, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["echo", "--name", "ada"]) == 0
    assert "hello ada" in capsys.readouterr().out
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: grace\n")
    assert cli.main(["echo", "--config", str(cfg)]) == 0
    assert "hello grace" in capsys.readouterr().out


def test_user_error_is_one_line_and_exit_2(echo_command: None, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["echo", "--fail", "--name", "ratings"]) == 2
    err = capsys.readouterr().err
    assert "llmrec echo: error: file ratings.csv line 3: expected 3 columns, got 2" in err
    assert "Traceback" not in err


def test_bad_config_file_exit_2(echo_command: None, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("nmae: x\n")
    assert cli.main(["echo", "--config", str(cfg)]) == 2
    assert "unknown option 'nmae'" in capsys.readouterr().err


def test_every_registered_command_loads_its_config_class_and_run_function() -> None:
    """Each command in the table reaches a real config dataclass and run function, both in the stage's module."""
    import dataclasses
    import inspect

    for name, cmd in cli.COMMANDS.items():
        stage = cmd.load()
        assert dataclasses.is_dataclass(stage.config) and callable(stage.run), name
        assert stage.config.__module__ == stage.run.__module__ and stage.run.__module__.startswith("llmrec."), name
        assert list(inspect.signature(stage.run).parameters) == ["config"], name
        source = inspect.getsource(cmd.load)  # a plain import tools can follow, not a name looked up at run time
        assert f"import {stage.config.__name__}, {stage.run.__name__}" in source, name


def test_help_and_prepare_do_not_import_the_stages() -> None:
    """`llmrec --help` imports no stage module (and no torch); `prepare`'s parser imports only its own."""
    code = ("import sys; from llmrec.commands.cli import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.endswith('.train'))); "
            "build_parser('prepare'); print('torch' in sys.modules, 'llmrec.data.prepare' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "False True"


def test_python_m_llmrec_help() -> None:
    out = subprocess.run([sys.executable, "-m", "llmrec", "--help"], capture_output=True, text=True, check=True)
    assert "usage: llmrec" in out.stdout
