"""Typed run configurations: a dataclass per command, filled from defaults < YAML file < command-line flags.

Each command's configuration is a `@dataclass` whose fields are declared with `option(default, help, ...)`.
The declaration is the single source of truth for an option: its type, default, help text and the range of
values it accepts (`min`/`max`, `choices`, extra allowed values such as `-1`). `add_options` turns the fields
into `--dashed-flags` (the names docs/design.md uses) whose help shows the range, `resolve_config` merges a
`--config FILE.yaml` (keys may use dashes or underscores) and the flags actually given, and validates every
value against the field's type and range BEFORE anything runs; an error is one line that names the flag (or
the YAML file and key), the value and what was expected:

    option --lr: got nan, expected a finite number > 0

Every float option refuses nan and +-inf unless declared with `finite=False`, so a command never trains on,
or writes, a non-number. `check_config` applies the same checks to a config built in Python (the run
functions call it, since the Python API skips `resolve_config`). Cross-field rules (a hidden size that must
be a multiple of the head count) stay in the run functions. `save_config` writes the resolved configuration
as `config.yaml` into each output folder so that every result can be reproduced.

Why not jsonargparse: it only accepts `--snake_case` flags; the CLI documented in the issues and docs/design.md
uses `--dashed-names`, and its errors do not name the YAML file a bad value came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from llmrec.base.atomic import atomic_write_text
from llmrec.base.errors import ConfigError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric (or string) option accepts; `None` bounds are open.

    `also` lists values accepted outside the bounds (e.g. `-1` = "no limit"); `choices` restricts a string
    option (or each item of a list option) to a fixed set; `finite=False` lets a float option take nan/inf.
    """

    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    finite: bool = True
    also: tuple[Any, ...] = ()
    choices: tuple[Any, ...] | None = None

    @property
    def declared(self) -> bool:
        """True when the declaration says more than the type does (worth showing in --help)."""
        return self.min is not None or self.max is not None or bool(self.also) or self.choices is not None

    def accepts(self, value: Any) -> bool:
        if value in self.also and not (isinstance(value, float) and math.isnan(value)):
            return True
        if self.choices is not None:
            return value in self.choices
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return True
        if isinstance(value, float) and self.finite and not math.isfinite(value):
            return False
        above_min = self.min is None or (value > self.min if self.min_exclusive else value >= self.min)
        below_max = self.max is None or (value < self.max if self.max_exclusive else value <= self.max)
        return above_min and below_max

    def describe(self, kind: Any) -> str:
        """What the option expects, e.g. `a finite number in [0, 1)` or `an integer >= 1, or -1`."""
        if self.choices is not None:
            text = "one of " + ", ".join(map(str, self.choices))
        else:
            text = {int: "an integer", float: "a finite number" if self.finite else "a number"}.get(kind, "a value")
            lo, hi = self.min, self.max
            if lo is not None and hi is not None:
                text += (f" in {'(' if self.min_exclusive else '['}{_fmt(lo)}, {_fmt(hi)}"
                         f"{')' if self.max_exclusive else ']'}")
            elif lo is not None:
                text += f" {'>' if self.min_exclusive else '>='} {_fmt(lo)}"
            elif hi is not None:
                text += f" {'<' if self.max_exclusive else '<='} {_fmt(hi)}"
        if self.also:
            text += ", or " + " or ".join(_fmt(a) for a in self.also)
        return text


def _fmt(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING,
           min: float | None = None, max: float | None = None, min_exclusive: bool = False,
           max_exclusive: bool = False, finite: bool = True, also: Sequence[Any] = (),
           choices: Sequence[Any] | None = None, positional: bool = False) -> Any:
    """A dataclass field with command-line help text and the range of values it accepts.

    `min`/`max` bound a number (inclusive unless `min_exclusive`/`max_exclusive`); `also` adds values accepted
    outside the bounds (`also=(-1,)` for "-1 = no limit"); `choices` restricts a string (or each item of a
    list); floats refuse nan/inf unless `finite=False`. `None` is always accepted by an `X | None` option.
    `positional=True` makes a list option the command's positional arguments (`llmrec report DIR...`); its YAML
    key keeps the field's name.
    """
    spec = Range(min, max, min_exclusive, max_exclusive, finite, tuple(also),
                 tuple(choices) if choices is not None else None)
    metadata = {"help": help, "range": spec, "positional": positional}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def option_range(f: dataclasses.Field) -> Range:
    """The declared `Range` of a field (an empty one for fields not made by `option`)."""
    return f.metadata.get("range") or Range()


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


def scalar_kind(tp: Any) -> Any:
    """The scalar type a range applies to: `int | None` -> int, `list[float]` -> float."""
    inner, _ = _unwrap_optional(tp)
    if get_origin(inner) in (list, tuple):
        args = get_args(inner)
        return args[0] if args else Any
    return inner


def add_options(parser: argparse.ArgumentParser, cls: type, config_flag: bool = True) -> None:
    """Add one `--flag` per field of dataclass `cls`, plus `--config FILE.yaml` (unless `config_flag=False`).

    Flags default to `argparse.SUPPRESS` so `resolve_config` can tell what the user set explicitly. Values
    are range-checked by `resolve_config`, not here, so a flag and a YAML key are checked by the same code.
    """
    if config_flag:
        parser.add_argument("--config", type=Path, default=None, metavar="FILE.yaml",
                            help="YAML file with any of the options below (flags given on the command line win)")
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(hints[f.name])
        spec = option_range(f)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        facts = f"default: {default}"
        if spec.declared and spec.choices is None:
            facts += f"; {spec.describe(scalar_kind(tp))}"
        help_text = f"{help_text} ({facts})" if help_text else f"({facts})"
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text.replace("%", "%%"),
                                  "dest": f.name}
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
        if spec.choices is not None:
            kwargs["choices"] = list(spec.choices)
        if f.metadata.get("positional"):
            kwargs["nargs"] = "*"
            kwargs["metavar"] = f.name.upper().rstrip("S")
            parser.add_argument(kwargs.pop("dest"), **kwargs)
            continue
        parser.add_argument(_flag(f.name), **kwargs)


def _check_range(value: Any, spec: Range | None, kind: Any, where: str) -> Any:
    spec = spec or Range()
    if not spec.accepts(value):
        raise ConfigError(f"{where}: got {value!r}, expected {spec.describe(kind)}")
    return value


def _coerce(value: Any, tp: Any, where: str, spec: Range | None = None) -> Any:
    """Check/convert one value against a field type and its declared range; raise ConfigError naming `where`."""
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
        items = [_coerce(v, item_tp, f"{where}[{i}]", spec) if item_tp is not Any else v
                 for i, v in enumerate(value)]
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
        return _check_range(value, spec, int, where)
    if inner is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: got {value!r}, expected a number")
        return _check_range(float(value), spec, float, where)
    if inner is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: got {value!r}, expected a string")
        return _check_range(value, spec, str, where)
    if inner is Path:
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"{where}: got {value!r}, expected a path")
        return Path(value)
    if dataclasses.is_dataclass(inner):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: got {value!r}, expected a mapping")
        return _from_mapping(inner, value, where)
    return value


def _validate_mapping(cls: type, values: dict[str, Any], where: str, as_flags: bool = False) -> dict[str, Any]:
    """Check every key and value of `values` against `cls`'s fields; return them under field names.

    Errors read `<where>: option 'lr': ...` (a YAML file's key), or `option --lr: ...` with `as_flags`.
    """
    hints = _field_types(cls)
    specs = {f.name: option_range(f) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    out = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in hints:
            known = ", ".join(sorted(n.replace("_", "-") for n in hints))
            raise ConfigError(f"{where}: unknown option {key!r}; known options: {known}")
        at = f"option {_flag(name)}" if as_flags else f"{where}: option {name.replace('_', '-')!r}"
        out[name] = _coerce(value, hints[name], at, specs.get(name))
    return out


def _from_mapping(cls: type[T], values: dict[str, Any], where: str, as_flags: bool = False) -> T:
    kwargs = _validate_mapping(cls, values, where, as_flags)
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
    """Build a `cls` from its defaults, then `config_file`, then the explicitly given flags in `args`.

    Every value is checked against its field's type and declared range here, before anything runs.
    """
    file_values: dict[str, Any] = load_yaml_mapping(config_file) if config_file is not None else {}
    where = f"config file {config_file}" if config_file is not None else "configuration"
    values = _validate_mapping(cls, file_values, where)  # validated on its own, so errors name the file
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    hints = _field_types(cls)
    values.update(_validate_mapping(cls, {k: v for k, v in given.items() if k in hints}, where, as_flags=True))
    return _from_mapping(cls, values, where)


def check_config(config: Any) -> None:
    """Check a config built in Python (the run functions' API) against every field's type and range.

    The same checks `resolve_config` applies to flags and YAML keys; errors read `option --lr: got nan, ...`.
    """
    _from_mapping(type(config), {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)},
                  "configuration", as_flags=True)


def _plain(v: Any) -> Any:
    """A field value as a flag or YAML key would give it (nested configs as mappings)."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return config_to_dict(v)
    return v


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
