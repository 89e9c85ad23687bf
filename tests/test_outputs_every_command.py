"""No command writes into a folder it does not own: every command with an output, pointed at a user's folder (or at
another command's output) through the CLI, refuses with one line and leaves every file byte-identical. Damaged
weight files in an input folder are named, never a traceback."""

from __future__ import annotations

import pytest
from test_llm_support import saved_encoder, tiny_dataset
from test_outputs import snapshot, user_folder

from llmrec.commands.cli import main
from llmrec.data.dataset import ProcessedDataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A prepared tiny dataset, an encoder and a tiny SFT checkpoint with a valid ranking (through the CLI)."""
    root = tmp_path_factory.mktemp("every")
    tiny_dataset(n_users=18, n_items=24, seq_len=7, n_candidates=6).save(root / "data")
    saved_encoder(ProcessedDataset.load(root / "data"), root / "enc")
    common = ["--tiny-layers", "2", "--tiny-hidden", "32", "--tiny-heads", "2", "--max-length", "256",
              "--max-steps", "1", "--max-valid-samples", "4", "--device", "cpu", "--cache-dir", str(root / "cache")]
    assert main(["train-llm", "--data", str(root / "data"), "--encoder", str(root / "enc"), "--out",
                 str(root / "sft"), *common]) == 0
    assert main(["evaluate", "--ckpt", str(root / "sft"), "--data", str(root / "data"), "--split", "valid",
                 "--device", "cpu"]) == 0
    return root


def commands(root):
    data, sft = str(root / "data"), str(root / "sft")
    tiny = ["--tiny-layers", "2", "--tiny-hidden", "32", "--tiny-heads", "2", "--max-length", "256", "--max-steps",
            "1", "--device", "cpu", "--cache-dir", str(root / "cache")]
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
    import shutil

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
                 "--tiny-layers", "2", "--tiny-hidden", "32", "--tiny-heads", "2", "--max-length", "256",
                 "--max-steps", "3", "--max-valid-samples", "4", "--device", "cpu", "--lr", "1e30",
                 "--cache-dir", str(trained / "cache")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train-llm: error:" in err[0] and "--lr" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".diverged*"))  # nothing that looks finished, no debris
