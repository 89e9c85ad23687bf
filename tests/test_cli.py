"""The `llmrec` entry point: subcommand dispatch, --config handling, and clear errors with exit status 2."""

from __future__ import annotations

import subprocess
import sys
import types
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
    module = types.ModuleType("llmrec_test_echo")
    module.EchoConfig, module.run_echo = EchoConfig, run_echo  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "llmrec_test_echo", module)
    monkeypatch.setitem(cli.COMMANDS, "echo", cli.Command("llmrec_test_echo", "EchoConfig", "run_echo", "say hello"))


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


def test_every_registered_command_module_exists() -> None:
    """Each command in the registry points at a real config class and run function."""
    import importlib

    for name, cmd in cli.COMMANDS.items():
        module = importlib.import_module(cmd.module)
        assert hasattr(module, cmd.config), f"{name}: {cmd.module} lacks {cmd.config}"
        assert callable(getattr(module, cmd.run)), f"{name}: {cmd.module}.{cmd.run} is not callable"


def test_python_m_llmrec_help() -> None:
    out = subprocess.run([sys.executable, "-m", "llmrec", "--help"], capture_output=True, text=True, check=True)
    assert "usage: llmrec" in out.stdout
