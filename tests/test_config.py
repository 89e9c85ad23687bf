"""Typed configs: defaults < YAML file < flags, with errors that name the file and the field."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import yaml

from llmrec.base.config import add_options, load_config, option, resolve_config, save_config
from llmrec.base.errors import ConfigError


@dataclass
class ToyConfig:
    data: Path = option(Path("data/x"), "input folder")
    model: Literal["sasrec", "gru4rec"] = option("sasrec", "which model")
    hidden_size: int = option(64, "width")
    dropout: float = option(0.2, "dropout")
    bf16: bool = option(False, "half precision")
    seed: int | None = option(None, "seed")
    layers: list[int] = option(factory=lambda: [1, 2], help="sizes")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_options(p, ToyConfig)
    return p.parse_args(argv)


def test_defaults_then_file_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("hidden-size: 128\nmodel: gru4rec\ndropout: 0.5\n")
    args = parse(["--config", str(f), "--hidden-size", "32", "--bf16"])
    cfg = resolve_config(ToyConfig, args, args.config)
    assert cfg == ToyConfig(model="gru4rec", hidden_size=32, dropout=0.5, bf16=True)


def test_flags_use_dashes_and_lists() -> None:
    cfg = resolve_config(ToyConfig, parse(["--layers", "3", "4", "--seed", "7", "--no-bf16"]))
    assert cfg.layers == [3, 4] and cfg.seed == 7 and cfg.bf16 is False


def test_unknown_key_in_file_names_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("hiden-size: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*unknown option 'hiden-size'.*hidden-size"):
        resolve_config(ToyConfig, {}, f)


def test_wrong_type_in_file_names_field(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("hidden_size: wide\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'hidden-size'.*expected an integer"):
        resolve_config(ToyConfig, {}, f)


def test_bad_literal_and_yaml_syntax(tmp_path: Path) -> None:
    f = tmp_path / "lit.yaml"
    f.write_text("model: bert\n")
    with pytest.raises(ConfigError, match="expected one of sasrec, gru4rec"):
        resolve_config(ToyConfig, {}, f)
    g = tmp_path / "syntax.yaml"
    g.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(ConfigError, match=r"syntax\.yaml line \d+: not valid YAML"):
        resolve_config(ToyConfig, {}, g)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(ToyConfig, {}, tmp_path / "missing.yaml")


def test_cli_rejects_bad_choice() -> None:
    with pytest.raises(SystemExit):
        parse(["--model", "bert"])


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    cfg = ToyConfig(hidden_size=16, seed=3, layers=[5])
    path = save_config(cfg, tmp_path / "run", extra={"versions": {"torch": "x"}})
    assert yaml.safe_load(path.read_text())["data"] == "data/x"
    assert load_config(ToyConfig, path, ignore_unknown=True) == cfg
    with pytest.raises(ConfigError, match="unknown option 'versions'"):
        load_config(ToyConfig, path)


@dataclass
class NeedsData:
    data: Path = option(help="required input")
    seed: int = option(0, "seed")


def test_missing_required_option_is_named() -> None:
    with pytest.raises(ConfigError, match="missing required option.*--data"):
        resolve_config(NeedsData, {"seed": 1})
    assert resolve_config(NeedsData, {"data": "x"}).data == Path("x")


@dataclass
class Ranged:
    lr: float = option(1e-3, "learning rate", min=0, min_exclusive=True)
    p: float = option(0.5, "a probability", min=0, max=1)
    dropout: float = option(0.1, "dropout", min=0, max=1, max_exclusive=True)
    steps: int = option(-1, "steps", min=1, also=(-1,))
    n: int | None = option(None, "a count", min=1)
    scale: float = option(1.0, "any number, even inf", finite=False)
    plain: float = option(0.0, "no declared range: still finite")
    sizes: list[int] = option(factory=lambda: [1], help="sizes", min=1)
    stages: list[str] = option(factory=lambda: ["a"], help="stages", choices=("a", "b"))


@pytest.mark.parametrize(("values", "message"), [
    ({"lr": 0.0}, "option --lr: got 0.0, expected a finite number > 0"),
    ({"lr": float("nan")}, "option --lr: got nan, expected a finite number > 0"),
    ({"p": 1.5}, "option --p: got 1.5, expected a finite number in [0, 1]"),
    ({"dropout": 1.0}, "option --dropout: got 1.0, expected a finite number in [0, 1)"),
    ({"steps": 0}, "option --steps: got 0, expected an integer >= 1, or -1"),
    ({"n": 0}, "option --n: got 0, expected an integer >= 1"),
    ({"plain": float("-inf")}, "option --plain: got -inf, expected a finite number"),
    ({"sizes": [3, 0]}, "option --sizes[1]: got 0, expected an integer >= 1"),
    ({"stages": ["a", "c"]}, "option --stages[1]: got 'c', expected one of a, b"),
])
def test_declared_ranges_refuse_with_one_line(values, message):
    with pytest.raises(ConfigError) as e:
        resolve_config(Ranged, values)
    assert str(e.value) == message


def test_values_inside_the_range_and_declared_extras_are_accepted(tmp_path):
    cfg = resolve_config(Ranged, {"lr": 1e-9, "p": 1, "dropout": 0.0, "steps": -1, "n": None,
                                  "scale": float("inf"), "sizes": [1, 2], "stages": ["b"]})
    assert (cfg.lr, cfg.p, cfg.steps, cfg.n, cfg.scale, cfg.stages) == (1e-9, 1.0, -1, None, float("inf"), ["b"])
    f = tmp_path / "r.yaml"
    f.write_text("p: 2\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: option 'p': got 2.0, expected a finite number in \[0, 1\]"):
        resolve_config(Ranged, {}, f)


def test_flags_and_yaml_go_through_the_same_check(tmp_path):
    p = argparse.ArgumentParser()
    add_options(p, Ranged)
    args = p.parse_args(["--lr", "nan"])  # argparse itself accepts 'nan' as a float
    with pytest.raises(ConfigError, match="option --lr: got nan"):
        resolve_config(Ranged, args, args.config)
    help_text = " ".join(p.format_help().split())
    assert "a probability (default: 0.5; a finite number in [0, 1])" in help_text
    assert "steps (default: -1; an integer >= 1, or -1)" in help_text


def test_check_config_covers_the_python_api():
    from llmrec.base.config import check_config

    check_config(Ranged())
    with pytest.raises(ConfigError, match="option --p: got -0.5"):
        check_config(Ranged(p=-0.5))
