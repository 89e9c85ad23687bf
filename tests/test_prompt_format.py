"""`--prompt-format plain|chat` and generate mode's stop at the end of the answer line (tiny, offline).

The chat template here is ChatML (SmolLM2's and Qwen2's, without a system turn) on a tiny Llama with a byte-level
BPE tokenizer trained on the catalog, with `<|im_start|>` and `<|im_end|>` added as special tokens while its EOS
stays `</s>`: so the answer's terminator (the template's end-of-turn token) differs from the EOS, as in
Llama-3-style tokenizers, and every test below would notice the two being confused. The real SmolLM2 template is
tested in tests/test_smollm2.py.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmrec.base.errors import ConfigError
from llmrec.data.dataset import ProcessedDataset
from llmrec.llm import backbone
from llmrec.llm.datamodule import prompt_loader
from llmrec.llm.facts import LLMFacts, read_llm_facts
from llmrec.llm.hybrid import IGNORE
from llmrec.llm.prompts import CANDIDATE_SLOT, HISTORY_SLOT, PromptBuilder, chat_wrap
from llmrec.llm.ranking import CandidateTrie, greedy_decode, line_complete, parse_generation, rank

sys.path.insert(0, str(Path(__file__).parent))
from test_llm_support import save_hf_folder, tiny_dataset  # noqa: E402
from tiny import one_thread  # noqa: E402

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> ProcessedDataset:
    root = tmp_path_factory.mktemp("prompt-format")
    tiny_dataset(n_users=12, n_items=16, seq_len=6, n_candidates=5).save(root / "data")
    return ProcessedDataset.load(root / "data")


@pytest.fixture(scope="module")
def chat_llama(data, tmp_path_factory) -> Path:
    """A tiny Llama folder whose tokenizer has a ChatML chat template (2 spare embedding rows for its 2 tokens)."""
    folder = save_hf_folder(tmp_path_factory.mktemp("chat-llama") / "llm", "llama", data, padded_rows=2,
                            tokenizer="bpe")
    tok = backbone.load_tokenizer(folder)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    tok.save_pretrained(folder)
    return folder


def builders(folder: Path, data: ProcessedDataset) -> tuple[PromptBuilder, PromptBuilder]:
    """(plain, chat) builders over the same tokenizer."""
    tok = backbone.load_tokenizer(folder)
    slots = backbone.add_slot_tokens(tok)
    return tuple(PromptBuilder(tok, data.titles(), data.domain, slots, 256, seed=0, prompt_format=f)
                 for f in ("plain", "chat"))


def test_a_chat_prompt_is_the_plain_text_as_the_user_turn_of_the_template(chat_llama, data):
    plain, chat = builders(chat_llama, data)
    tok = chat.tokenizer
    im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert (plain.prompt_format, chat.prompt_format) == ("plain", "chat")
    for history, candidates, template in (([1, 2, 3], [4, 5], 0), ([7], [9, 2, 11], 1), ([3, 4], [6], 2)):
        text = chat.render(history, candidates, template)
        user = plain.render(history, candidates, template)
        assert text == tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                               add_generation_prompt=True)
        assert text == f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        prompt = chat.build(history, candidates)
        ids = prompt.ids
        # the template's markers are single special ids, the tokenizer's BOS is not added before them
        assert ids[0] == im_start and ids.count(im_start) == 2 and ids.count(im_end) == 1
        assert plain.build(history, candidates).ids[0] == tok.bos_token_id
        # slot tokens survive the template: one id per item, in order
        assert ids.count(chat.slots.history) == len(prompt.history) and \
            ids.count(chat.slots.candidate) == len(prompt.candidates)
        assert tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False).count(HISTORY_SLOT) \
            == len(prompt.history)
        opener = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        assert ids[-len(opener):] == opener and opener[0] == im_start


def test_a_chat_answer_is_the_assistant_turn_closed_by_the_end_of_turn_token(chat_llama, data):
    plain, chat = builders(chat_llama, data)
    tok = chat.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert chat_wrap(tok).terminator == chat.terminator == im_end != tok.eos_token_id == plain.terminator
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    for item in range(1, data.n_items + 1):
        assert chat.answer_ids[item] == chat.title_ids[item] + [im_end]
        assert plain.answer_ids[item] == plain.title_ids[item] + [tok.eos_token_id]
        assert chat.answer_text(item) == plain.answer_text(item) == chat.titles[item]
        for template in range(len(chat.templates)):  # the tokenizer's own ids of the whole conversation
            prompt_ids = chat.bos + chat.encode([chat.render([1, 2], [item, 3], template)])[0]
            conversation = tok.apply_chat_template(
                [{"role": "user", "content": plain.render([1, 2], [item, 3], template)},
                 {"role": "assistant", "content": chat.titles[item]}], tokenize=False)
            assert tok(conversation, add_special_tokens=False)["input_ids"] == \
                prompt_ids + chat.answer_ids[item] + newline
    assert not chat.answer_mismatches


def test_training_scoring_and_decoding_use_the_same_answer_ids(chat_llama, data):
    from llmrec.base.config import resolve_config
    from llmrec.llm.train import TrainLLMConfig, build_recommender

    config = resolve_config(TrainLLMConfig, {"data": data.root, "llm": str(chat_llama), "prompt": "text",
                                             "finetune": "full", "prompt_format": "chat", "seed": 0})
    lm, facts = build_recommender(config, data, None)
    assert facts.prompt_format == "chat" and lm.builder.prompt_format == "chat"
    b = lm.builder
    train = next(iter(prompt_loader(data.split("train"), b, 6, with_answer=True)))
    for row, target in zip(train.labels.tolist(), train.targets.tolist()):  # training: the labelled tokens
        assert [t for t in row if t != IGNORE] == b.answer_ids[target]
    table, lengths = b.answer_table()  # score mode
    for item in range(1, data.n_items + 1):
        assert table[item, :lengths[item]].tolist() == b.answer_ids[item]
    trie = CandidateTrie({i: b.answer_ids[i] for i in range(1, data.n_items + 1)})  # constrained decoding

    def paths(node, prefix):
        for t, child in node.items():
            yield from [(child, prefix)] if t is None else paths(child, prefix + [t])

    assert {item: ids for item, ids in paths(trie.root, [])} == {i: b.answer_ids[i] for i in range(1, data.n_items + 1)}
    lm.eval()
    with one_thread():
        batch = next(iter(prompt_loader(data.split("test"), b, 4, with_answer=False)))
        generated, chosen = greedy_decode(lm, batch, constrained=True, hybrid=False)
    for ids, item, row in zip(generated, chosen, batch.candidates.tolist()):
        assert item in row and ids == b.answer_ids[item]


def test_chat_is_refused_in_one_line_for_a_tokenizer_without_a_chat_template(data, tmp_path):
    from tiny import TINY_LLM_TRAINING

    from llmrec.llm.train import TrainLLMConfig, build_recommender

    tok = backbone.load_tokenizer(save_hf_folder(tmp_path / "plain-llm", "llama", data, tokenizer="bpe"))
    with pytest.raises(ConfigError, match="no chat template") as e:
        PromptBuilder(tok, data.titles(), data.domain, backbone.add_slot_tokens(tok), 256, prompt_format="chat")
    assert "\n" not in str(e.value) and "--prompt-format plain" in str(e.value)
    config = TrainLLMConfig(**{**TINY_LLM_TRAINING, "cache_dir": tmp_path / "cache", "data": data.root,
                               "prompt": "text", "prompt_format": "chat"})
    with pytest.raises(ConfigError, match="--prompt-format chat: this tokenizer has no chat template"):
        build_recommender(config, data, None)  # the tiny backbone's tokenizer has none
    with pytest.raises(ConfigError, match="prompt format 'xml' is unknown"):
        PromptBuilder(tok, data.titles(), data.domain, backbone.add_slot_tokens(tok), 256, prompt_format="xml")


# ---------------------------------------------------------------------- generate: stop at the end of the line
def test_line_complete_is_a_newline_after_some_text():
    assert not line_complete("") and not line_complete("\n\n ") and not line_complete("Heat (1995)")
    assert line_complete("Heat (1995)\n") and line_complete("\n Heat\nBabe") and line_complete("x.\n")


def scripted(lm, script: list[int]):
    """A forward hook on the LM head that makes greedy decoding emit `script`, one token per model call (the prompt
    pass gives the first), then the first token again: the model answers as scripted, whatever it learnt."""
    step = {"k": 0}

    def hook(module, args, out):
        token = script[step["k"]] if step["k"] < len(script) else script[0]
        step["k"] += 1
        out = out.clone()
        out[:, -1, token] += 1e4
        return out

    return lm.model.get_output_embeddings().register_forward_hook(hook), step


@pytest.mark.parametrize("prompt_format", ["plain", "chat"])
def test_generate_stops_at_the_end_of_the_answer_line(chat_llama, data, prompt_format):
    from llmrec.base.config import resolve_config
    from llmrec.llm.train import TrainLLMConfig, build_recommender

    config = resolve_config(TrainLLMConfig, {"data": data.root, "llm": str(chat_llama), "prompt": "text",
                                             "finetune": "full", "prompt_format": prompt_format, "seed": 0})
    lm, _ = build_recommender(config, data, None)
    lm.eval()
    b, tok = lm.builder, lm.builder.tokenizer
    batch = next(iter(prompt_loader(data.split("test"), b, 1, with_answer=False)))
    first = int(batch.candidates[0, 0])
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assert len(newline) == 1
    # a blank line first (the rule strips it: no stop), the first candidate's title, a newline (stop), then more
    line = newline + b.title_ids[first]
    script = line + newline + b.title_ids[int(batch.candidates[0, 1])] + newline
    with one_thread():
        handle, step = scripted(lm, script)
        try:
            stopped = rank(lm, batch, "generate", max_new_tokens=len(script) + 5)
            step["k"] = 0
            free = rank(lm, batch, "generate", max_new_tokens=len(script) + 5, stop_at_line_end=False)
        finally:
            handle.remove()
        handle, step = scripted(lm, b.title_ids[first] + [b.terminator] + newline)
        try:
            terminated = rank(lm, batch, "generate", max_new_tokens=20)
        finally:
            handle.remove()
    assert stopped.generated[0] == line + newline  # stopped right after the newline that ends the answer line
    assert free.generated[0] == script + [script[0]] * 5  # before: every token up to max_new_tokens
    assert stopped.chosen == free.chosen == [first]  # the same choice: LLaRA's rule reads the first line
    assert parse_generation(stopped.texts[0], [b.answer_text(c) for c in batch.candidates[0].tolist()]) == 0
    assert terminated.generated[0] == b.title_ids[first] + [b.terminator] and terminated.chosen == [first]


def test_finished_rows_leave_the_batch_and_every_row_decodes_as_alone(chat_llama, data):
    from llmrec.base.config import resolve_config
    from llmrec.llm.train import TrainLLMConfig, build_recommender

    config = resolve_config(TrainLLMConfig, {"data": data.root, "llm": str(chat_llama), "prompt": "text",
                                             "finetune": "full", "prompt_format": "chat", "seed": 0})
    lm, _ = build_recommender(config, data, None)
    lm.eval()
    samples = data.split("test").iloc[:6]
    widths: list[int] = []
    handle = lm.model.register_forward_hook(lambda module, args, out: widths.append(out.logits.shape[0]))
    try:
        with one_thread():
            batch = next(iter(prompt_loader(samples, lm.builder, 6, with_answer=False)))
            together = greedy_decode(lm, batch, constrained=True, hybrid=False)
            steps = list(widths)
            alone = [greedy_decode(lm, one, constrained=True, hybrid=False)
                     for one in prompt_loader(samples, lm.builder, 1, with_answer=False)]
    finally:
        handle.remove()
    assert together == ([g for a in alone for g in a[0]], [c for a in alone for c in a[1]])
    lengths = sorted(len(g) for g in together[0])
    # one prompt pass of 6 rows, then each step decodes only the rows whose answer is not complete
    assert steps == [6] + [sum(n > k for n in lengths) for k in range(1, lengths[-1])]
    assert lengths[0] < lengths[-1]  # answers of different lengths: rows did leave the batch


# ---------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def chat_checkpoint(chat_llama, data, tmp_path_factory) -> Path:
    from tiny import TINY_LLM_TRAINING

    from llmrec.llm.train import TrainLLMConfig, run_train_llm

    out = tmp_path_factory.mktemp("chat-ckpt") / "ckpt"
    config = TrainLLMConfig(**{**TINY_LLM_TRAINING, "llm": str(chat_llama), "data": data.root, "out": out,
                               "prompt": "text", "prompt_format": "chat", "finetune": "full", "max_steps": 2,
                               "max_valid_samples": 4, "max_test_samples": 6, "progress_bar": False})
    with one_thread():
        assert run_train_llm(config) == 0
    return out


def test_a_checkpoint_trained_with_chat_evaluates_with_chat_after_a_move(chat_checkpoint, data, tmp_path):
    from llmrec.llm.checkpoint import load_recommender
    from llmrec.llm.ranker import evaluate_split

    recorded = json.loads((chat_checkpoint / "checkpoint.json").read_text())
    assert recorded["prompt_format"] == "chat" and list(recorded)[-1] == "prompt_format"
    moved = tmp_path / "elsewhere" / "ckpt"
    shutil.copytree(chat_checkpoint, moved)
    with one_thread():
        lm = load_recommender(moved, data)
        assert lm.builder.prompt_format == "chat" and lm.builder.terminator == \
            lm.builder.tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert lm.builder.build([1, 2], [3, 4]).ids[0] == lm.builder.tokenizer.convert_tokens_to_ids("<|im_start|>")
        again = evaluate_split(lm, data, "test", "score", batch_size=4, max_samples=6, seed=0)[1]
    trained = pd.read_parquet(chat_checkpoint / "eval-test-score" / "scores.parquet")
    np.testing.assert_allclose(np.stack(again["scores"]), np.stack(trained["scores"]), rtol=0, atol=1e-5)


def test_an_older_checkpoint_without_the_field_loads_as_plain(chat_checkpoint, data, tmp_path):
    from llmrec.llm.checkpoint import load_recommender

    old = tmp_path / "old"
    shutil.copytree(chat_checkpoint, old)
    facts = json.loads((old / "checkpoint.json").read_text())
    del facts["prompt_format"]
    (old / "checkpoint.json").write_text(json.dumps(facts))
    assert read_llm_facts(old).prompt_format == "plain"
    assert LLMFacts.from_dict(facts).to_dict() == facts  # a plain checkpoint's file is what older versions wrote
    with one_thread():
        lm = load_recommender(old, data)
    assert lm.builder.prompt_format == "plain" and lm.builder.terminator == lm.builder.tokenizer.eos_token_id
    assert "<|im_start|>" not in lm.builder.render([1, 2], [3, 4], 0)
    assert lm.builder.render([1, 2], [3, 4], 0).endswith(":") and CANDIDATE_SLOT in lm.builder.render([1], [3], 0)


def test_sdpo_inherits_the_prompt_format_of_its_sft_checkpoint(chat_checkpoint, tmp_path):
    from llmrec.preference.train import TrainSDPOConfig, output_facts

    facts = read_llm_facts(chat_checkpoint)
    config = TrainSDPOConfig(sft=chat_checkpoint, data=None, out=tmp_path / "sdpo")
    derived = output_facts(chat_checkpoint, facts, tmp_path / "sdpo", config, 1)
    assert derived.prompt_format == "chat" and derived.to_dict()["prompt_format"] == "chat"
    assert derived.stage == "sdpo"
