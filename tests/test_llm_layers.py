"""`train-llm --llm-layers K`: the first K decoder layers of the base, recorded in the checkpoint and honoured on load
(tiny shapes: a 4-layer tiny Llama cut to 2)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from test_llm_support import save_hf_folder, saved_encoder, tiny_config
from tiny import ONE_STEP, TINY_LLAMA, flags

from llmrec.base.config import check_config
from llmrec.base.errors import CheckpointError, ConfigError
from llmrec.data.catalog import Catalog
from llmrec.llm import backbone
from llmrec.llm.checkpoint import load_recommender, read_facts, save_checkpoint
from llmrec.llm.datamodule import prompt_loader
from llmrec.llm.facts import LLMFacts
from llmrec.llm.ranking import score_candidates
from llmrec.llm.train import build_recommender

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def layers(lm) -> int:
    model = lm.model.get_base_model() if hasattr(lm.model, "get_base_model") else lm.model
    return len(backbone.decoder_layers(model))


def train_steps(lm, data, n: int = 2) -> None:
    opt = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-2)
    lm.train()
    for _, batch in zip(range(n), prompt_loader(data.split("train"), lm.builder, 8, True)):
        lm.loss(batch).backward()
        opt.step()
        opt.zero_grad()
    lm.eval()


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_a_tiny_llama_cut_to_two_layers_saves_moves_and_loads_with_identical_scores(finetune, small_data, encoder,
                                                                                     encoder_dir, tmp_path):
    config = tiny_config(tmp_path / "run", tiny_layers=4, llm_layers=2, finetune=finetune)
    lm, facts = build_recommender(config, small_data, encoder)
    assert layers(lm) == 2 and facts.llm_layers == 2
    train_steps(lm, small_data)
    batch = next(iter(prompt_loader(small_data.split("test"), lm.builder, 3, False)))
    expected = score_candidates(lm, batch)
    save_checkpoint(tmp_path / "run" / "ckpt", lm, facts, Catalog.from_dataset(small_data), encoder_dir)
    assert json.loads((tmp_path / "run" / "ckpt" / "checkpoint.json").read_text())["llm_layers"] == 2
    if finetune == "full":  # the cut model is what is saved
        assert json.loads((tmp_path / "run" / "ckpt" / "model" / "config.json").read_text())["num_hidden_layers"] == 2
    else:  # the whole 4-layer tiny base travels with the adapter
        assert json.loads((tmp_path / "run" / "ckpt" / "base" / "config.json").read_text())["num_hidden_layers"] == 4
    shutil.copytree(tmp_path / "run" / "ckpt", tmp_path / "moved")
    shutil.rmtree(tmp_path / "run")  # the original folder and the tiny base cache are gone
    loaded = load_recommender(tmp_path / "moved", small_data)
    assert layers(loaded) == 2 and read_facts(tmp_path / "moved").llm_layers == 2
    torch.testing.assert_close(score_candidates(loaded, batch), expected)


def test_llm_layers_out_of_range_is_refused_in_one_line_naming_the_option(small_data, tmp_path):
    with pytest.raises(ConfigError, match=r"^option --llm-layers: got 5, expected 1\.\.4 \(the decoder layers of "
                                          r"--llm tiny\)$"):
        build_recommender(tiny_config(tmp_path, tiny_layers=4, llm_layers=5, prompt="text"), small_data, None)
    with pytest.raises(ConfigError, match="--llm-layers"):
        check_config(tiny_config(tmp_path, llm_layers=0))
    lm, facts = build_recommender(tiny_config(tmp_path, tiny_layers=4, llm_layers=4, prompt="text"), small_data, None)
    assert layers(lm) == 4 and facts.llm_layers == 4  # all layers: nothing cut, but recorded as asked


def test_facts_without_a_cut_are_written_as_before_and_older_files_load(small_data, tmp_path):
    lm, facts = build_recommender(tiny_config(tmp_path, prompt="text"), small_data, None)
    assert facts.llm_layers is None and "llm_layers" not in facts.to_dict()  # older readers see the same JSON
    cut = LLMFacts.from_dict({**facts.to_dict(), "llm_layers": 3})
    assert cut.llm_layers == 3 and cut.to_dict()["llm_layers"] == 3
    assert LLMFacts.from_dict(facts.to_dict()).llm_layers is None
    with pytest.raises(CheckpointError, match="llm_layers"):
        LLMFacts.from_dict({**facts.to_dict(), "llm_layers": "two"})


def test_a_cut_lora_checkpoint_fingerprints_the_whole_base_and_refuses_another(small_data, encoder, encoder_dir,
                                                                               tmp_path):
    base = save_hf_folder(tmp_path / "base", "llama", small_data)  # a 2-layer Llama folder
    lm, facts = build_recommender(tiny_config(tmp_path, llm=str(base), finetune="lora", llm_layers=1), small_data,
                                  encoder)
    whole = backbone.load_causal_lm(base)
    assert facts.base.fingerprint == backbone.base_fingerprint(base, whole, backbone.load_tokenizer(base))
    train_steps(lm, small_data)
    batch = next(iter(prompt_loader(small_data.split("test"), lm.builder, 3, False)))
    expected = score_candidates(lm, batch)
    save_checkpoint(tmp_path / "ckpt", lm, facts, Catalog.from_dataset(small_data), encoder_dir)
    torch.testing.assert_close(score_candidates(load_recommender(tmp_path / "ckpt", small_data), batch), expected)
    # the same base already cut to one layer and saved is another base (its config differs): refused, as is
    # a base of the same shape with other weights
    cut = backbone.keep_first_layers(backbone.load_causal_lm(base), 1)
    cut.save_pretrained(tmp_path / "cut")
    backbone.load_tokenizer(base).save_pretrained(tmp_path / "cut")
    reseeded = save_hf_folder(tmp_path / "reseeded", "llama", small_data, seed=1)
    for folder, message in ((tmp_path / "cut", "config differs"), (reseeded, "weights differ")):
        with pytest.raises(CheckpointError, match=f"does not fit .*{message}"):
            load_recommender(tmp_path / "ckpt", small_data, llm=folder)


def test_evaluate_predict_and_train_sdpo_work_on_a_cut_checkpoint(small_data, tmp_path):
    from llmrec.commands.cli import main
    from llmrec.data.dataset import ProcessedDataset

    data = small_data.save(tmp_path / "data")
    saved_encoder(ProcessedDataset.load(data), tmp_path / "enc")
    sft, sdpo = tmp_path / "sft", tmp_path / "sdpo"
    assert main(["train-llm", "--data", str(data), "--encoder", str(tmp_path / "enc"), "--out", str(sft),
                 "--cache-dir", str(tmp_path / "cache"), *flags({**TINY_LLAMA, "tiny_layers": 4}), "--llm-layers", "2",
                 *flags(ONE_STEP), "--no-progress-bar"]) == 0
    assert read_facts(sft).llm_layers == 2
    trained = json.loads((sft / "metrics.json").read_text())
    assert main(["evaluate", "--ckpt", str(sft), "--data", str(data), "--device", "cpu"]) == 0
    evaluated = json.loads((sft / "eval-test-score" / "metrics.json").read_text())
    assert evaluated["hr@1"] == trained["test/hr@1"]  # the loaded cut model ranks as the trained one did
    assert main(["predict", "--ckpt", str(sft), "--history", "1,2,3", "--candidates", "4,5,6", "--json",
                 "--device", "cpu"]) == 0
    assert main(["train-sdpo", "--sft", str(sft), "--data", str(data), "--out", str(sdpo), "--max-steps", "1",
                 "--max-valid-samples", "4", "--device", "cpu", "--no-progress-bar"]) == 0
    assert read_facts(sdpo).llm_layers == 2 and layers(load_recommender(sdpo)) == 2
