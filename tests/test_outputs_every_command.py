"""No command writes into a folder it does not own: every command with an output, pointed at a user's folder (or at
another command's output) through the CLI, refuses with one line and leaves every file byte-identical. Damaged
weight files in an input folder are named, never a traceback."""

from __future__ import annotations

import shutil

import pytest
from test_outputs import snapshot, user_folder
from tiny import ONE_STEP, TINY_LLAMA, flags

from llmrec.commands.cli import main


@pytest.fixture(scope="module")
def trained(sft_run, tmp_path_factory):
    """A copy of the session's tiny SFT run (prepared data, an encoder, a one-step checkpoint, through the CLI)
    whose checkpoint also holds a valid ranking."""
    root = tmp_path_factory.mktemp("every") / "run"
    shutil.copytree(sft_run, root)
    assert main(["evaluate", "--ckpt", str(root / "sft"), "--data", str(root / "data"), "--split", "valid",
                 "--device", "cpu"]) == 0
    return root


def commands(root):
    data, sft = str(root / "data"), str(root / "sft")
    tiny = [*flags(TINY_LLAMA), "--max-steps", "1", "--device", "cpu", "--cache-dir", str(root / "cache")]
    return {
        "train-encoder": ["train-encoder", "--data", data, "--model", "mostpop"],
        "train-llm": ["train-llm", "--data", data, "--encoder", str(root / "enc"), *tiny],
        "evaluate": ["evaluate", "--ckpt", sft, "--data", data, "--device", "cpu"],
        "train-sdpo": ["train-sdpo", "--sft", sft, "--data", data, "--max-steps", "1", "--device", "cpu"],
        "rerank": ["rerank", "--scores", sft, "--alpha", "0"],
        "report": ["report", str(root / "sft")],
    }


@pytest.mark.parametrize("command", ["train-encoder", "train-llm", "evaluate", "train-sdpo", "rerank", "report"])
def test_a_users_folder_or_another_commands_output_is_refused_and_left_unchanged(command, trained, tmp_path,
                                                                                 capsys):
    args = commands(trained)[command]
    other = trained / ("enc" if command == "train-llm" else "sft")  # another command's output
    for target in (user_folder(tmp_path / "mine"), other):
        before = snapshot(target)
        assert main([*args, "--out", str(target)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"llmrec {command}: error: ") and str(target) in err[0]
        assert snapshot(target) == before


def test_damaged_weights_in_an_input_folder_are_named(trained, tmp_path, capsys):
    ckpt = tmp_path / "sft"
    shutil.copytree(trained / "sft", ckpt)
    projector = ckpt / "projector.safetensors"
    projector.write_bytes(projector.read_bytes()[:40])  # truncated, as by a full disk or an interrupted copy
    assert main(["evaluate", "--ckpt", str(ckpt), "--data", str(trained / "data"), "--device", "cpu",
                 "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "projector.safetensors" in err[0] and "damaged" in err[0]
    enc = tmp_path / "enc"
    shutil.copytree(trained / "enc", enc)
    (enc / "encoder.safetensors").write_bytes((enc / "encoder.safetensors").read_bytes()[:40])
    assert main(["train-llm", "--data", str(trained / "data"), "--encoder", str(enc), "--out",
                 str(tmp_path / "x"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "encoder.safetensors" in err[0]


def test_a_diverging_llm_training_stops_with_one_line_and_saves_nothing(trained, tmp_path, capsys):
    out = tmp_path / "diverged"
    assert main(["train-llm", "--data", str(trained / "data"), "--encoder", str(trained / "enc"), "--out", str(out),
                 *flags(TINY_LLAMA), *flags({**ONE_STEP, "max_steps": 3}), "--lr", "1e30",
                 "--cache-dir", str(trained / "cache")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train-llm: error:" in err[0] and "--lr" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".diverged*"))  # nothing that looks finished, no debris
