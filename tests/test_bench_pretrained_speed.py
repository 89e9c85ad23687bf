"""`bench/pretrained.py speed`: the plain Hugging Face scorer and trainer it compares with do the same work as ours
(same scores, same loss), the FLOP count shows logits only where needed, and one tiny run writes the `speed`
section without touching the others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bench_scripts import load_bench_script
from test_llm_support import tiny_config

from llmrec.llm.datamodule import prompt_loader
from llmrec.llm.hybrid import answer_window
from llmrec.llm.logprobs import pack_answers
from llmrec.llm.ranking import score_candidates
from llmrec.llm.train import build_recommender

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench():
    return load_bench_script("pretrained")


@pytest.fixture(scope="module")
def text_lm(small_data, tmp_path_factory):
    lm, _ = build_recommender(tiny_config(tmp_path_factory.mktemp("speed"), prompt="text", tiny_layers=3),
                              small_data, None)
    return lm.eval()


def test_the_plain_scorer_gives_our_scores(bench, text_lm, small_data):
    lm = text_lm
    batch = next(iter(prompt_loader(small_data.split("test"), lm.builder, 3, False)))
    ours = score_candidates(lm, batch)
    plain = torch.stack([bench.plain_scores(lm.model, p, [lm.builder.answer_ids[int(c)] for c in cands],
                                            lm.builder.tokenizer.pad_token_id)
                         for p, cands in zip(bench.prompt_rows(lm, batch), batch.candidates.tolist())])
    assert plain.shape == ours.shape == (3, small_data.split("test")["candidates"].iloc[0].shape[0])
    torch.testing.assert_close(plain, ours, rtol=1e-5, atol=1e-4)
    assert bool((plain.argmax(1) == ours.argmax(1)).all())


def test_the_plain_sft_loss_is_our_windowed_loss(bench, text_lm, small_data):
    lm = text_lm
    batch = next(iter(prompt_loader(small_data.split("train"), lm.builder, 4, True)))
    ids, mask, labels = bench.plain_sft_batch(lm, batch)
    assert bool((mask[:, 0] == 1).all()) and int((labels != -100).sum()) == int((batch.labels != -100).sum())
    with torch.no_grad():
        torch.testing.assert_close(bench.plain_sft_loss(lm.model, ids, mask, labels), lm.loss(batch, hybrid=False))


def test_the_flop_count_shows_logits_only_where_they_are_needed(bench, text_lm, small_data):
    lm = text_lm
    batch = next(iter(prompt_loader(small_data.split("test"), lm.builder, 3, False)))
    flops, by_module = bench.count_flops(lambda: score_candidates(lm, batch))
    width = int(pack_answers(lm, batch.candidates).fed.shape[1])
    # the prompts' last positions and the packed answer rows, nothing of the prompts' other positions
    assert bench.head_flops(by_module) == bench.logit_flops(lm.model, 3 + 3 * width)
    assert width < batch.input_ids.shape[1]
    p = bench.prompt_rows(lm, batch)[0]
    answers = [lm.builder.answer_ids[int(c)] for c in batch.candidates[0].tolist()]
    plain, plain_by_module = bench.count_flops(lambda: bench.plain_scores(lm.model, p, answers, 0))
    longest = max(len(p) + len(a) for a in answers)
    assert bench.head_flops(plain_by_module) == bench.logit_flops(lm.model, len(answers) * longest)
    assert plain > 3 * flops / 3  # one sample (6 candidates) the plain way costs more than three of ours here
    train = next(iter(prompt_loader(small_data.split("train"), lm.builder, 4, True)))
    with torch.no_grad():
        _, train_by_module = bench.count_flops(lambda: lm.loss(train, hybrid=False))
    assert bench.head_flops(train_by_module) == bench.logit_flops(lm.model, 4 * answer_window(train.labels))


def test_cpu_flash_attention_is_counted_as_the_eager_products(bench):
    """torch's counter has no formula for the CPU flash-attention kernel that `sdpa` runs on the CPU: without the
    bench's, a 500-token prompt's attention (~15% of SmolLM2's forward FLOPs) would be missing."""
    from transformers import LlamaConfig, LlamaForCausalLM

    forward, backward = {}, {}
    for impl in ("sdpa", "eager"):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size=50,
                                             attn_implementation=impl))
        ids = torch.ones(2, 64, dtype=torch.long)
        with torch.no_grad():
            forward[impl], by_op = bench.count_flops(lambda: model(ids))
        backward[impl], _ = bench.count_flops(lambda: model(ids).logits.sum().backward())
    assert forward["sdpa"] == forward["eager"]
    attention = 2 * 2 * (2 * 4 * 64 * 64 * 8)  # QK^T and AV: batch 2, 4 heads, 64 x 64 positions, head size 8
    linear = forward["sdpa"] - attention
    assert backward["sdpa"] >= forward["sdpa"] + 2 * attention + linear  # the kernel's backward counted too


def test_a_tiny_speed_run_writes_the_speed_section_only(bench, small_data, tmp_path):
    data = small_data.save(tmp_path / "data")
    results = tmp_path / "pretrained.json"
    results.write_text(json.dumps({"rows": {"mostpop": {"hr@1": 0.28}}, "seeds": [42]}))
    args = ["speed", "--llm", "tiny", "--data", str(data), "--samples", "4", "--full", "--cache-dir",
            str(tmp_path / "cache")]
    with pytest.raises(SystemExit, match="--llm tiny is for development"):
        bench.main([*args, "--write"])  # never into the committed results file
    assert bench.main([*args, "--write", "--results", str(results)]) == 0
    written = json.loads(results.read_text())
    assert written["rows"] == {"mostpop": {"hr@1": 0.28}} and written["seeds"] == [42]
    speed = written["speed"]
    for key in ("score_samples_per_s", "plain_score_samples_per_s", "train_samples_per_s", "plain_train_samples_per_s",
                "score_flops_per_sample", "train_flops_per_sample", "matmul_gflops", "int8_score_samples_per_s",
                "cut_score_samples_per_s", "full_train_samples_per_s", "full_plain_train_samples_per_s"):
        assert speed[key] > 0, key
    assert speed["n_samples"] == speed["score_samples_done"] == 4 and speed["train_samples_done"] == 4
    assert speed["score_vs_plain_max_abs_diff"] < 1e-2 and speed["score_vs_plain_same_top1"] == 1.0
    assert speed["plain_score_flops_per_sample"] > speed["score_flops_per_sample"]
    assert speed["plain_train_flops_per_sample"] > speed["train_flops_per_sample"]
    assert speed["cut_layers"] == 2 and speed["cut_score_flops_per_sample"] < speed["score_flops_per_sample"]
    assert 0 <= speed["int8_top1_agreement"] <= 1 and speed["finetunes_measured"] == ["lora", "full"]
    assert speed["command"].startswith("python bench/pretrained.py speed --llm tiny")
    assert set(speed["load_average"]) >= {"matmul", "score", "train", "full_train", "matmul_end"}
