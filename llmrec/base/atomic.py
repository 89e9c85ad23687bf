"""Atomic writes and output folders: a reader never sees a half-written file or folder, and no command ever
deletes or changes a file it did not write.

Files are written to a temporary sibling and moved into place with `os.replace`, which is atomic on POSIX
within one filesystem.

Output folders (every command's `--out`) go through ONE API:

    check_output(out, "train-encoder")               # before the slow work: refuse early
    with output_directory(out, "train-encoder") as tmp:
        ...write everything into tmp...              # on success tmp replaces `out`; on failure it is removed

The folder is built in a hidden temporary sibling `.<name>.XXXXXXXX.tmp` and renamed into place only when the
command succeeded. Ownership is proven by this project's own marker file, `.llmrec-output.json`, written last:

    {"format": "llmrec-output", "format_version": 1, "command": "train-encoder", "created": "<UTC time>",
     "llmrec_version": "...", "files": {"<relative path>": {"size": ..., "sha256": ...}, ...}}

never by the presence of a file name such as `checkpoint.json` or `config.yaml`. What happens to an existing
`--out`:
- missing, or an empty folder: created;
- a previous output of the SAME command: replaced. Files the user ADDED to it (anything not listed in its
  marker) are KEPT: they are moved into the new folder at the same relative path (renamed `NAME.kept` if the
  new output wrote a file of that name). If the user CHANGED a file the command wrote, the command refuses,
  before any work, rather than overwrite the change;
- another command's output, a folder without the marker (a user's folder), a file or a symbolic link:
  refused with one line that says what to do;
- outputs written before the marker existed are recognised only by the command's own full check (a
  `LegacyOutput`: e.g. prepare's meta.json with its format field), never by a file name alone; their files
  that match the patterns the command writes count as its own, every other file is kept as above.

A temporary folder holds `.llmrec-building.json` (process id, host, start time) while it is being built. An
interrupted run leaves it behind; the next run writing the same `--out` removes every such folder whose
process is gone (same host) or that is older than a week (another host). Folders are created with the
permissions the user's umask gives (`tempfile.mkdtemp` alone would make them private, mode 0700), files
likewise: every file of a finished output folder follows the umask, whoever wrote it (`follow_umask`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmrec.base.errors import ConfigError, LlmrecError
from llmrec.base.files import (  # re-exported: the file-level half of this module's API
    atomic_write as atomic_write,
    atomic_write_bytes as atomic_write_bytes,
    atomic_write_text,
    follow_umask,
)
from llmrec.base.files import umask as _umask
from llmrec.base.markers import MarkerSpec, check_fields, find_marker, read_marker

log = logging.getLogger(__name__)

OUTPUT_MARKER = ".llmrec-output.json"
OUTPUT_SPEC = MarkerSpec(kind="llmrec-output", version=1, what="an llmrec output", writer="an llmrec command")
OUTPUT_FORMAT, OUTPUT_FORMAT_VERSION = OUTPUT_SPEC.kind, OUTPUT_SPEC.version
BUILDING_MARKER = ".llmrec-building.json"
BUILDING_SPEC = MarkerSpec(kind="llmrec-building", version=None, what="a folder llmrec is building",
                           writer="an llmrec command")
BUILDING_FORMAT = BUILDING_SPEC.kind
HASH_LIMIT = 64 * 2**20  # files up to this size are fingerprinted by sha256, larger ones by size only
STALE_ON_OTHER_HOST = 7 * 86400  # seconds: a temporary folder of another machine is stale after a week
_MARKERS = (OUTPUT_MARKER, BUILDING_MARKER)


# ------------------------------------------------------------------------------------------------ files
def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------ temporaries
def _building_facts(target: Path) -> dict[str, Any]:
    now = time.time()
    return {"format": BUILDING_FORMAT, "target": target.name, "pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"), "started_unix": now}


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # exists (another user's), or not a pid we can judge: keep the folder
    return True


def _is_stale(facts: dict[str, Any] | None) -> bool:
    if facts is None:  # not our building marker (or unreadable): never removed
        return False
    pid, host, started = facts.get("pid"), facts.get("host"), facts.get("started_unix")
    if host == socket.gethostname() and isinstance(pid, int):
        return not _pid_alive(pid)
    return isinstance(started, (int, float)) and time.time() - started > STALE_ON_OTHER_HOST


def _temporary_name(name: str) -> re.Pattern[str]:
    """Names `tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp")` makes."""
    return re.compile(rf"\.{re.escape(name)}\.[A-Za-z0-9_]+\.tmp")


def _remove_tree(folder: Path) -> None:
    """Remove a temporary folder, its building marker last: a removal cut short stays recognisable."""
    for child in folder.iterdir():
        if child.name == BUILDING_MARKER:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    (folder / BUILDING_MARKER).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def clean_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the hidden `.<name>.XXXX.tmp` siblings of `path` that an interrupted llmrec run left behind.

    A folder is removed only if its name has that pattern AND it holds this project's building marker AND
    the process that made it is gone (same host) or it is older than a week (another host). Returns them.
    """
    path = Path(os.path.abspath(path))
    parent, pattern = path.parent, _temporary_name(path.name)
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not pattern.fullmatch(entry.name) or entry.is_symlink() or not entry.is_dir():
            continue
        if _is_stale(find_marker(entry / BUILDING_MARKER, BUILDING_SPEC)):
            _remove_tree(entry)
            removed.append(entry)
            log.info("removed %s, left behind by an interrupted llmrec run", entry)
    return removed


@contextlib.contextmanager
def _temporary_sibling(path: Path) -> Iterator[Path]:
    """A fresh hidden folder next to `path` (same filesystem, so it can be renamed onto it); removed on exit
    unless it was moved away."""
    path = Path(os.path.abspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders; an output folder follows the umask
        _write_json(tmp / BUILDING_MARKER, _building_facts(path))
        yield tmp
    finally:
        if tmp.exists():
            _remove_tree(tmp)


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Rename `tmp` to `path`; an existing `path` (already judged replaceable) is removed only afterwards."""
    path = Path(os.path.abspath(path))
    if path.is_dir() and not path.is_symlink():
        # mark the old folder first: if we are killed between the renames below, it is a stale temporary
        _write_json(path / BUILDING_MARKER, _building_facts(path))
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.replace(path, old)  # onto the empty folder just made
        os.replace(tmp, path)
        _remove_tree(old)
    else:
        os.replace(tmp, path)
    (path / BUILDING_MARKER).unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `path` (an old `path` is removed only then).

    Low level: the caller must already know that an existing `path` may be replaced (a cache folder, or
    `check_replaceable`). Command outputs use `output_directory`, which decides that itself and keeps the
    user's files.
    """
    path = Path(path)
    with _temporary_sibling(path) as tmp:
        yield tmp
        follow_umask(tmp)
        _swap_into_place(tmp, path)


def check_replaceable(path: str | os.PathLike, is_ours: Callable[[Path], bool], what: str,
                      error: type[Exception]) -> None:
    """Refuse an output path that exists and is neither an empty folder nor `what` (a folder we wrote).

    Older API, kept for callers of `atomic_directory`; new code uses `check_output` / `output_directory`.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise error(f"output path {path} exists and is not a folder; choose another --out")
    if path.is_dir() and any(path.iterdir()) and not is_ours(path):
        raise error(f"output folder {path} exists, is not empty and is not {what}; refusing to overwrite it. "
                    f"Choose another --out or empty it yourself")


# ------------------------------------------------------------------------------------------------ outputs
@dataclass(frozen=True)
class LegacyOutput:
    """How to recognise an output written before `.llmrec-output.json` existed.

    `test(folder)` must prove it by content (a format field), not by a file name; `files` are glob patterns
    of what that command wrote (matched against a relative path or its first component, e.g. `logs`).
    """

    test: Callable[[Path], bool]
    files: tuple[str, ...]


@dataclass(frozen=True)
class PreviousOutput:
    """An existing output folder that a command may replace, and which of its files that command wrote."""

    path: Path
    files: frozenset[str] | None  # from the marker; None for a legacy output (use `patterns`)
    patterns: tuple[str, ...] = ()

    def wrote(self, rel: str) -> bool:
        if rel in _MARKERS:
            return True
        if self.files is not None:
            return rel in self.files
        return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(rel.split("/")[0], p)
                   for p in self.patterns)


def _file_facts(path: Path, hash_limit: int | None = HASH_LIMIT) -> dict[str, Any]:
    """Size and (up to `hash_limit` bytes; None: always) sha256 of a file, or the target of a symbolic link."""
    if path.is_symlink():
        return {"link": os.readlink(path)}
    size = path.stat().st_size
    facts: dict[str, Any] = {"size": size}
    if hash_limit is None or size <= hash_limit:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        facts["sha256"] = h.hexdigest()
    return facts


def _walk_files(root: Path) -> Iterator[str]:
    """Relative POSIX paths of the files (and symbolic links) under `root`, markers excluded. Sub-folders that
    are llmrec outputs themselves (their own marker, e.g. the test ranking inside a checkpoint) are separate
    outputs and are not walked."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if (here / d).is_symlink() or read_output_marker(here / d) is None]
        links = [d for d in dirnames if (here / d).is_symlink()]
        for name in sorted(filenames + links):
            rel = (here / name).relative_to(root).as_posix()
            if rel not in _MARKERS:
                yield rel


def _nested_outputs(root: Path) -> list[Path]:
    """Sub-folders of `root` that are llmrec outputs of their own."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        for d in list(dirnames):
            if not (here / d).is_symlink() and read_output_marker(here / d) is not None:
                found.append(here / d)
                dirnames.remove(d)
    return found


def mark_output(folder: str | os.PathLike, command: str, facts: dict[str, Any] | None = None) -> Path:
    """Write the output marker of `llmrec <command>` into `folder` (listing its files), for an output built
    inside another one (train-llm's test ranking is an `evaluate` output inside the checkpoint)."""
    from llmrec import __version__

    folder = Path(folder)
    written = {rel: _file_facts(folder / rel) for rel in _walk_files(folder)}
    _write_json(folder / OUTPUT_MARKER, {"format": OUTPUT_FORMAT, "format_version": OUTPUT_FORMAT_VERSION,
                                         "command": command, "created": datetime.now(UTC).isoformat(timespec="seconds"),
                                         "llmrec_version": __version__, **(facts or {}), "files": written})
    return folder / OUTPUT_MARKER


def _untouched_output(folder: Path) -> bool:
    """A nested llmrec output holding exactly the files its command wrote, none changed."""
    facts = read_output_marker(folder)
    if facts is None:
        return False
    files = facts["files"]
    return (not any(_changed(folder / rel, f) for rel, f in files.items())
            and set(_walk_files(folder)) <= set(files) and not _nested_outputs(folder))


def _changed(path: Path, facts: Any) -> bool:
    """True if a file the command wrote has since been changed (a removed file is not a change)."""
    if not path.exists() and not path.is_symlink():
        return False
    if not isinstance(facts, dict) or path.is_dir() and not path.is_symlink():
        return True
    try:
        now = _file_facts(path, None if "sha256" in facts else 0)
    except OSError:
        return True
    return any(now.get(k) != v for k, v in facts.items())


def read_output_marker(path: str | os.PathLike) -> dict[str, Any] | None:
    """The `.llmrec-output.json` of folder `path` if it is a valid llmrec output marker, else None."""
    facts = find_marker(Path(path) / OUTPUT_MARKER, OUTPUT_SPEC)
    return facts if facts is not None and isinstance(facts.get("files"), dict) else None


def check_output(path: str | os.PathLike, command: str, *, legacy: LegacyOutput | None = None,
                 what: str | None = None, error: type[LlmrecError] = ConfigError) -> PreviousOutput | None:
    """May `llmrec <command>` write its output to `path`? Raise `error` (one line, saying what to do) if not.

    Returns None when `path` is missing or an empty folder, or the `PreviousOutput` it will replace. Also
    removes stale temporaries of `path` left by interrupted runs. `what` names the expected kind of folder
    in messages (default: "a previous `llmrec <command>` output").
    """
    path = Path(path)
    what = what or f"a previous `llmrec {command}` output"
    if path.name in ("", ".", "..") or Path(os.path.abspath(path)) == Path.cwd():
        raise error(f"output path {path} is the current folder or its parent; give a folder name, e.g. "
                    f"--out results/run1 (llmrec replaces output folders as a whole)")
    clean_stale_temporaries(path)
    if path.is_symlink():
        raise error(f"output path {path} is a symbolic link; give the real folder as --out (llmrec replaces "
                    f"output folders as a whole)")
    if not path.exists():
        return None
    if not path.is_dir():
        raise error(f"output path {path} exists and is not a folder; choose another --out")
    if not [c for c in path.iterdir() if c.name != BUILDING_MARKER]:
        return None
    marker = path / OUTPUT_MARKER
    if marker.exists() or marker.is_symlink():
        refuse = f"refusing to overwrite the output folder {path}: choose another --out"
        facts = read_marker(marker, OUTPUT_SPEC, error=error, advice=refuse)
        check_fields(facts, {"command": str, "files": dict[str, Any]}, marker, spec=OUTPUT_SPEC, error=error,
                     advice=refuse)
        if facts.get("command") != command:
            raise error(f"output folder {path} is a `llmrec {facts.get('command')}` output, not {what}; "
                        f"refusing to overwrite it: choose another --out")
        files = facts["files"]
        changed = [rel for rel, f in files.items() if _changed(path / rel, f)]
        if changed:
            shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
            raise error(f"output folder {path}: {shown} changed after `llmrec {command}` wrote it; refusing to "
                        f"overwrite your changes: move the changed file(s) out of the folder, or choose "
                        f"another --out")
        return PreviousOutput(path, frozenset(files))
    if legacy is not None and legacy.test(path):
        return PreviousOutput(path, None, legacy.files)
    raise error(f"output folder {path} exists, is not empty and is not {what}; refusing to overwrite it: "
                f"choose another --out, or empty the folder yourself")


def _free_name(dest: Path) -> Path:
    candidate = dest.with_name(dest.name + ".kept")
    n = 2
    while candidate.exists() or candidate.is_symlink():
        candidate = dest.with_name(f"{dest.name}.kept-{n}")
        n += 1
    return candidate


def _carry_over(previous: PreviousOutput, new_root: Path) -> list[str]:
    """Move every file of `previous` that its command did not write into `new_root`; returns their paths."""
    moved = []
    old_root = previous.path
    for sub in _nested_outputs(old_root):
        # e.g. an evaluation of the replaced checkpoint: its results describe the old weights. An untouched one is
        # llmrec's own and goes with the folder it describes; one the user changed or added to is kept.
        rel = sub.relative_to(old_root).as_posix()
        if _untouched_output(sub):
            log.info("dropped %s: a `llmrec %s` output of the replaced %s", sub, read_output_marker(sub).get("command"),
                     old_root)
            continue
        dest = new_root / rel
        if dest.exists() or dest.is_symlink():
            dest = _free_name(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(sub, dest)
        log.warning("kept %s as %s: you changed or added files in it; its results describe the replaced output",
                    sub, dest)
        moved.append(rel)
    for rel in list(_walk_files(old_root)):
        if previous.wrote(rel):
            continue
        dest = new_root / rel
        if dest.exists() or dest.is_symlink():
            dest = _free_name(dest)
            log.warning("kept your %s as %s: the new output has a file of that name", old_root / rel, dest.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(old_root / rel, dest)
        moved.append(rel)
    for dirpath, dirnames, filenames in os.walk(old_root):  # empty folders the user made
        rel_dir = Path(dirpath).relative_to(old_root)
        if not dirnames and not filenames and rel_dir != Path("."):
            (new_root / rel_dir).mkdir(parents=True, exist_ok=True)
    if moved:
        log.info("kept %d file(s) you added to %s: %s", len(moved), old_root, ", ".join(moved[:5]))
    return moved


@contextlib.contextmanager
def output_directory(path: str | os.PathLike, command: str, *, legacy: LegacyOutput | None = None,
                     what: str | None = None, error: type[LlmrecError] = ConfigError,
                     facts: dict[str, Any] | None = None, hash_all: bool = False) -> Iterator[Path]:
    """Build `llmrec <command>`'s output folder `path` atomically; yields the temporary folder to write into.

    Checks `path` first (`check_output`), and again at the end in case it changed meanwhile. On success the
    marker (listing every file written, plus `facts`) is added, the user's files of a replaced output are
    carried over, and the folder is renamed into place. On failure nothing at `path` changes.
    """
    path = Path(path)
    check_output(path, command, legacy=legacy, what=what, error=error)
    from llmrec import __version__

    with _temporary_sibling(path) as tmp:
        yield tmp
        follow_umask(tmp)  # before the user's files of a replaced output are carried over: those keep their modes
        written = {rel: _file_facts(tmp / rel, None if hash_all else HASH_LIMIT) for rel in _walk_files(tmp)}
        marker = {"format": OUTPUT_FORMAT, "format_version": OUTPUT_FORMAT_VERSION, "command": command,
                  "created": datetime.now(UTC).isoformat(timespec="seconds"), "llmrec_version": __version__,
                  **(facts or {}), "files": written}
        _write_json(tmp / OUTPUT_MARKER, marker)
        try:
            previous = check_output(path, command, legacy=legacy, what=what, error=error)
        except LlmrecError as e:  # the destination changed while we worked: keep the result elsewhere
            kept = path.with_name(f"{path.name}.llmrec-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
            os.replace(tmp, kept)
            (kept / BUILDING_MARKER).unlink(missing_ok=True)
            raise error(f"{e} (it changed while llmrec {command} ran; the finished output was saved as "
                        f"{kept} instead)") from None
        if previous is not None:
            _carry_over(previous, tmp)
        _swap_into_place(tmp, path)
