"""`llmrec serve --config FILE.yaml` accepts every option `llmrec serve --help` lists, `threads` included (issue 20,
defect 8): each option of `ServeConfig` is walked through a YAML file, under its dashed and its underscored name."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
import yaml

from llmrec.base.config import _unwrap_optional, option_range, resolve_config
from llmrec.commands.cli import CommonOptions, build_parser
from llmrec.serving.serve import ServeConfig


def other_value(field: dataclasses.Field, tp: Any, tmp_path: Path) -> Any:
    """A valid value of `field` that is not its default (so reading it from the file is visible)."""
    inner, _ = _unwrap_optional(tp)
    default, spec = field.default, option_range(field)
    if get_origin(inner) is Literal:
        return next(c for c in get_args(inner) if c != default)
    if inner is bool:
        return not default
    if inner is Path:
        return str(tmp_path / f"{field.name}-dir")
    if inner is str:
        return f"{field.name}-value"
    if inner in (int, float):
        low = spec.min if spec.min is not None else 0
        value = (default if default is not None else low) + (2 if inner is int else 1.5)
        assert spec.accepts(value), (field.name, value)
        return inner(value)
    raise AssertionError(f"ServeConfig.{field.name}: no test value for type {tp}")


def test_every_option_of_serve_help_is_a_key_of_its_config_file(tmp_path):
    parser = build_parser("serve")
    sub = parser.get_default("subparsers")["serve"]
    flags = {a.dest for a in sub._actions if a.option_strings and a.dest not in ("help", "config")}
    hints = typing.get_type_hints(ServeConfig)
    fields = dataclasses.fields(ServeConfig)
    assert flags == {f.name for f in fields} and "threads" in flags  # --help lists exactly the file's options

    values = {f.name: other_value(f, hints[f.name], tmp_path) for f in fields}
    keyed = {(name.replace("_", "-") if i % 2 else name): v for i, (name, v) in enumerate(values.items())}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(keyed))
    args, unknown = parser.parse_known_args(["serve", "--config", str(path)])
    assert not unknown
    config = resolve_config(ServeConfig, args, args.config)
    for name, value in values.items():
        got = getattr(config, name)
        assert (str(got) if isinstance(got, Path) else got) == value, name
    assert config.threads == values["threads"]

    args = parser.parse_args(["serve", "--config", str(path), "--threads", "3"])  # the flag wins over the file
    assert resolve_config(ServeConfig, args, args.config).threads == 3
    assert resolve_config(CommonOptions, args).threads == 3  # and `llmrec` sets it for every command alike


def test_a_bad_threads_value_in_the_file_names_the_file_and_key(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("threads: 0\n")
    args = build_parser("serve").parse_args(["serve", "--config", str(path)])
    with pytest.raises(Exception, match=rf"config file {path}: option 'threads': got 0, expected an integer in"):
        resolve_config(ServeConfig, args, args.config)


def test_other_commands_keep_threads_as_their_common_flag():
    sub = build_parser("predict").get_default("subparsers")["predict"]
    assert "--threads" in sub.format_help()
