"""Atomic writes: a reader never sees a half-written checkpoint, table or config.

Files are written to a temporary sibling and moved into place with `os.replace`, which is atomic on POSIX
within one filesystem. Folders are built under a temporary sibling name and renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` and move the result to `path` only if it succeeded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `path` (an old `path` is removed only then).

    The caller is responsible for checking that an existing `path` may be replaced (see
    `llmrec.data.dataset.check_output_dir`): this function never decides that a user's folder is disposable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_replaceable(path: str | os.PathLike, is_ours: Callable[[Path], bool], what: str,
                      error: type[Exception]) -> None:
    """Refuse an output path that exists and is neither an empty folder nor `what` (a folder we wrote).

    Every command that replaces its output folder calls this first, so a user's folder is never deleted.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise error(f"output path {path} exists and is not a folder; choose another --out")
    if path.is_dir() and any(path.iterdir()) and not is_ours(path):
        raise error(f"output folder {path} exists, is not empty and is not {what}; refusing to overwrite it. "
                    f"Choose another --out or empty it yourself")
