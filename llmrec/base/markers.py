"""Versioned marker and facts files: one reader, one writer, one error format.

Every file by which llmrec recognises its own work (a prepared dataset's `meta.json`, an LLM checkpoint's
`checkpoint.json`, the `encoder:` section of an encoder checkpoint's `config.yaml`, the output marker
`.llmrec-output.json`, the resume marker `.llmrec-resume.json`, ...) is a JSON (or YAML) object with a `format`
field naming its kind and usually a `format_version`. `MarkerSpec` describes one kind; `read_marker` reads and
checks a file of it; `find_marker` is the quiet variant for "is this ours?" questions; `write_marker` writes one
atomically (`llmrec.base.files`, the file half of `llmrec.base.atomic`); `from_dict` builds a typed, frozen
dataclass from a checked object, field by field, and `to_dict` turns it back into the same JSON.

Every problem is reported in ONE format, always on one line:

    <file>: <what is wrong>; expected <what was expected>[; <what to do>]

e.g. `run/checkpoint.json: missing, so run is not an LLM checkpoint; expected an LLM checkpoint written by
`llmrec train-llm` or `llmrec train-sdpo``, `out/meta.json: damaged (not valid JSON: ...); expected ...`,
`ckpt/checkpoint.json: field `seed` is 'x' (a string); expected an integer; ...`. The caller chooses the error
class (DataError, CheckpointError, ...) and the advice (which may depend on the problem: a damaged file is
rebuilt, a missing one is made).
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from llmrec.base.errors import LlmrecError
from llmrec.base.files import atomic_write_text

Problem = Literal["missing", "unreadable", "damaged", "not-object", "kind", "version", "field"]
Advice = str | Callable[[Problem], str] | None
T = TypeVar("T")

# dataclass field metadata understood by `from_dict` / `to_dict`
INTERNAL = "marker_internal"   # never read from nor written to the file (e.g. a path used while saving)
OMIT_IF = "marker_omit_if"     # not written when the value equals this (keys older files never had)


@dataclass(frozen=True)
class MarkerSpec:
    """One kind of marker file.

    kind: the value of its `format` field (None: a plain facts file without one, e.g. a resume state's
    `latest.json`); version: the `format_version` this llmrec reads (None: not checked);
    what: what a valid file marks, for messages ("an LLM checkpoint"); writer: who writes it ("`llmrec
    train-llm`"); section: the marker is the mapping under this top-level key (an encoder's `config.yaml`).
    """

    kind: str | None
    version: int | None
    what: str
    writer: str
    section: str | None = None

    @property
    def expected(self) -> str:
        return f"{self.what} written by {self.writer}"


def marker_message(path: str | os.PathLike, problem: str, expected: str, advice: str | None = None) -> str:
    """The one format of every marker problem: `<file>: <problem>; expected <expected>[; <advice>]`."""
    return f"{path}: {problem}; expected {expected}" + (f"; {advice}" if advice else "")


def _advice(advice: Advice, problem: Problem) -> str | None:
    return advice(problem) if callable(advice) else advice


class _Reader:
    """Where a marker came from and how to complain about it."""

    def __init__(self, path: Path, spec: MarkerSpec, error: type[Exception], advice: Advice):
        self.path, self.spec, self.error, self.advice = path, spec, error, advice

    def fail(self, category: Problem, problem: str, expected: str | None = None) -> Exception:
        return self.error(marker_message(self.path, problem, expected or self.spec.expected,
                                         _advice(self.advice, category)))


def _load_text(path: Path) -> str:
    """The file's text (the one place marker files are read from disk)."""
    return path.read_text(encoding="utf-8")


def _parse(path: Path, text: str) -> Any:
    return yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}.get(
        type(value), f"a {type(value).__name__}")


def read_marker(path: str | os.PathLike, spec: MarkerSpec, *, error: type[Exception] = LlmrecError,
                advice: Advice = None) -> dict[str, Any]:
    """The checked contents of marker file `path` (for a `spec.section`: that section's mapping).

    Raises `error` in the one format when the file is missing or unreadable, is not valid JSON/YAML or not an
    object, has another `format` than `spec.kind` or another `format_version` than `spec.version`.
    """
    path = Path(path)
    reader = _Reader(path, spec, error, advice)
    not_ours = f"so {path.parent} is not {spec.what}"
    if not path.is_file():
        raise reader.fail("missing", f"{'missing' if not path.exists() else 'not a file'}, {not_ours}")
    try:
        text = _load_text(path)
    except OSError as e:
        raise reader.fail("unreadable", f"cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise reader.fail("damaged", "damaged (not UTF-8 text)") from None
    try:
        data = _parse(path, text)
    except json.JSONDecodeError as e:
        raise reader.fail("damaged", f"damaged (not valid JSON: {e})") from None
    except yaml.YAMLError as e:
        raise reader.fail("damaged", f"damaged (not valid YAML: {' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise reader.fail("not-object", f"damaged ({_type_name(data)}, not an object)")
    where = ""
    if spec.section is not None:
        data = data.get(spec.section)
        where = f"`{spec.section}:` section "
        if not isinstance(data, dict):
            raise reader.fail("kind", f"no `{spec.section}:` section, {not_ours}" if data is None else
                              f"the `{spec.section}:` section is {_type_name(data)}, not a mapping, {not_ours}")
    if spec.kind is not None and data.get("format") != spec.kind:
        got = data.get("format")
        raise reader.fail("kind", f"{where}format {got!r}, {not_ours}" if got is not None else
                          f"{where}no `format` field, {not_ours}")
    if spec.version is not None and data.get("format_version") != spec.version:
        raise reader.fail("version", f"{where}format version {data.get('format_version')!r}",
                          f"version {spec.version} (the one this llmrec reads) of {spec.what}")
    return data


def find_marker(path: str | os.PathLike, spec: MarkerSpec, check_version: bool = False) -> dict[str, Any] | None:
    """The contents of marker file `path` when it is a readable marker of `spec.kind` (and, with
    `check_version`, of `spec.version`), else None: for "is this folder ours?" questions that must not fail."""
    quiet = spec if check_version else dataclasses.replace(spec, version=None)
    try:
        return read_marker(path, quiet, error=_Quiet)
    except _Quiet:
        return None


class _Quiet(Exception):
    pass


def marker_dict(spec: MarkerSpec, facts: Mapping[str, Any]) -> dict[str, Any]:
    """`facts` behind the `format` (and `format_version`) fields of `spec`, as they are written to a file."""
    head: dict[str, Any] = {"format": spec.kind} if spec.kind is not None else {}
    if spec.version is not None:
        head["format_version"] = spec.version
    return {**head, **{k: v for k, v in facts.items() if k not in ("format", "format_version")}}


def write_marker(path: str | os.PathLike, spec: MarkerSpec, facts: Mapping[str, Any], indent: int | None = 2
                 ) -> Path:
    """Write the JSON marker `{"format": ..., "format_version": ..., **facts}` to `path` atomically (one
    trailing newline)."""
    return atomic_write_text(path, json.dumps(marker_dict(spec, facts), indent=indent) + "\n")


# ------------------------------------------------------------------------------------------------ fields
def _describe(hint: Any) -> str:
    """What a value of type `hint` is, in words."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(hint))
    if hint is type(None):
        return "null"
    if dataclasses.is_dataclass(hint) or hint is dict or origin is dict or origin is Mapping:
        return "an object"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
            Any: "any value"}.get(origin or hint, str(hint))


def _matches(value: Any, hint: Any) -> bool:
    origin = get_origin(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in get_args(hint))
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if dataclasses.is_dataclass(hint) or hint is dict or origin in (dict, Mapping):
        return isinstance(value, dict)
    if hint is list or origin is list:
        return isinstance(value, list)
    raise TypeError(f"marker fields cannot be of type {hint!r}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_fields(data: Mapping[str, Any], fields: Mapping[str, Any], path: str | os.PathLike, *, spec: MarkerSpec,
                 error: type[Exception] = LlmrecError, advice: Advice = None, prefix: str = "") -> None:
    """Raise `error` in the one format unless every `fields` name is in `data` with a value of its type."""
    reader = _Reader(Path(path), spec, error, advice)
    for name, hint in fields.items():
        if name not in data:
            raise reader.fail("field", f"field `{prefix}{name}` is missing", _describe(hint))
        _check_value(reader, prefix + name, data[name], hint)


def _check_value(reader: _Reader, name: str, value: Any, hint: Any) -> None:
    if not _matches(value, hint):
        raise reader.fail("field", f"field `{name}` is {_shown(value)} ({_type_name(value)})", _describe(hint))


def _nested(hint: Any) -> type | None:
    """The dataclass inside `hint` (`X` or `X | None`), if any."""
    for h in (hint, *get_args(hint)):
        if dataclasses.is_dataclass(h):
            return h  # type: ignore[return-value]
    return None


def from_dict(cls: type[T], data: Mapping[str, Any], path: str | os.PathLike, *, spec: MarkerSpec,
              error: type[Exception] = LlmrecError, advice: Advice = None, prefix: str = "") -> T:
    """An instance of the frozen dataclass `cls` from the checked marker `data` read from `path`.

    Each field is taken from the key of its name and checked against its annotation (nested dataclasses from
    nested objects); a field with a default may be absent (older files), one without must be present. Keys the
    class does not know are ignored (files written by a newer llmrec still load). A missing or mistyped field is
    `error` in the one format, naming it (`base.path`).
    """
    reader = _Reader(Path(path), spec, error, advice)
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.metadata.get(INTERNAL):
            continue
        name, hint = prefix + f.name, hints[f.name]
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise reader.fail("field", f"field `{name}` is missing", _describe(hint))
            continue
        value = data[f.name]
        _check_value(reader, name, value, hint)
        inner = _nested(hint)
        if inner is not None and isinstance(value, dict):
            value = from_dict(inner, value, path, spec=spec, error=error, advice=advice, prefix=f"{name}.")
        values[f.name] = value
    return cls(**values)


def to_dict(facts: Any) -> dict[str, Any]:
    """The JSON object of the dataclass `facts` (field order; nested dataclasses as objects), without its
    internal fields and without the fields whose value equals their `OMIT_IF`."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(facts):
        value = getattr(facts, f.name)
        if f.metadata.get(INTERNAL) or (OMIT_IF in f.metadata and value == f.metadata[OMIT_IF]):
            continue
        out[f.name] = to_dict(value) if dataclasses.is_dataclass(value) else value
    return out
