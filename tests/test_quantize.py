"""`--quantize int8`: dynamic int8 linear layers for ranking on the CPU, LoRA adapters merged first (tiny shapes)."""

from __future__ import annotations

import json

import pytest
import torch
from test_llm_support import tiny_config
from torch import nn

from llmrec.base.errors import ConfigError
from llmrec.llm.datamodule import prompt_loader
from llmrec.llm.hybrid import HybridLM
from llmrec.llm.quantize import check_quantize, merged_copy, quantized
from llmrec.llm.ranking import score_candidates
from llmrec.llm.train import build_recommender

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DynamicLinear = torch.ao.nn.quantized.dynamic.Linear


def trained_lora(small_data, mean_encoder, tmp_path) -> HybridLM:
    """A tiny LoRA recommender whose adapters and slot rows moved away from their initial values."""
    lm, _ = build_recommender(tiny_config(tmp_path, finetune="lora", tiny_layers=3), small_data, mean_encoder)
    opt = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=2e-2)
    lm.train()
    for _, batch in zip(range(3), prompt_loader(small_data.split("train"), lm.builder, 8, True)):
        lm.loss(batch).backward()
        opt.step()
        opt.zero_grad()
    return lm.eval()


def test_int8_scores_are_close_to_float_and_lora_adapters_are_merged_first(small_data, mean_encoder, tmp_path):
    lm = trained_lora(small_data, mean_encoder, tmp_path)
    lora_b = [p for n, p in lm.model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().max()) > 0 for p in lora_b)  # the adapters change the model
    batch = next(iter(prompt_loader(small_data.split("test"), lm.builder, 4, False)))
    expected = score_candidates(lm, batch)
    # merging is exact: the merged copy scores as the LoRA model, and it holds no LoRA layer
    merged = merged_copy(lm.model)
    assert not any("lora" in n for n, _ in merged.named_modules())
    torch.testing.assert_close(score_candidates(HybridLM(merged, lm.builder, lm.prompt, lm.projector, lm.encoder),
                                                batch), expected, rtol=1e-5, atol=1e-4)
    q = quantized(lm, "int8")
    names = dict(q.model.named_modules())
    assert not any("lora" in n for n in names)  # quantised after the merge, not beside float adapters
    linears = [m for m in names.values() if isinstance(m, nn.Linear)]
    assert not linears and sum(isinstance(m, DynamicLinear) for m in names.values()) == 3 * 7 + 1  # + the LM head
    got = score_candidates(q, batch)
    torch.testing.assert_close(got, expected, rtol=0.02, atol=0.05)  # int8 rounding: close, not equal
    assert float((got - expected).abs().max()) > 0  # the int8 model did run
    assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.75
    # the given model is untouched: still LoRA, still float, same scores (it may be saved or trained further)
    assert hasattr(lm.model, "merge_and_unload") and any("lora_A" in n for n, _ in lm.model.named_parameters())
    torch.testing.assert_close(score_candidates(lm, batch), expected)
    assert quantized(lm, "none") is lm


def test_quantize_refuses_a_gpu_other_dtypes_and_other_values_in_one_line():
    check_quantize("none", "cuda", "bfloat16")  # nothing to refuse
    check_quantize("int8", "cpu")
    with pytest.raises(ConfigError, match=r"^option --quantize int8: dynamic int8 linear layers run on the CPU only, "
                                          r"the model is on cuda; use --device cpu or leave --quantize out$"):
        check_quantize("int8", "cuda")
    with pytest.raises(ConfigError, match=r"^option --quantize int8: quantises float32 weights; use --dtype float32"):
        check_quantize("int8", "cpu", "bfloat16")
    with pytest.raises(ConfigError, match=r"^option --quantize: got 'int4', expected one of none, int8$"):
        check_quantize("int4", "cpu")


def test_evaluate_and_predict_rank_with_int8_linear_layers(sft_run, tmp_path, capsys):
    from llmrec.commands.cli import main

    ckpt, data = sft_run / "sft", sft_run / "data"
    common = ["evaluate", "--ckpt", str(ckpt), "--data", str(data), "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "float")]) == 0
    assert main([*common, "--quantize", "int8", "--out", str(tmp_path / "int8")]) == 0
    fp, q = (json.loads((tmp_path / k / "metrics.json").read_text()) for k in ("float", "int8"))
    assert q["quantize"] == "int8" and "quantize" not in fp and q["n_samples"] == fp["n_samples"]
    capsys.readouterr()
    scores = {}
    for how in ("none", "int8"):
        assert main(["predict", "--ckpt", str(ckpt), "--history", "1,2,3", "--candidates", "4,5,6,7", "--json",
                     "--k", "4", "--device", "cpu", "--quantize", how]) == 0
        scores[how] = {i["id"]: i["score"] for i in json.loads(capsys.readouterr().out)["items"]}
    assert scores["none"].keys() == scores["int8"].keys()
    assert all(abs(scores["none"][i] - scores["int8"][i]) < 0.1 for i in scores["none"])
