"""The bundle manifest: every file a checkpoint command wrote, checked before a model is served.

An LLM checkpoint folder (`llmrec train-llm` or `llmrec train-sdpo` output) carries `.llmrec-output.json`,
written last by `llmrec.base.atomic.output_directory`: each file the command wrote with its size and, up to
`llmrec.base.atomic.HASH_LIMIT` bytes, its sha256. That marker is the bundle manifest. `verify_bundle` checks every
listed file before anything is loaded: a missing file, a changed size or a changed sha256 is one
`CheckpointError` naming the file. Files larger than `HASH_LIMIT` (the full weights of a multi-GB model) are
checked by size only, because the marker records no hash for them.

What the check covers: the files the command wrote. Files a user added later and nested outputs (`eval-*/`,
separate `llmrec evaluate` outputs with their own marker) are not part of the bundle, and the loader never
reads them. Loading itself never unpickles (`llmrec.llm.checkpoint`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from llmrec.base.atomic import OUTPUT_MARKER, OUTPUT_SPEC
from llmrec.base.errors import CheckpointError
from llmrec.base.markers import check_fields, read_marker
from llmrec.llm.checkpoint import check_is_folder

CHECKPOINT_COMMANDS: tuple[str, ...] = ("train-llm", "train-sdpo")
_UNCHECKED = "retrain it, or load it without the check (`--no-verify`; from Python, `verify=False`)"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_file(folder: Path, rel: str, facts: dict[str, Any]) -> None:
    path = folder / rel
    if "link" in facts:
        if not path.is_symlink() or os.readlink(path) != facts["link"]:
            raise CheckpointError(f"{path} was altered after it was written (it should be a link to "
                                  f"{facts['link']}); copy the checkpoint folder again")
        return
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (the bundle manifest {OUTPUT_MARKER} lists it); the checkpoint "
                              f"folder is incomplete: copy it again")
    size = path.stat().st_size
    if size != facts.get("size"):
        raise CheckpointError(f"{path} was altered after it was written ({size} bytes, the manifest records "
                              f"{facts.get('size')}); copy the checkpoint folder again")
    if "sha256" in facts and sha256_file(path) != facts["sha256"]:
        raise CheckpointError(f"{path} was altered after it was written (its sha256 differs from the manifest's); "
                              f"copy the checkpoint folder again")


def verify_bundle(folder: str | os.PathLike) -> dict[str, Any]:
    """Check every file listed in `folder`'s manifest; returns the manifest (the marker's contents).

    Raises `CheckpointError` (one line, naming the file) when the folder has no manifest, was written by
    another command, or a listed file is missing or altered.
    """
    folder = Path(folder)
    check_is_folder(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist; train one with `llmrec train-llm`")
    marker = folder / OUTPUT_MARKER
    if not marker.is_file():
        raise CheckpointError(f"{folder} has no valid bundle manifest ({OUTPUT_MARKER}): it is not a finished "
                              f"`llmrec train-llm` / `llmrec train-sdpo` output; {_UNCHECKED}")
    manifest = read_marker(marker, OUTPUT_SPEC, error=CheckpointError, advice=_UNCHECKED)
    check_fields(manifest, {"command": str, "files": dict[str, Any]}, marker, spec=OUTPUT_SPEC,
                 error=CheckpointError, advice=_UNCHECKED)
    check_fields(manifest["files"], dict.fromkeys(manifest["files"], dict[str, Any]), marker, spec=OUTPUT_SPEC,
                 error=CheckpointError, advice=f"re-run the command that wrote {folder}", prefix="files.")
    if manifest.get("command") not in CHECKPOINT_COMMANDS:
        raise CheckpointError(f"{folder} is a `llmrec {manifest.get('command')}` output, not an LLM checkpoint "
                              f"(`llmrec train-llm` or `llmrec train-sdpo`)")
    for rel, facts in sorted(manifest["files"].items()):
        _check_file(folder, rel, facts)
    return manifest


def listed(manifest: dict[str, Any] | None, rel: str) -> bool:
    """Whether the manifest lists the file `rel` (always True without a manifest: nothing to compare to)."""
    return manifest is None or rel in manifest["files"]
