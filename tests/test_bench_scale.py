"""bench/scale.py (issue 21's 1-vs-2-process benchmark): its helpers on hand-made inputs, and `--smoke`, which runs
every part at toy scale through real `python -m llmrec` subprocesses, checked for the results schema and for
figures that were really measured (positive rates, outputs identical across process counts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from bench_scripts import load_bench_script

from llmrec.training.distributed import threads_per_process

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "processed" / "ml-100k-llara-all"
DEMO = ROOT / "checkpoints" / "demo"


@pytest.fixture(scope="module")
def scale():
    return load_bench_script("scale")


def test_steady_throughput_is_read_from_the_tensorboard_wall_times(scale, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    folder = tmp_path / "run" / "logs" / "tensorboard"
    writer = SummaryWriter(str(folder))
    for step, wall in ((9, 100.0), (19, 104.0), (29, 108.0)):  # 10 steps every 4 s
        writer.add_scalar("train/loss", 1.0, global_step=step, walltime=wall)
    writer.add_scalar("valid/hr@1", 0.1, global_step=29, walltime=500.0)  # validation: not a training point
    writer.close()
    got = scale.steady_samples_per_s(tmp_path / "run", effective_batch=8)
    assert got == {"samples_per_s": 20 * 8 / 8.0, "steps_measured": 20, "seconds_measured": 8.0}


def test_one_logged_point_cannot_time_steps(scale, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "run" / "logs" / "tensorboard"))
    writer.add_scalar("train/loss", 1.0, global_step=9, walltime=1.0)
    writer.close()
    with pytest.raises(SystemExit, match="1 train/loss point"):
        scale.steady_samples_per_s(tmp_path / "run", effective_batch=8)


def test_tables_compare_rows_exactly_and_scores_to_tolerance(scale):
    a = pd.DataFrame({"user": [1, 1, 2], "rank": [1, 2, 1], "id": [5, 6, 7], "score": [-1.0, None, -2.0]})
    assert scale.same_table(a, a.copy()) == (True, True, 0.0)
    close = a.assign(score=[-1.0 + 5e-7, None, -2.0])
    identical, bitwise, diff = scale.same_table(a, close)
    assert identical and not bitwise and diff == pytest.approx(5e-7)
    assert scale.same_table(a, a.assign(score=[-1.0 + 1e-4, None, -2.0]))[0] is False
    assert scale.same_table(a, a.assign(id=[5, 7, 6]))[0] is False  # another order
    assert scale.same_table(a, a.assign(score=[-1.0, -3.0, -2.0]))[0] is False  # a null became a score


def test_the_peak_memory_of_a_process_and_of_what_it_started_is_read(scale):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in scale.descendants(os.getpid())
        assert scale.peak_mb(child.pid) > 1
    finally:
        child.kill()
        child.wait()
    assert scale.peak_mb(child.pid) is None


@pytest.mark.skipif(not (DATA / "meta.json").is_file(), reason="needs `llmrec demo`'s data")
def test_a_copy_of_the_dataset_answers_for_its_first_users_only(scale, tmp_path):
    from llmrec.data.dataset import ProcessedDataset
    from llmrec.serving.all_users import user_histories

    full = ProcessedDataset.load(DATA)
    for split in ("all", "test"):
        folder, n = scale.first_users(DATA, split, 5, tmp_path)
        part = ProcessedDataset.load(folder)
        want, got = user_histories(full, split).iloc[:5], user_histories(part, split)
        assert n == 5 and len(got) == 5
        pd.testing.assert_frame_equal(want.reset_index(drop=True), got.reset_index(drop=True))
        assert part.catalog_fingerprint() == full.catalog_fingerprint()  # the checkpoint accepts it


def test_each_section_keeps_the_command_that_measured_it(scale, tmp_path):
    """A results file filled by several invocations: sections written before this run (and lacking their own
    command) take the file's previous top-level command; this run's sections carry its own."""
    path = tmp_path / "scale.json"
    path.write_text(json.dumps({"sft": {"tiny": {"speedup": 0.9}}, "eval": {"identical": True},
                                "eval_identical": True, "machine": {"cores": 2}, "date": "2026-12-01",
                                "command": "python bench/scale.py all --write"}))
    scale.Results(path, "python bench/scale.py sft --backbone smollm2-135m --write").put(
        "sft", {"speedup": 1.1}, "pretrained")
    got = json.loads(path.read_text())
    assert got["sft"]["tiny"] == {"speedup": 0.9, "command": "python bench/scale.py all --write",
                                  "date": "2026-12-01"}
    assert got["sft"]["pretrained"]["command"] == "python bench/scale.py sft --backbone smollm2-135m --write"
    assert got["sft"]["pretrained"]["speedup"] == 1.1
    assert got["eval"] == {"identical": True, "command": "python bench/scale.py all --write", "date": "2026-12-01"}
    assert got["eval_identical"] is True and "command" not in got["machine"]
    assert got["command"] == "python bench/scale.py sft --backbone smollm2-135m --write"


def test_a_rerun_keeps_the_runs_it_replaces(scale, tmp_path):
    """Rerunning a labelled part quotes the new figures beside the earlier ones, latest first."""
    path = tmp_path / "scale.json"
    path.write_text(json.dumps({"sft": {"tiny": {"speedup": 1.04}, "pretrained": {"speedup": 1.28}},
                                "date": "2026-12-06", "command": "python bench/scale.py sft --write"}))
    results = scale.Results(path, "python bench/scale.py sft --write")
    results.put("sft", {"speedup": 0.98}, "tiny")
    results.put("sft", {"speedup": 1.01}, "tiny")
    got = json.loads(path.read_text())["sft"]
    assert got["tiny"]["speedup"] == 1.01
    assert [run["speedup"] for run in got["tiny"]["earlier_runs"]] == [0.98, 1.04]
    assert got["tiny"]["earlier_runs"][1]["date"] == "2026-12-06"  # the first run keeps its own stamp
    assert "earlier_runs" not in got["tiny"]["earlier_runs"][0]
    assert got["pretrained"] == {"speedup": 1.28, "command": "python bench/scale.py sft --write",
                                 "date": "2026-12-06"}


def test_users_are_dealt_to_ranks_by_whole_parts(scale):
    assert scale.users_per_rank(200, 64, 2) == [128, 72]  # parts 64, 64, 64, 8: rank 0 takes parts 0 and 2
    assert scale.users_per_rank(200, 25, 2) == [100, 100]
    assert scale.users_per_rank(943, 256, 2) == [512, 431]
    assert scale.users_per_rank(10, 64, 2) == [10, 0]  # one part: the second rank idles


def test_smoke_results_are_never_written(scale):
    with pytest.raises(SystemExit):
        scale.parse_args(["all", "--smoke", "--write"])


@pytest.mark.skipif(not (DEMO / "sdpo-hybrid-sasrec" / "checkpoint.json").is_file()
                    or not (DATA / "meta.json").is_file(), reason="needs `llmrec demo`'s data and checkpoints")
def test_smoke_runs_every_part_and_reports_real_figures(tmp_path):
    results = tmp_path / "scale.json"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run([sys.executable, "scale.py", "all", "--smoke", "--work", str(tmp_path / "work"),
                           "--results", str(results)], cwd=ROOT / "bench", env=env, capture_output=True,
                          text=True, timeout=1500, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not results.exists()  # --smoke without --write: nothing written
    sections: dict = {}
    decoder, text, i = json.JSONDecoder(), done.stdout, 0
    while (i := text.find("{\n", i)) >= 0:  # every part prints its section as JSON
        value, i = decoder.raw_decode(text, i)
        sections.update(value)
    sft = sections["sft"]["tiny"]
    assert {"one_process_samples_per_s", "two_process_samples_per_s", "backbone"} <= set(sft)
    assert sft["one_process_samples_per_s"] > 0 and sft["two_process_samples_per_s"] > 0
    assert sft["threads"] == {"one_process": os.cpu_count(), "two_process": threads_per_process(2)}
    assert sft["runs"]["two_process"]["processes"] == 2 and len(sft["runs"]["two_process"]["peak_mb"]) == 2
    assert sft["runs"]["one_process"]["effective_batch_size"] == sft["runs"]["two_process"]["effective_batch_size"]
    valid = sections["valid_hr@1"]
    assert valid["seeds"] == [0] and len(valid["one_process"]) == len(valid["two_process"]) == 1
    assert all(0 <= x <= 1 for x in valid["one_process"] + valid["two_process"])
    # the seed of `sft` was reused, not trained again
    assert valid["one_process"][0] == sft["valid_hr@1"]["one_process"]
    assert done.stdout.count("train-llm: tiny, seed 0") == 2
    predict = sections["predict_all"]["tiny"]
    assert {"users", "seconds_one_process", "seconds_two_process", "identical"} <= set(predict)
    assert predict["users"] == predict["users_answered"] == 24
    assert predict["identical"] is True and predict["seconds_one_process"] > 0 and predict["seconds_two_process"] > 0
    assert len(predict["peak_mb_per_process"]["one_process"]) == 1
    assert len(predict["peak_mb_per_process"]["two_process"]) == 2  # the command's process and Lightning's child
    assert all(mb > 100 for mb in predict["peak_mb_per_process"]["two_process"])  # torch is loaded in each
    assert sections["eval_identical"] is True and sections["eval"]["samples"] == 16
