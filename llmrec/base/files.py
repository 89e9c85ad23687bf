"""Atomic file writes: a reader never sees a half-written file, and every file follows the user's umask.

A file is written to a temporary sibling and moved into place with `os.replace`, which is atomic on POSIX within
one filesystem. Output folders (built as a whole, then renamed into place) are `llmrec.base.atomic`; marker files
(`llmrec.base.markers`) are written with `atomic_write_text` from here, which is why this module is separate:
`atomic` reads markers, `markers` writes through this.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def umask() -> int:
    """The process's umask (read without changing it for longer than a call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` and move the result to `path` only if it succeeded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~umask())  # mkstemp makes 0600 files
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def follow_umask(root: str | os.PathLike) -> None:
    """Give every file and folder under `root` the permissions the umask gives new ones (executables keep their
    execute bits). Some writers make private files: safetensors' `save_file` (used by `save_pretrained`) writes
    through a 0600 temporary, as `mkstemp` does, so a checkpoint held 0600 weights beside 0644 configs. Every
    output folder passes through here once before it is put in place, so every file a command writes follows the
    umask, whoever wrote it. Symbolic links are left alone."""
    mask = umask()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in filenames + dirnames:
            path = here / name
            if path.is_symlink():
                continue
            mode = path.stat().st_mode & 0o777
            want = (0o777 if path.is_dir() or mode & 0o111 else 0o666) & ~mask
            if mode != want:
                os.chmod(path, want)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (about 0.3 s for 100 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_parquet(path: Path, rerun: str, error: type[Exception]):
    """The table in the parquet file at `path`; a damaged one (truncated, not parquet) is `error` in one line
    naming the file, pyarrow's first line and `rerun` (what to do), never a traceback from inside pyarrow."""
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for damaged files
        raise error(f"{path}: damaged or not a parquet file ({str(e).splitlines()[0]}); {rerun}") from None
