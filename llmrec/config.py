"""Typed run configurations: a dataclass per command, filled from defaults < YAML file < command-line flags.

Each command's configuration is a `@dataclass` whose fields are declared with `option(default, help)`.
`add_options` turns the fields into `--dashed-flags` (the names DESIGN.md uses), `resolve_config` merges a
`--config FILE.yaml` (keys may use dashes or underscores) and the flags actually given, validates every
value against the field's type and names the file and field at fault, and `save_config` writes the resolved
configuration as `config.yaml` into each output folder so that every result can be reproduced.

Why not jsonargparse: it only accepts `--snake_case` flags; the CLI documented in the issues and DESIGN.md
uses `--dashed-names`, and its errors do not name the YAML file a bad value came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from llmrec.atomic import atomic_write_text
from llmrec.errors import ConfigError

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with command-line help text."""
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """`X | None` -> (X, True); anything else -> (tp, False)."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one `--flag` per field of dataclass `cls`, plus `--config FILE.yaml`.

    Flags default to `argparse.SUPPRESS` so `resolve_config` can tell what the user set explicitly.
    """
    parser.add_argument("--config", type=Path, default=None, metavar="FILE.yaml",
                        help="YAML file with any of the options below (flags given on the command line win)")
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} (default: {default})" if help_text else f"(default: {default})"
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text, "dest": f.name}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif get_origin(tp) is Literal:
            kwargs["choices"] = list(get_args(tp))
            kwargs["type"] = type(get_args(tp)[0])
        elif get_origin(tp) in (list, tuple):
            kwargs["nargs"] = "+"
            kwargs["type"] = get_args(tp)[0] if get_args(tp) else str
        else:
            kwargs["type"] = str if tp in (Path,) else tp
        parser.add_argument(_flag(f.name), **kwargs)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one value against a field type; raise ConfigError naming `where`."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: must not be empty (expected {getattr(inner, '__name__', inner)})")
    origin = get_origin(inner)
    if origin is Literal:
        choices = get_args(inner)
        if value not in choices:
            raise ConfigError(f"{where}: got {value!r}, expected one of {', '.join(map(str, choices))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: got {value!r}, expected a list")
        item_tp = get_args(inner)[0] if get_args(inner) else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") if item_tp is not Any else v for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if inner is Any:
        return value
    if inner is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: got {value!r}, expected true or false")
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: got {value!r}, expected an integer")
        return value
    if inner is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: got {value!r}, expected a number")
        return float(value)
    if inner is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: got {value!r}, expected a string")
        return value
    if inner is Path:
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"{where}: got {value!r}, expected a path")
        return Path(value)
    if dataclasses.is_dataclass(inner):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: got {value!r}, expected a mapping")
        return _from_mapping(inner, value, where)
    return value


def _validate_mapping(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """Check every key and value of `values` against `cls`'s fields; return them under field names."""
    hints = _field_types(cls)
    out = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in hints:
            known = ", ".join(sorted(n.replace("_", "-") for n in hints))
            raise ConfigError(f"{where}: unknown option {key!r}; known options: {known}")
        out[name] = _coerce(value, hints[name], f"{where}: option {name.replace('_', '-')!r}")
    return out


def _from_mapping(cls: type[T], values: dict[str, Any], where: str) -> T:
    kwargs = _validate_mapping(cls, values, where)
    missing = [f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
               if f.name not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required option(s) {', '.join(_flag(m) for m in missing)}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{where}: {e}") from None
    except ValueError as e:  # a __post_init__ check of the config class
        raise ConfigError(f"{where}: {e}") from None


def load_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; errors name the file (and line, for syntax errors)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of option: value, got {type(data).__name__}")
    return data


def resolve_config(cls: type[T], args: argparse.Namespace | dict[str, Any] | None = None,
                   config_file: Path | None = None) -> T:
    """Build a `cls` from its defaults, then `config_file`, then the explicitly given flags in `args`."""
    file_values: dict[str, Any] = load_yaml_mapping(config_file) if config_file is not None else {}
    where = f"config file {config_file}" if config_file is not None else "configuration"
    values = _validate_mapping(cls, file_values, where)  # validated on its own, so errors name the file
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    hints = _field_types(cls)
    cli_values = {k: _coerce(v, hints[k], f"option {_flag(k)}") for k, v in given.items() if k in hints}
    values.update(cli_values)
    return _from_mapping(cls, values, where)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A YAML-safe dict of a (possibly nested) config dataclass; paths become strings."""
    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        if isinstance(v, dict):
            return {str(k): convert(x) for k, x in v.items()}
        return v
    return convert(config)


def save_config(config: Any, folder: str | os.PathLike, name: str = "config.yaml",
                extra: dict[str, Any] | None = None) -> Path:
    """Write the resolved config (plus `extra` facts such as versions) as YAML into `folder`, atomically."""
    data = config_to_dict(config)
    if extra:
        data = {**data, **extra}
    return atomic_write_text(Path(folder) / name, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def load_config(cls: type[T], path: str | os.PathLike, ignore_unknown: bool = False) -> T:
    """Read a `config.yaml` written by `save_config` back into `cls`."""
    values = load_yaml_mapping(Path(path))
    if ignore_unknown:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        values = {k: v for k, v in values.items() if str(k).replace("-", "_") in names}
    return _from_mapping(cls, values, f"config file {path}")
