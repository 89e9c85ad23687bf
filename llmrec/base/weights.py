"""Reading weight files: safetensors only, and one line naming the file for anything else.

llmrec never unpickles: a pickle (`pytorch_model.bin`, `adapter_model.bin`, `*.pt` ...) can run code when it is
read, and even torch's weights-only unpickler only stops the payloads it recognises. So every loader of the
project reads weights through here (or hands transformers / peft a folder that these checks passed):

- `safetensors_shapes(path)`: the tensor names and shapes in a file's header (no tensor is read), which is also
  how a damaged file is recognised before a library reads it: a truncated file, a flipped header byte or a link
  to some other file (`/etc/passwd`) fails the header check with a `CheckpointError` naming the file;
- `read_safetensors(path)`: the tensors, with the same one-line errors;
- `refuse_pickled(folder, expected)`: when the safetensors file a loader expects is absent, a pickled stand-in
  beside it is named and refused ("only safetensors weights are read") instead of being loaded;
- `tensor_mismatch(expected, found)`: which tensors a model needs and a file lacks, which it holds and the
  model does not, and which have another shape; loaders are strict, so that a file without the model's tensors
  is refused rather than leaving a randomly initialised model behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from llmrec.base.errors import CheckpointError

# names of weight files that hold pickles (PyTorch, and the other frameworks' formats transformers would read)
PICKLED_NAMES: tuple[str, ...] = ("pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin",
                                  "tf_model.h5", "flax_model.msgpack", "model.ckpt.index")
PICKLED_SUFFIXES: tuple[str, ...] = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SHOWN = 3  # tensor names listed in a message; the rest are counted


def _unreadable(path: Path) -> CheckpointError | None:
    """The error for a path that is not a regular file (None when it is one)."""
    if path.is_file():
        return None
    if path.is_symlink() and not path.exists():
        return CheckpointError(f"{path} is missing (a link to {os.readlink(path)}, which does not exist)")
    if path.exists():
        return CheckpointError(f"{path} is not a regular file; expected a safetensors weights file")
    return CheckpointError(f"{path} is missing")


def _damaged(path: Path, e: BaseException) -> CheckpointError:
    reason = " ".join(str(e).split()) or type(e).__name__
    return CheckpointError(f"{path} is not a readable safetensors file ({reason}); it is damaged or was replaced: "
                           f"copy the checkpoint folder again")


def safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the safetensors file `path`, read from its header only.

    Raises `CheckpointError` (one line, naming the file) when it is missing, not a regular file, or not a
    complete safetensors file (safetensors checks that the header is valid JSON and that its offsets cover the
    file exactly, so a truncated or padded file and a link to an unrelated file are all caught here)."""
    path = Path(path)
    error = _unreadable(path)
    if error is not None:
        raise error
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _damaged(path, e) from None


def read_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors file `path` on `device`; one-line `CheckpointError` as
    `safetensors_shapes` for a missing or damaged file."""
    path = Path(path)
    error = _unreadable(path)
    if error is not None:
        raise error
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _damaged(path, e) from None


def pickled_files(folder: str | os.PathLike) -> list[Path]:
    """The files in `folder` (not below it) that hold pickled weights, by name; sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.name in PICKLED_NAMES or p.name.lower().endswith(PICKLED_SUFFIXES))


def refuse_pickled(folder: str | os.PathLike, expected: str) -> None:
    """Raise `CheckpointError` naming a pickled weights file in `folder` when `folder/expected` (the safetensors
    file a loader reads) is absent; do nothing otherwise (the loader then names the missing file itself)."""
    folder = Path(folder)
    if (folder / expected).exists() or (folder / expected).is_symlink():
        return
    found = pickled_files(folder)
    if found:
        raise CheckpointError(f"{found[0]}: pickled weights are never loaded, llmrec reads safetensors only "
                              f"(expected {folder / expected}); convert the weights with "
                              f"`model.save_pretrained(folder)` or `safetensors.torch.save_file`")


def _listed(names: Iterable[str]) -> str:
    names = sorted(names)
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def describe_mismatch(missing: Iterable[str] = (), unexpected: Iterable[str] = (),
                      reshaped: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]] | None = None) -> str | None:
    """One phrase saying which tensors are missing, unexpected or of another shape (found, needed); None when
    nothing is wrong."""
    missing, unexpected, reshaped = list(missing), list(unexpected), dict(reshaped or {})
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) of the model are missing ({_listed(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensor(s) are not the model's ({_listed(unexpected)})")
    if reshaped:
        name = min(reshaped)
        found, needed = reshaped[name]
        more = f" and {len(reshaped) - 1} more" if len(reshaped) > 1 else ""
        parts.append(f"{len(reshaped)} tensor(s) have another shape ({name}: {list(found)}, the model needs "
                     f"{list(needed)}{more})")
    return "; ".join(parts) or None


def tensor_mismatch(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]]) -> str | None:
    """`describe_mismatch` of the tensors a model `expected` (name -> shape) against those a file holds."""
    reshaped = {k: (tuple(found[k]), tuple(v)) for k, v in expected.items() if k in found and
                tuple(found[k]) != tuple(v)}
    return describe_mismatch(set(expected) - set(found), set(found) - set(expected), reshaped)


def check_tensors(path: str | os.PathLike, expected: Mapping[str, tuple[int, ...]],
                  found: Mapping[str, tuple[int, ...]], what: str = "the model") -> None:
    """Raise `CheckpointError` naming `path` unless it holds exactly the tensors `expected` (name -> shape)."""
    why = tensor_mismatch(expected, found)
    if why:
        raise CheckpointError(f"{path} does not hold the weights of {what}: {why}; the file is damaged or belongs "
                              f"to another model: copy the checkpoint folder again")
