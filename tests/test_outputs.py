"""Issue 9, classes 1-4: no command loses a user's file.

Output folders are owned by this project's marker `.llmrec-output.json`, never by a file name; a command
refuses a user's folder or another command's output, keeps the files a user added to its own previous
output, refuses to overwrite a file the user changed, cleans the temporaries of interrupted runs, and
creates folders and files with the user's umask. The end-to-end tests snapshot every file's hash before
and after pointing `prepare` / `train-encoder` at a folder as `--out`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from data_fixtures import write_grouplens_100k

from llmrec.base.atomic import (
    BUILDING_MARKER,
    OUTPUT_MARKER,
    LegacyOutput,
    atomic_directory,
    atomic_write_text,
    check_output,
    clean_stale_temporaries,
    output_directory,
    read_output_marker,
)
from llmrec.commands.cli import main
from llmrec.base.errors import CheckpointError, ConfigError, DataError


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `folder` (hidden ones too); folders map to 'dir'."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def user_folder(path: Path) -> Path:
    """A researcher's folder holding another tool's checkpoint.json, a thesis, a config and metrics."""
    path.mkdir(parents=True)
    (path / "checkpoint.json").write_text(json.dumps({"format": "llmrec-llm-checkpoint", "tool": "other"}))
    (path / "thesis.tex").write_text("\\chapter{Results}\n")
    (path / "config.yaml").write_text("lr: 0.1\n")
    (path / "metrics.json").write_text('{"hr@1": 0.5}\n')
    (path / "figures").mkdir()
    (path / "figures" / "plot.png").write_bytes(b"\x89PNG fake")
    return path


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and " INFO " not in line]
    assert len(lines) == 1, lines
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return write_grouplens_100k(tmp_path_factory.mktemp("raw") / "ml-100k")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, raw) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "ml"
    assert main(["prepare", "--raw", str(raw), "--out", str(out), "--no-download"]) == 0
    return out


def prepare_argv(raw: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", "--raw", str(raw), "--out", str(out), "--no-download", *extra]


def encoder_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train-encoder", "--data", str(data), "--out", str(out), "--model", "mostpop", *extra]


# ------------------------------------------------------------------------------------------------ class 1 + 2
@pytest.mark.parametrize("command", ["prepare", "train-encoder"])
def test_a_users_folder_is_refused_and_left_byte_identical(tmp_path, raw, prepared, command, capsys):
    out = user_folder(tmp_path / "mine")
    before = snapshot(out)
    argv = prepare_argv(raw, out) if command == "prepare" else encoder_argv(prepared, out)
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"output folder {out} exists, is not empty and is not" in line and "choose another --out" in line
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary left beside it


def test_a_file_named_like_ours_proves_nothing(tmp_path):
    """A bare checkpoint.json / meta.json / config.yaml never makes a folder replaceable (class 2)."""
    out = user_folder(tmp_path / "ckpt")
    (out / "meta.json").write_text("{}")
    for command in ("train-llm", "evaluate", "prepare", "train-encoder"):
        with pytest.raises(ConfigError, match="is not empty and is not a previous `llmrec"):
            check_output(out, command)
    # a forged marker for another command, or a damaged one, is refused too
    atomic_write_text(out / OUTPUT_MARKER, json.dumps({"format": "llmrec-output", "format_version": 1,
                                                       "command": "prepare", "files": {}}))
    with pytest.raises(ConfigError, match="is a `llmrec prepare` output, not a previous `llmrec train-llm` output"):
        check_output(out, "train-llm")
    (out / OUTPUT_MARKER).write_text("{not json")
    with pytest.raises(ConfigError, match=r"ckpt/\.llmrec-output\.json: damaged \(not valid JSON: .*\); expected an "
                                          r"llmrec output written by an llmrec command; refusing to overwrite the "
                                          r"output folder .*ckpt: choose another --out$"):
        check_output(out, "train-llm")


@pytest.mark.parametrize("command", ["prepare", "train-encoder"])
def test_another_commands_output_is_refused(tmp_path, raw, prepared, command, capsys):
    """The issue's example: an output folder of one stage given as another stage's --out."""
    if command == "train-encoder":
        target = prepared  # a prepared data folder as the encoder's --out
        argv = encoder_argv(prepared, target)
    else:
        target = tmp_path / "enc"
        assert main(encoder_argv(prepared, target)) == 0
        argv = prepare_argv(raw, target)
    before = snapshot(target)
    capsys.readouterr()
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    other = "prepare" if command == "train-encoder" else "train-encoder"
    assert f"is a `llmrec {other}` output" in line and "refusing to overwrite it" in line
    assert snapshot(target) == before


def test_a_file_or_a_symlink_as_out_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        check_output(tmp_path / "f", "prepare")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ConfigError, match="is a symbolic link"):
        check_output(tmp_path / "link", "prepare")


# ------------------------------------------------------------------------------------------------ class 3
@pytest.mark.parametrize("command", ["prepare", "train-encoder"])
def test_replacing_an_output_keeps_the_files_the_user_added(tmp_path, raw, prepared, command):
    out = tmp_path / "out"
    argv = prepare_argv(raw, out) if command == "prepare" else encoder_argv(prepared, out)
    assert main(argv) == 0
    written = set(read_output_marker(out)["files"])
    assert "config.yaml" in written and "notes.txt" not in written
    (out / "notes.txt").write_text("my notes")
    (out / "figures").mkdir()
    (out / "figures" / "plot.png").write_bytes(b"png")
    (out / "empty-dir").mkdir()
    mine = {k: v for k, v in snapshot(out).items() if k.split("/")[0] in ("notes.txt", "figures", "empty-dir")}
    assert main(argv + ["--seed", "7"]) == 0
    after = snapshot(out)
    assert {k: after[k] for k in mine} == mine  # every file the user added, byte for byte, at the same place
    marker = read_output_marker(out)
    assert marker["command"] == command and set(marker["files"]) == written
    config = (out / "config.yaml").read_text()
    assert "seed: 7" in config  # and the command's own files were replaced
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_file_the_user_changed_is_not_overwritten(tmp_path, prepared, capsys):
    out = tmp_path / "enc"
    assert main(encoder_argv(prepared, out)) == 0
    (out / "metrics.json").write_text('{"my": "edit"}\n')
    before = snapshot(out)
    capsys.readouterr()
    assert main(encoder_argv(prepared, out)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "metrics.json changed after `llmrec train-encoder` wrote it" in line
    assert snapshot(out) == before


def test_legacy_output_is_recognised_by_content_and_user_files_kept(tmp_path):
    """Outputs from before the marker: the command's own content check, not a file name, proves them."""
    def is_ours(p: Path) -> bool:
        return json.loads((p / "meta.json").read_text()).get("format") == "tool-v0"

    legacy = LegacyOutput(is_ours, ("meta.json", "*.parquet", "logs"))
    old = tmp_path / "old"
    (old / "logs").mkdir(parents=True)
    (old / "meta.json").write_text('{"format": "tool-v0"}')
    (old / "a.parquet").write_text("old table")
    (old / "logs" / "x.csv").write_text("old log")
    (old / "README.md").write_text("mine")
    with output_directory(old, "prepare", legacy=legacy) as tmp:
        (tmp / "meta.json").write_text('{"format": "tool-v0", "new": true}')
    assert sorted(p.name for p in old.iterdir()) == [OUTPUT_MARKER, "README.md", "meta.json"]
    assert (old / "README.md").read_text() == "mine" and "new" in (old / "meta.json").read_text()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "meta.json").write_text('{"format": "something else"}')
    with pytest.raises(ConfigError, match="is not empty and is not"):
        check_output(tmp_path / "other", "prepare", legacy=legacy)


def test_legacy_encoder_checkpoint_without_marker_is_replaced(tmp_path, prepared):
    """An encoder checkpoint written before the marker (config.yaml with an `encoder:` section)."""
    out = tmp_path / "enc"
    assert main(encoder_argv(prepared, out)) == 0
    (out / OUTPUT_MARKER).unlink()
    (out / "notes.txt").write_text("mine")
    assert main(encoder_argv(prepared, out, "--seed", "5")) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "metrics.json").read_text())["seed"] == 5
    # but a config.yaml without that section is a user's file
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "config.yaml").write_text("encoder: {format: other}\n")
    with pytest.raises(CheckpointError, match="not an encoder checkpoint; refusing to overwrite"):
        check_output(tmp_path / "u", "train-encoder",
                     legacy=__import__("llmrec.encoders.checkpoint", fromlist=["x"]).LEGACY_OUTPUT,
                     what="an encoder checkpoint", error=CheckpointError)


def test_a_clash_keeps_the_users_file_under_another_name(tmp_path):
    out = tmp_path / "o"
    with output_directory(out, "evaluate") as tmp:
        (tmp / "metrics.json").write_text("1")
    (out / "report.md").write_text("mine")
    with output_directory(out, "evaluate") as tmp:
        (tmp / "metrics.json").write_text("2")
        (tmp / "report.md").write_text("generated")
    assert (out / "report.md").read_text() == "generated" and (out / "report.md.kept").read_text() == "mine"


def test_destination_created_during_the_run_is_not_touched(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(DataError, match=r"changed while llmrec prepare ran; the finished output was saved as"), \
            output_directory(out, "prepare", error=DataError) as tmp:
        (tmp / "result.txt").write_text("done")
        out.mkdir()
        (out / "mine.txt").write_text("mine")
    assert snapshot(out) == {"mine.txt": hashlib.sha256(b"mine").hexdigest()}
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("o.llmrec-")]
    assert len(kept) == 1 and (kept[0] / "result.txt").read_text() == "done"
    assert read_output_marker(kept[0])["command"] == "prepare"


def test_a_failed_run_leaves_the_previous_output_untouched(tmp_path):
    out = tmp_path / "o"
    with output_directory(out, "train-llm") as tmp:
        (tmp / "w.bin").write_bytes(b"good")
    before = snapshot(out)
    with pytest.raises(RuntimeError), output_directory(out, "train-llm") as tmp:
        (tmp / "w.bin").write_bytes(b"half")
        raise RuntimeError("killed")
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


# ------------------------------------------------------------------------------------------------ class 4
def building_marker(folder: Path, pid: int, host: str | None = None, age: float = 0.0) -> None:
    started = time.time() - age
    (folder / BUILDING_MARKER).write_text(json.dumps({
        "format": "llmrec-building", "target": "out", "pid": pid, "host": host or socket.gethostname(),
        "started": "x", "started_unix": started}))


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_of_this_project_are_removed_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    stale_dead = tmp_path / ".out.abc123.tmp"
    stale_old_host = tmp_path / ".out.def456.tmp"
    live = tmp_path / ".out.ghi789.tmp"
    recent_other_host = tmp_path / ".out.jkl012.tmp"
    users = tmp_path / ".out.mine.tmp"  # the same name pattern but no marker: not ours
    other_target = tmp_path / ".other.abc123.tmp"
    for d in (stale_dead, stale_old_host, live, recent_other_host, users, other_target):
        d.mkdir()
        (d / "data.bin").write_bytes(b"x")
    building_marker(stale_dead, dead_pid())
    building_marker(stale_old_host, 1, host="another-host", age=8 * 86400)
    building_marker(live, os.getpid())
    building_marker(recent_other_host, 1, host="another-host", age=3600)
    building_marker(other_target, dead_pid())
    removed = clean_stale_temporaries(out)
    assert sorted(removed) == sorted([stale_dead, stale_old_host])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".out.ghi789.tmp", ".out.jkl012.tmp", ".out.mine.tmp", ".other.abc123.tmp"])


def test_an_interrupted_run_is_cleaned_up_by_the_next_one(tmp_path):
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from llmrec.base.atomic import output_directory
        with output_directory(Path({str(out)!r}), "train-encoder") as tmp:
            (tmp / "weights.bin").write_bytes(b"half")
            os._exit(1)  # killed: no cleanup runs
        """)
    assert subprocess.run([sys.executable, "-c", script], check=False).returncode == 1
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert len(left) == 1 and (left[0] / "weights.bin").is_file() and not out.exists()
    with output_directory(out, "train-encoder") as tmp:
        (tmp / "weights.bin").write_bytes(b"full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "weights.bin").read_bytes() == b"full" and not (out / BUILDING_MARKER).exists()


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_folders_and_files_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with output_directory(tmp_path / "o", "prepare") as tmp:
            atomic_write_text(tmp / "a.txt", "a")
            (tmp / "sub").mkdir()
        with atomic_directory(tmp_path / "cache") as tmp:
            (tmp / "b.txt").write_text("b")
    finally:
        os.umask(old)
    mode = {p: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "o", tmp_path / "cache")}
    assert mode == {tmp_path / "o": 0o777 & ~umask, tmp_path / "cache": 0o777 & ~umask}
    assert stat.S_IMODE((tmp_path / "o" / "a.txt").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "o" / OUTPUT_MARKER).stat().st_mode) == 0o666 & ~umask


def test_umask_of_a_real_command(tmp_path, raw):
    old = os.umask(0o022)
    try:
        assert main(prepare_argv(raw, tmp_path / "p")) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "p").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "p" / "config.yaml").stat().st_mode) == 0o644


def test_the_current_folder_is_never_an_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for given in (".", "..", str(tmp_path)):
        with pytest.raises(ConfigError, match="is the current folder or its parent"):
            check_output(Path(given), "prepare")


def test_a_nested_output_goes_with_the_output_it_describes_unless_the_user_touched_it(tmp_path, caplog):
    ckpt = tmp_path / "ckpt"
    with output_directory(ckpt, "train-llm") as tmp:
        (tmp / "weights.bin").write_bytes(b"v1")
    for name in ("eval-test-score", "eval-test-generate"):
        with output_directory(ckpt / name, "evaluate") as tmp:
            (tmp / "metrics.json").write_text('{"hr@1": 0.3}')
    assert read_output_marker(ckpt)["files"].keys() == {"weights.bin"}  # nested outputs are their own
    (ckpt / "eval-test-generate" / "notes.txt").write_text("mine")  # the user added a file to one of them
    with caplog.at_level("INFO", logger="llmrec.base.atomic"), output_directory(ckpt, "train-llm") as tmp:
        (tmp / "weights.bin").write_bytes(b"v2")
    assert (ckpt / "weights.bin").read_bytes() == b"v2"
    assert not (ckpt / "eval-test-score").exists()  # llmrec's own evaluation of the replaced weights: dropped
    assert (ckpt / "eval-test-generate" / "notes.txt").read_text() == "mine"  # the touched one is kept, whole
    assert read_output_marker(ckpt / "eval-test-generate")["command"] == "evaluate"
    assert "you changed or added files in it" in caplog.text and "dropped" in caplog.text


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_file_of_an_output_follows_the_umask_whoever_wrote_it(tmp_path, umask):
    """safetensors' save_file (and so save_pretrained) writes 0600 files; an output folder fixes that once."""
    import torch
    from safetensors.torch import save_file

    user = tmp_path / "out"
    previous = os.umask(umask)
    try:
        with output_directory(user, "train-llm") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "projector.safetensors"))
            (tmp / "model").mkdir()
            save_file({"w": torch.zeros(2)}, str(tmp / "model" / "model.safetensors"))
            os.chmod(tmp / "model", 0o700)
            (tmp / "run.sh").write_text("#!/bin/sh\n")
            os.chmod(tmp / "run.sh", 0o700)
            (tmp / "config.yaml").write_text("a: 1\n")
        with atomic_directory(tmp_path / "cache") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "weights.safetensors"))
    finally:
        os.umask(previous)
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    assert modes == {"out": dir_mode, "out/projector.safetensors": file_mode, "out/model": dir_mode,
                     "out/model/model.safetensors": file_mode, "out/run.sh": dir_mode, "out/config.yaml": file_mode,
                     f"out/{OUTPUT_MARKER}": file_mode, "cache": dir_mode, "cache/weights.safetensors": file_mode}
