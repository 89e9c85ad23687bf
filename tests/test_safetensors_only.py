"""Loading never unpickles and never tracebacks (issue 20, defect 5), with or without `--no-verify`: every weights
file of a checkpoint (a LoRA checkpoint: its tiny base, adapter and slot-token rows; a fully fine-tuned one: its
model; both: the projector and the bundled encoder) is read as safetensors only. A damaged copy (half the bytes, a
flipped header byte, a link to /etc/passwd), a pickled stand-in (`pytorch_model.bin`, `adapter_model.bin`, `.pt`)
and a file lacking or adding tensors are each refused in one line naming the file, through the Python API and
`llmrec predict` (exit 2, one line on stderr). Copies of the session's tiny checkpoints are tampered in tmp_path."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_llm_support import save_hf_folder, tiny_dataset
from tiny import SMALL_DATA

from llmrec.base.errors import CheckpointError
from llmrec.base.weights import describe_mismatch, pickled_files, safetensors_shapes, tensor_mismatch
from llmrec.commands.cli import main
from llmrec.llm import backbone
from llmrec.serving.recommender import Recommender

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # `ckpt` (fully fine-tuned), `lora_ckpt`: conftest.py


@pytest.fixture()
def kinds(ckpt: Path, lora_ckpt: Path) -> dict[str, Path]:
    return {"full": ckpt, "lora": lora_ckpt}


WEIGHTS = {  # every weights file a checkpoint of each kind loads
    "lora": ["base/model.safetensors", "adapter/adapter_model.safetensors", "new_token_rows.safetensors",
             "projector.safetensors", "encoder/encoder.safetensors"],
    "full": ["model/model.safetensors", "projector.safetensors", "encoder/encoder.safetensors"],
}
CASES = [(kind, rel) for kind, rels in WEIGHTS.items() for rel in rels]


def copy_of(folder: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(folder, out, symlinks=True)
    return out


def refused(folder: Path, capsys, verify: bool = False) -> str:
    """The one-line error of loading `folder` through the Python API, checked to be the one `llmrec predict`
    prints (exit 2, that line alone on stderr, nothing on stdout)."""
    with pytest.raises(CheckpointError) as e:
        Recommender.from_pretrained(folder, device="cpu", verify=verify)
    message = str(e.value)
    assert "\n" not in message
    capsys.readouterr()
    argv = ["predict", "--ckpt", str(folder), "--history", "1,2", "--device", "cpu"] + ([] if verify else
                                                                                          ["--no-verify"])
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"llmrec predict: error: {message}\n"
    return message


# ------------------------------------------------------------------------------------------------ damaged files
def half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flipped_header_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF  # inside the JSON header (the first 8 bytes are its length)
    path.write_bytes(bytes(data))


def link_to_passwd(path: Path) -> None:
    path.unlink()
    path.symlink_to("/etc/passwd")


@pytest.mark.parametrize("damage", [half, flipped_header_byte, link_to_passwd], ids=lambda f: f.__name__)
@pytest.mark.parametrize("kind,rel", CASES, ids=[f"{k}-{r}" for k, r in CASES])
def test_a_damaged_weights_file_is_one_line_naming_it(kinds, kind, rel, damage, tmp_path, capsys):
    folder = copy_of(kinds[kind], tmp_path)
    damage(folder / rel)
    message = refused(folder, capsys)
    assert message.startswith(f"{folder / rel} is not a readable safetensors file (Error while deserializing header")
    assert message.endswith("it is damaged or was replaced: copy the checkpoint folder again")
    # with the manifest check (the default) the same copy is refused before anything is read
    assert refused(folder, capsys, verify=True).startswith(f"{folder / rel} was altered after it was written")


# ------------------------------------------------------------------------------------------------ pickles
class Payload:
    """A pickle that, when unpickled, creates the file `marker`: proof that a loader unpickled it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


PICKLED = [("full", "model/model.safetensors", "pytorch_model.bin"),
           ("lora", "base/model.safetensors", "pytorch_model.bin"),
           ("lora", "adapter/adapter_model.safetensors", "adapter_model.bin"),
           ("full", "encoder/encoder.safetensors", "encoder.pt"),
           ("lora", "projector.safetensors", "projector.bin")]


@pytest.mark.parametrize("kind,rel,stand_in", PICKLED, ids=[f"{k}-{s}" for k, _, s in PICKLED])
@pytest.mark.parametrize("content", ["payload", "same-tensors"])
def test_a_pickled_stand_in_is_refused_never_unpickled(kinds, kind, rel, stand_in, content, tmp_path, capsys,
                                                       monkeypatch):
    folder = copy_of(kinds[kind], tmp_path)
    weights = folder / rel
    pickled = weights.with_name(stand_in)
    marker = tmp_path / "unpickled"
    if content == "payload":
        pickled.write_bytes(pickle.dumps({"weight": Payload(marker)}))
    else:  # the very tensors the safetensors file held: still never read
        torch.save(load_file(str(weights)), pickled)
    weights.unlink()

    def never(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", never)
    message = refused(folder, capsys)
    assert message == (f"{pickled}: pickled weights are never loaded, llmrec reads safetensors only (expected "
                       f"{weights}); convert the weights with `model.save_pretrained(folder)` or "
                       f"`safetensors.torch.save_file`")
    assert not marker.exists()
    assert refused(folder, capsys, verify=True) == (f"{weights} is missing (the bundle manifest .llmrec-output.json "
                                                    f"lists it); the checkpoint folder is incomplete: copy it again")


# ------------------------------------------------------------------------------------------------ strict loading
def drop_last(path: Path) -> str:
    tensors = load_file(str(path))
    name = max(tensors)
    del tensors[name]
    save_file(tensors, str(path))
    return f"1 tensor(s) of the model are missing ({name})"


def add_junk(path: Path) -> str:
    tensors = load_file(str(path))
    save_file({**tensors, "junk.weight": torch.zeros(3)}, str(path))
    return "1 tensor(s) are not the model's (junk.weight)"


def only_junk(path: Path) -> str:
    save_file({"junk": torch.zeros(3)}, str(path))  # a weights file holding none of the model's tensors
    return "tensor(s) of the model are missing ("


def reshape_first(path: Path) -> str:
    tensors = load_file(str(path))
    name = min(tensors)
    shape = list(tensors[name].shape)
    tensors[name] = torch.zeros(shape[0] + 1, *shape[1:])
    save_file(tensors, str(path))
    return f"1 tensor(s) have another shape ({name}: {[shape[0] + 1, *shape[1:]]}, the model needs {shape})"


@pytest.mark.parametrize("change", [drop_last, add_junk, only_junk, reshape_first], ids=lambda f: f.__name__)
@pytest.mark.parametrize("kind,rel", CASES, ids=[f"{k}-{r}" for k, r in CASES])
def test_a_file_without_the_models_tensors_is_refused_not_left_random(kinds, kind, rel, change, tmp_path, capsys):
    folder = copy_of(kinds[kind], tmp_path)
    why = change(folder / rel)
    message = refused(folder, capsys)
    assert message.startswith(f"{folder / rel} does not "), message
    if not (rel.endswith("adapter_model.safetensors") and change in (only_junk, reshape_first)):
        assert why in message  # (peft fails on those itself first: its reason is named instead)


def test_the_untouched_checkpoints_load_and_answer_alike_with_and_without_the_check(kinds):
    for folder in kinds.values():
        checked = Recommender.from_pretrained(folder, device="cpu")
        unchecked = Recommender.from_pretrained(folder, device="cpu", verify=False)
        assert checked.recommend([1, 2], k=5) == unchecked.recommend([1, 2], k=5)


# ------------------------------------------------------------------------------------------------ model folders
@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory) -> Path:
    return save_hf_folder(tmp_path_factory.mktemp("hf") / "llama", "llama", tiny_dataset(**SMALL_DATA))


def test_sharded_safetensors_load_and_pickled_or_outside_shards_are_refused(llama_folder, tmp_path):
    whole = backbone.load_causal_lm(llama_folder)
    sharded = tmp_path / "sharded"
    whole.save_pretrained(sharded, max_shard_size="20KB")
    index = json.loads((sharded / backbone.SAFE_INDEX).read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (sharded / backbone.SAFE_WEIGHTS).exists()
    again = backbone.load_causal_lm(sharded)
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), again.state_dict().values()))

    first = min(index["weight_map"].values())
    for bad in ("pytorch_model-00001-of-00002.bin", "../elsewhere.safetensors"):
        (sharded / backbone.SAFE_INDEX).write_text(json.dumps({"weight_map": {**index["weight_map"], "x": bad}}))
        with pytest.raises(CheckpointError, match=rf"model.safetensors.index.json: shard '{bad}' is not a "
                                                  rf"\.safetensors file in .*sharded; llmrec reads safetensors only$"):
            backbone.load_causal_lm(sharded)
    (sharded / backbone.SAFE_INDEX).write_text(json.dumps(index))
    half(sharded / first)
    with pytest.raises(CheckpointError, match=rf"^{sharded / first} is not a readable safetensors file"):
        backbone.load_causal_lm(sharded)


def test_a_model_folder_holding_an_adapter_or_no_weights_is_refused(llama_folder, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(llama_folder, folder)
    (folder / "adapter_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"holds a LoRA adapter \(adapter_config.json\), not a whole model"):
        backbone.load_causal_lm(folder)
    (folder / "adapter_config.json").unlink()
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"m: could not load a causal LM: no weights \(expected "
                                              r"model.safetensors, or model.safetensors.index.json and its shards"):
        backbone.load_causal_lm(folder)


# ------------------------------------------------------------------------------------------------ the helpers
def test_headers_are_read_without_the_tensors_and_odd_paths_are_named(tmp_path):
    save_file({"a": torch.zeros(2, 3), "b": torch.ones(4)}, str(tmp_path / "w.safetensors"))
    assert safetensors_shapes(tmp_path / "w.safetensors") == {"a": (2, 3), "b": (4,)}
    (tmp_path / "dangling.safetensors").symlink_to(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"dangling.safetensors is missing \(a link to .*nowhere, which does "
                                              r"not exist\)$"):
        safetensors_shapes(tmp_path / "dangling.safetensors")
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(CheckpointError, match=r"dir.safetensors is not a regular file; expected a safetensors"):
        safetensors_shapes(tmp_path / "dir.safetensors")
    for name in ("pytorch_model.bin", "x.PT", "y.ckpt", "notes.txt", "model.safetensors"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in pickled_files(tmp_path)] == ["pytorch_model.bin", "x.PT", "y.ckpt"]


def test_mismatch_phrases_by_hand():
    assert tensor_mismatch({"a": (2,), "b": (3,)}, {"a": (2,), "b": (3,)}) is None
    assert tensor_mismatch({"a": (2,), "b": (3,)}, {"a": (5,), "c": (1,)}) == (
        "1 tensor(s) of the model are missing (b); 1 tensor(s) are not the model's (c); 1 tensor(s) have another "
        "shape (a: [5], the model needs [2])")
    assert describe_mismatch(missing=["d", "c", "b", "a"]) == "4 tensor(s) of the model are missing (a, b, c and 1 more)"


# ------------------------------------------------------------------------------------------------ --ckpt
@pytest.mark.parametrize("verify", [True, False], ids=["verify", "no-verify"])
def test_a_checkpoint_path_that_is_a_file_is_named_as_a_file_not_as_missing(tmp_path, capsys, verify):
    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    for path, kind in ((tmp_path / "passwd", "a file"), (Path("/dev/null"), "not a folder")):
        message = refused(path, capsys, verify=verify)
        assert message == (f"checkpoint folder {path} is {kind}; expected the folder that `llmrec train-llm` or "
                           f"`llmrec train-sdpo` wrote (holding checkpoint.json)")
    assert "does not exist" in refused(tmp_path / "nowhere", capsys, verify=verify)
