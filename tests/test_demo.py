"""`llmrec demo` end to end at a tiny scale: a toy ML-100K in the GroupLens raw format, tiny presets given as files.

One run through the real command line with its output captured (so stdout and stderr are not terminals), then
a second run that must reuse every stage, then `--fresh`, which must retrain. The results table is checked to
rank the same test samples in every row, with MostPop's figures recomputed by hand from the training counts.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from contextlib import redirect_stdout
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from tiny import TOY_LLAMA, yaml_lines
from data_fixtures import write_grouplens_100k

from llmrec.base.config import resolve_config
from llmrec.data.dataset import ProcessedDataset
from llmrec.data.sampling import ranked_subset
from llmrec.commands.demo import (
    STAGES,
    DemoConfig,
    DemoPaths,
    Output,
    Stage,
    StageRunner,
    check_same_samples,
    default_encoder_preset,
    evaluate_outputs,
    llm_output,
    prepare_output,
    preset_path,
    report_outputs,
    run_demo,
    sample_keys,
    sdpo_output,
)
from llmrec.commands.demo_report import ResultRow, curves_from_table, loss_window, results_text, running_mean, stage_lines
from llmrec.base.errors import ConfigError, DataError
from llmrec.commands.evaluate import EvaluateConfig, run_evaluate
from llmrec.evaluation.ranked_metrics import ranked_fairness
from llmrec.evaluation.scores import read_scores
from llmrec.evaluation.groups import item_groups

WORDS = ["Red", "Blue", "Night", "River", "Storm", "Garden", "City", "Moon", "Fire", "Glass", "Stone", "Wolf"]
N_ITEMS, N_USERS, LENGTH = 40, 50, 12
SEED = 42
TEST_SAMPLES, GENERATE_SAMPLES, VALID_SAMPLES = 16, 6, 12
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROW_LABELS = ("MostPop", "SASRec", "SFT LLM", "S-DPO LLM", "S-DPO + re-ranking")
STAGE_LINE = re.compile(r"^== stage (\d)/(\d) (\w+)", re.MULTILINE)
DONE_LINE = re.compile(r"^-- (\w+) done in \d+(m\d\ds|s)$", re.MULTILINE)


def write_raw(folder: Path) -> Path:
    """u.data / u.item of 50 users who each walk 12 consecutive items of a 40-item catalog (learnable order)."""
    rows = []
    for u in range(1, N_USERS + 1):
        start = (u * 7) % N_ITEMS
        rows += [(u, (start + j) % N_ITEMS + 1, 4, 1_000_000_000 + j * 86400) for j in range(LENGTH)]
    titles = {i: f"{WORDS[i % 12]} {WORDS[(i * 5 + 3) % 12]} ({1980 + i})" for i in range(1, N_ITEMS + 1)}
    return write_grouplens_100k(folder, rows, titles)


def write_presets(root: Path) -> dict[str, Path]:
    """Tiny presets (one-layer models, a few optimiser steps) as YAML files, as a user would write them."""
    files = {
        "encoder": "model: sasrec\nhidden-size: 16\nnum-layers: 1\nnum-heads: 1\nmax-length: 20\nmax-epochs: 2\n"
                   "patience: 1\nbatch-size: 64\ndevice: cpu\n",
        "llm": f"llm: tiny\n{yaml_lines(TOY_LLAMA)}finetune: full\n"
               f"prompt: hybrid\ncurriculum: linear\nepochs: 1\nbatch-size: 16\neval-batch-size: 16\nlr: 0.003\n"
               f"max-train-samples: 48\nmax-valid-samples: 8\ncache-dir: {root / 'cache'}\ndevice: cpu\n",
        "sdpo": "negatives: 3\nloss: sdpo\nepochs: 1\nbatch-size: 16\neval-batch-size: 16\nlr: 0.001\n"
                "max-train-samples: 32\nmax-valid-samples: 8\ndevice: cpu\n",
    }
    out = {}
    for name, text in files.items():
        out[name] = root / f"{name}-tiny.yaml"
        out[name].write_text(text)
    return out


@dataclass
class DemoRun:
    root: Path
    out: Path
    data: Path
    options: dict
    stdout: str
    stderr: str = ""
    before: dict | None = None  # the previous run's demo-results.json and mtimes

    @property
    def results(self) -> dict:
        return json.loads((self.out / "demo-results.json").read_text())


def options(root: Path) -> dict:
    presets = write_presets(root)
    return {"raw": root / "raw", "data": root / "data", "out": root / "out", "seed": SEED,
            "encoder_preset": presets["encoder"], "llm_preset": presets["llm"], "sdpo_preset": presets["sdpo"],
            "llm_test_samples": TEST_SAMPLES, "generate_samples": GENERATE_SAMPLES, "valid_samples": VALID_SAMPLES}


def run_in_process(opts: dict, **more) -> str:
    """Run the demo in this process; its stdout."""
    config = resolve_config(DemoConfig, {k: str(v) if isinstance(v, Path) else v for k, v in {**opts, **more}.items()})
    buffer = StringIO()
    with redirect_stdout(buffer):
        assert run_demo(config) == 0
    return buffer.getvalue()


def mtimes(run: DemoRun) -> dict[str, float]:
    """Modification times of what each stage writes."""
    files = {"prepare": run.data / "meta.json", "mostpop": run.out / "mostpop" / "encoder.safetensors",
             "sasrec": run.out / "sasrec" / "encoder.safetensors",
             "llm": run.out / "llm-hybrid-sasrec" / "metrics.json", "sdpo": run.out / "sdpo-hybrid-sasrec" / "metrics.json",
             "evaluate": run.out / "sdpo-hybrid-sasrec" / "eval-test-generate" / "metrics.json",
             "subset": run.out / "sasrec" / "eval-test-score" / "metrics.json",
             "rerank": run.out / "sdpo-hybrid-sasrec" / "rerank-popularity" / "metrics.json",
             "report": run.out / "report.md", "figures": run.out / "report" / "hr1.png"}
    return {k: f.stat().st_mtime_ns if f.exists() else None for k, f in files.items()}


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> DemoRun:
    """The demo through the command line, stdout and stderr captured (not terminals)."""
    root = tmp_path_factory.mktemp("demo")
    write_raw(root / "raw")
    opts = options(root)
    argv = [sys.executable, "-m", "llmrec", "demo", "--threads", "2"]
    for key, value in opts.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE")}
    done = subprocess.run(argv, check=False, cwd=root, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return DemoRun(root, root / "out", root / "data", opts, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def second(first) -> DemoRun:
    """The same demo again: every stage must be reused."""
    before = {"mtimes": mtimes(first), "results": first.results}
    time.sleep(0.01)
    return DemoRun(first.root, first.out, first.data, first.options, run_in_process(first.options), before=before)


# ------------------------------------------------------------------------------------------------ the first run
def test_output_off_a_terminal_has_stage_lines_and_no_control_characters(first):
    output = first.stdout + first.stderr
    assert "\r" not in output and "\x1b" not in output
    stages = STAGE_LINE.findall(first.stdout)
    assert [(int(i), int(n), name) for i, n, name in stages] == [(i + 1, 8, s) for i, s in enumerate(STAGES)]
    assert DONE_LINE.findall(first.stdout) and [m.group(1) for m in DONE_LINE.finditer(first.stdout)] == list(STAGES)
    assert "reusing" not in first.stdout
    # the plain progress lines that replace bars off a terminal
    assert re.search(r"llmrec\.progress: ranking test \(score\): 16/16 samples \(100%\).*\(done\)", first.stderr)
    assert re.search(r"llmrec\.progress: ranking test \(generate\): 6/6 samples", first.stderr)


def test_results_table_is_printed_with_every_row(first):
    table = first.stdout[first.stdout.index("results on the same 16 test samples"):]
    lines = table.splitlines()
    assert lines[1].split() == ["model", "hr@1", "valid_ratio", "candidates/ndcg@5", "mgu@1"]
    results = first.results["table"]
    for label, line in zip(ROW_LABELS, lines[2:7]):
        assert line.startswith(label)
        cells = line[len(label):].split()
        expected = [results[label][k] for k in ("hr@1", "valid_ratio", "candidates/ndcg@5", "mgu@1")]
        assert cells == ["-" if v is None else f"{v:.4f}" for v in expected]
    # valid_ratio only for the two LLM rows (generate mode), every other cell is a number
    assert [results[label]["valid_ratio"] is None for label in ROW_LABELS] == [True, True, False, False, True]
    assert all(results[label][k] is not None for label in ROW_LABELS for k in ("hr@1", "candidates/ndcg@5", "mgu@1"))


def test_demo_results_json(first):
    results = first.results
    assert set(results["stages"]) == set(STAGES)
    for stage in results["stages"].values():
        assert isinstance(stage["seconds"], float) and stage["seconds"] >= 0 and stage["reused"] is False
    table = results["table"]
    assert results["mostpop_hr@1"] == table["MostPop"]["hr@1"]
    assert results["sasrec_hr@1"] == table["SASRec"]["hr@1"] == results["stages"]["encoder"]["hr@1"]
    assert results["stages"]["llm"]["hr@1"] == table["SFT LLM"]["hr@1"]
    assert results["stages"]["sdpo"]["hr@1"] == table["S-DPO LLM"]["hr@1"]
    assert results["stages"]["rerank"]["hr@1"] == table["S-DPO + re-ranking"]["hr@1"]
    assert results["stages"]["prepare"]["hr@1"] is None
    assert results["n_test_samples"] == TEST_SAMPLES
    assert 0 < sum(s["seconds"] for s in results["stages"].values()) <= results["wall_seconds"]
    sdpo = json.loads((first.out / "sdpo-hybrid-sasrec" / "metrics.json").read_text())
    assert table["S-DPO LLM"]["hr@1"] == pytest.approx(sdpo["test/hr@1"])
    generated = json.loads((first.out / "sdpo-hybrid-sasrec" / "eval-test-generate" / "metrics.json").read_text())
    assert generated["n_samples"] == GENERATE_SAMPLES and "mgu@1" in generated  # fairness added by evaluate
    assert table["S-DPO LLM"]["valid_ratio"] == generated["valid_ratio"]
    assert results["stages"]["evaluate"]["hr@1"] == generated["hr@1"]


def test_every_row_ranks_the_same_test_samples(first):
    data = ProcessedDataset.load(first.data)
    test = data.split("test")
    assert TEST_SAMPLES < len(test)  # a real subset, so a different subset would show
    expected = sample_keys(ranked_subset(test, TEST_SAMPLES, SEED))
    folders = [first.out / "mostpop" / "eval-test-score", first.out / "sasrec" / "eval-test-score",
               first.out / "llm-hybrid-sasrec" / "eval-test-score", first.out / "sdpo-hybrid-sasrec" / "eval-test-score",
               first.out / "sdpo-hybrid-sasrec" / "rerank-popularity"]
    tables = {str(f): read_scores(f) for f in folders}
    for table in tables.values():
        assert sample_keys(table) == expected
    check_same_samples(tables)
    other = ranked_subset(test, TEST_SAMPLES, SEED + 1)
    with pytest.raises(DataError, match="other test samples"):
        check_same_samples({**tables, "another seed": other})


def test_mostpop_row_equals_a_hand_count(first):
    """MostPop's hr@1 and ndcg@5 on the demo's samples, from the training counts (ties: the lower id first)."""
    data = ProcessedDataset.load(first.data)
    counts = np.zeros(N_ITEMS + 1)
    for seq in data.train_sequences():
        for item in seq:
            counts[item] += 1
    hits, gains = [], []
    for _, row in ranked_subset(data.split("test"), TEST_SAMPLES, SEED).iterrows():
        key = {int(c): (counts[c], -int(c)) for c in row["candidates"]}
        rank = sum(k > key[int(row["target"])] for k in key.values())
        hits.append(rank == 0)
        gains.append(1 / math.log2(rank + 2) if rank < 5 else 0.0)
    row = first.results["table"]["MostPop"]
    assert row["hr@1"] == pytest.approx(np.mean(hits))
    assert row["candidates/ndcg@5"] == pytest.approx(np.mean(gains))


@pytest.mark.parametrize("model", ["mostpop", "sasrec"])
def test_evaluate_on_the_demos_encoders_gives_train_encoders_numbers(first, model, tmp_path):
    """`llmrec evaluate` of a demo encoder on the whole test split: exactly the metrics `train-encoder` computed."""
    data = ProcessedDataset.load(first.data)
    with redirect_stdout(StringIO()):
        run_evaluate(EvaluateConfig(ckpt=first.out / model, data=first.data, split="test", out=tmp_path / "eval"))
    own = json.loads((first.out / model / "metrics.json").read_text())["test"]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_samples"] == own["n_samples"] == len(data.split("test"))
    assert {k: v for k, v in own.items() if k != "eval_seconds"} == {k: metrics[k] for k in own if k != "eval_seconds"}
    assert metrics["hr@1"] == own["candidates/hr@1"]
    fairness = ranked_fairness(read_scores(tmp_path / "eval"), data, item_groups(data, "popularity"))
    assert fairness["mgu@1"] == metrics["mgu@1"] == own["candidates/mgu@1"]


def test_report_has_valid_png_figures_and_the_table(first):
    report = (first.out / "report.md").read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report)
    assert {"report/training-curves.png", "report/hr1.png", "report/fairness/gp-gh.png"} <= set(figures)
    for rel in figures:
        data = (first.out / rel).read_bytes()
        assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width > 100 and height > 100
    table = first.results["table"]
    for label in ROW_LABELS:
        cells = [table[label][k] for k in ("hr@1", "valid_ratio", "candidates/ndcg@5", "mgu@1")]
        assert f"| {label} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in cells) + " |" in report
    fairness = (first.out / "report" / "fairness" / "report.md").read_text()
    assert all(f"| {label} |" in fairness for label in ROW_LABELS)


def test_training_curves_come_from_each_stages_csv_log(first):
    import pandas as pd

    for folder, valid_key in (("sasrec", "valid/candidates/hr@1"), ("llm-hybrid-sasrec", "valid/hr@1"),
                              ("sdpo-hybrid-sasrec", "valid/hr@1")):
        table = pd.read_csv(first.out / folder / "logs" / "csv" / "metrics.csv")
        curves = curves_from_table(folder, table)
        assert curves.valid_key == valid_key and len(curves.loss) >= 1 and len(curves.valid) >= 1
        loss_key = {"sasrec": "train/loss_epoch"}.get(folder, "train/loss")  # the encoder logs its step loss once
        assert curves.loss.tolist() == table[loss_key].dropna().tolist()           # an epoch: its epoch mean is used
        assert curves.valid.tolist() == table[valid_key].dropna().tolist()


# ------------------------------------------------------------------------------------------------ reuse, fresh
def test_a_second_run_reuses_every_stage(second):
    assert mtimes(second) == second.before["mtimes"]  # nothing was written again
    for i, name in enumerate(STAGES):
        line = re.search(rf"^== stage {i + 1}/8 {name}: (.*)$", second.stdout, re.MULTILINE).group(1)
        assert line.startswith("reusing") == (name != "predict"), line
    results, earlier = second.results, second.before["results"]
    for name in STAGES:
        stage = results["stages"][name]
        if name == "predict":
            assert stage["reused"] is False and stage["seconds_from"] == "this run"
        else:  # the seconds of the run that made the output
            assert stage["reused"] is True and stage["seconds_from"] == "earlier run"
            assert stage["seconds"] == earlier["stages"][name]["seconds"]
    assert results["table"] == earlier["table"]
    assert "results on the same 16 test samples" in second.stdout


def test_a_missing_baseline_is_rebuilt_without_retraining_the_llms(second):
    """MostPop is no input of the LLM stages: removing it retrains MostPop and re-ranks its samples, nothing else."""
    import shutil

    before = mtimes(second)
    mostpop_subset = second.out / "mostpop" / "eval-test-score" / "scores.parquet"
    keys_before = sample_keys(read_scores(mostpop_subset.parent))
    shutil.rmtree(second.out / "mostpop")
    out = run_in_process(second.options)
    after = mtimes(second)
    assert after["mostpop"] is not None and after["mostpop"] != before["mostpop"]
    for key in ("prepare", "sasrec", "llm", "sdpo", "evaluate", "subset"):
        assert after[key] == before[key], key
    assert sample_keys(read_scores(mostpop_subset.parent)) == keys_before
    stage_lines = dict(re.findall(r"^== stage \d/8 (\w+): (.*)$", out, re.MULTILINE))
    assert [n for n, line in stage_lines.items() if line.startswith("reusing")] == ["prepare", "llm", "sdpo"]
    assert second.results["table"] == second.before["results"]["table"]


def test_fresh_retrains_the_selected_stages(second):
    before = mtimes(second)
    out = run_in_process(second.options, fresh=True, stages=["prepare", "encoder", "llm"])
    assert "reusing" not in out
    assert [name for _, _, name in STAGE_LINE.findall(out)] == ["prepare", "encoder", "llm"]
    after = mtimes(second)
    for key in ("prepare", "mostpop", "sasrec", "llm"):
        assert after[key] > before[key], key
    assert after["subset"] is None  # the retrained encoder's ranking of the old samples went with it
    assert after["sdpo"] == before["sdpo"]  # not selected
    stages = second.results["stages"]
    assert list(stages) == ["prepare", "encoder", "llm"]
    assert all(s["reused"] is False and s["seconds_from"] == "this run" and s["partial"] is False
               for s in stages.values())
    # what was made from the old SFT model is out of date now: the next run remakes it instead of reusing it
    config = resolve_config(DemoConfig, {k: str(v) if isinstance(v, Path) else v for k, v in second.options.items()})
    paths = DemoPaths.from_config(config)
    assert llm_output(config, paths).status() is None
    assert sdpo_output(config, paths).status() == (f"{paths.sdpo} is older than {paths.llm / 'metrics.json'}")
    outputs = evaluate_outputs(config, paths)
    assert outputs["llm-generate"].status() == outputs["sasrec"].status() == "missing"  # went with their models
    assert report_outputs(config, paths)[0].status() == f"{paths.out} is older than {paths.encoder / 'metrics.json'}"
    # ... and the table this run printed says which rows are
    stale = f"out of date: {paths.sdpo} is older than {paths.llm / 'metrics.json'}; run the demo without --stages"
    assert f"  S-DPO LLM: {stale}" in out and f"  S-DPO + re-ranking: {stale}" in out
    assert "SFT LLM: out of date" not in out


# ------------------------------------------------------------------------------------------------ small parts
def test_presets_are_shipped_names_or_files(tmp_path):
    assert preset_path("llm-tiny-cpu-small", "llm-preset").name == "llm-tiny-cpu-small.yaml"
    f = tmp_path / "mine.yaml"
    f.write_text("epochs: 1\n")
    assert preset_path(str(f), "llm-preset") == f
    with pytest.raises(ConfigError, match=r"option --llm-preset: no preset file .*nope\.yaml") as e:
        preset_path("nope", "llm-preset")
    assert "\n" not in str(e.value) and "llm-tiny-cpu-small" in str(e.value)


def test_the_demo_trains_sasrec_with_its_capped_preset_and_other_encoders_with_their_own():
    from llmrec.base.config import load_yaml_mapping

    demo, full = default_encoder_preset("sasrec"), preset_path("encoder-sasrec", "encoder-preset")
    assert demo.name == "encoder-sasrec-demo.yaml"
    demo_values, full_values = load_yaml_mapping(demo), load_yaml_mapping(full)
    assert demo_values.pop("max-epochs") == 15 and full_values.pop("max-epochs") == 40
    assert demo_values == full_values  # the tuned SASRec, only capped
    assert default_encoder_preset("gru4rec").name == "encoder-gru4rec.yaml"
    assert default_encoder_preset("mostpop").name == "encoder-mostpop.yaml"
    assert default_encoder_preset("no-such-model") is None


def test_results_text_marks_missing_values():
    rows = [ResultRow("MostPop", {"hr@1": 0.25, "candidates/ndcg@5": 0.5, "mgu@1": float("nan")}),
            ResultRow("S-DPO LLM", {"hr@1": 0.125}, valid_ratio=0.75)]
    lines = results_text(rows).splitlines()
    assert lines[1].split() == ["MostPop", "0.2500", "-", "0.5000", "-"]
    assert lines[2].split() == ["S-DPO", "LLM", "0.1250", "0.7500", "-", "-"]


def _touch(path: Path, text: str, mtime_ns: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def test_an_output_is_current_only_when_present_newer_than_its_inputs_and_of_these_options(tmp_path):
    second = 1_700_000_000 * 10**9
    model = _touch(tmp_path / "llm" / "metrics.json", "{}", second)
    ranking = _touch(tmp_path / "llm" / "eval-test-generate" / "metrics.json", "{}", second + 5 * 10**9)
    recorded = _touch(ranking.parent / "config.yaml", "max_samples: 200\nseed: 42\nmode: generate\n", second)
    out = Output(ranking, (model,), recorded, {"max_samples": 200, "seed": 42, "mode": "generate"})
    assert out.status() is None
    assert Output(tmp_path / "nothing" / "metrics.json", (model,)).status() == "missing"
    assert Output(ranking, (tmp_path / "absent.json",)).status() is None  # a missing input is the stage's to report
    os.utime(model, ns=(second + 6 * 10**9,) * 2)  # the model was retrained after the ranking was made
    assert out.status() == f"{ranking.parent} is older than {model}"
    os.utime(model, ns=(second,) * 2)
    asked = Output(ranking, (model,), recorded, {"max_samples": 500, "seed": 42})
    assert asked.status() == f"{recorded} records max_samples=200, this run asks for 500"
    recorded.write_text("[not, a, mapping]\n")
    assert out.status() == f"{recorded} is unreadable"


def test_prepared_data_of_another_protocol_are_not_reused(tmp_path):
    config = resolve_config(DemoConfig, {"data": str(tmp_path / "data"), "out": str(tmp_path / "out"), "seed": 7})
    paths = DemoPaths.from_config(config)
    meta = {"dataset": "ml-100k", "protocol": "llara", "eval_positions": "all", "seed": 7}
    _touch(paths.data / "meta.json", json.dumps(meta), time.time_ns())
    assert prepare_output(config, paths).status() is None
    _touch(paths.data / "meta.json", json.dumps({**meta, "protocol": "loo"}), time.time_ns())
    assert prepare_output(config, paths).status() == (f"{paths.data / 'meta.json'} records protocol='loo', this "
                                                      f"run asks for 'llara'")


def test_a_partly_remade_stage_does_not_pass_its_seconds_off_as_the_whole_stages(tmp_path, capsys):
    kept = _touch(tmp_path / "a" / "metrics.json", "{}", time.time_ns())
    remade = tmp_path / "b" / "metrics.json"
    calls = []

    def work(redo: bool) -> bool:
        calls.append(redo)
        _touch(remade, "{}", time.time_ns())
        return True

    stage = Stage("evaluate", [Output(kept), Output(remade)], "rank", "the rankings", work, per_output=True)
    runner = StageRunner(["evaluate"], fresh=False, previous={})
    assert runner.run(stage) is False and calls == [False]
    record = runner.records["evaluate"]
    assert record["partial"] is True and record["reused"] is False and record["seconds_from"] == "this run"
    assert "| evaluate | " in "\n".join(stage_lines(runner.records)) and "remade only" in stage_lines(runner.records)[2]
    # reused next time: the earlier seconds were those of a part, so they are not shown as the stage's
    again = StageRunner(["evaluate"], fresh=False, previous={"stages": {"evaluate": record}})
    assert again.run(stage) is True and calls == [False]
    assert again.records["evaluate"]["seconds_from"] == "reuse check"
    whole = {**record, "partial": False, "seconds": 12.5}
    third = StageRunner(["evaluate"], fresh=False, previous={"stages": {"evaluate": whole}})
    assert third.run(stage) is True
    assert third.records["evaluate"]["seconds"] == 12.5 and third.records["evaluate"]["seconds_from"] == "earlier run"
    # --fresh remakes everything: not partial
    fresh = StageRunner(["evaluate"], fresh=True, previous={})
    assert fresh.run(stage) is False and calls == [False, True] and fresh.records["evaluate"]["partial"] is False
    assert "== stage 1/1 evaluate: rank" in capsys.readouterr().out


def test_running_mean_of_a_loss_curve_by_hand():
    values = np.array([4.0, 2.0, 6.0, 0.0, 1.0])
    # window 2: [4], [4, 2], [2, 6], [6, 0], [0, 1]
    assert running_mean(values, 2).tolist() == [4.0, 3.0, 4.0, 3.0, 0.5]
    assert running_mean(values, 1).tolist() == values.tolist()
    assert running_mean(values, 10).tolist() == [4.0, 3.0, 4.0, 3.0, 13.0 / 5]
    assert running_mean(np.zeros(0), 3).tolist() == []
    with pytest.raises(ValueError, match="window 0"):
        running_mean(values, 0)
    assert (loss_window(21), loss_window(250), loss_window(1000)) == (3, 12, 50)


def test_the_loss_curve_is_the_most_often_logged_loss_and_the_epoch_mean_on_a_tie():
    import pandas as pd

    nan = float("nan")
    once_an_epoch = pd.DataFrame({"step": [13, 13, 27, 27], "train/loss_step": [7.1, nan, 6.7, nan],
                                  "train/loss_epoch": [nan, 7.4, nan, 7.0]})
    curves = curves_from_table("enc", once_an_epoch)
    assert curves.loss_steps.tolist() == [13, 27] and curves.loss.tolist() == [7.4, 7.0]
    often = pd.DataFrame({"step": [4, 9, 13, 13], "train/loss_step": [7.5, 7.3, 7.1, nan],
                          "train/loss_epoch": [nan, nan, nan, 7.4]})
    assert curves_from_table("enc", often).loss.tolist() == [7.5, 7.3, 7.1]
    assert curves_from_table("llm", pd.DataFrame({"step": [1, 2], "train/loss": [3.0, 2.0]})).loss.tolist() == [3.0, 2.0]
    assert len(curves_from_table("none", pd.DataFrame({"step": [1], "valid/hr@1": [0.2]})).loss) == 0


def test_the_valid_curve_is_the_metric_the_stage_watched():
    import pandas as pd

    table = pd.DataFrame({"step": [10, 20], "valid/candidates/hr@1": [0.3, 0.2], "valid/full/ndcg@10": [0.05, 0.07]})
    assert curves_from_table("loo", table, monitor="valid/full/ndcg@10").valid.tolist() == [0.05, 0.07]
    assert curves_from_table("llara", table, monitor="valid/candidates/hr@1").valid_key == "valid/candidates/hr@1"
    assert curves_from_table("none recorded", table).valid_key == "valid/candidates/hr@1"
    assert curves_from_table("not logged", table, monitor="valid/hr@1").valid_key == "valid/candidates/hr@1"
