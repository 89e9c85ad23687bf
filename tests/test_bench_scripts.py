"""Benchmark scripts whose real runs are too long or need hardware the CI lacks, checked at toy scale.

bench/llm_gpu.py is only ever run on a lent GPU: keep it runnable by smoke-running it on the CPU.
bench/demo.py times `make demo` from a fresh clone (many minutes): its harness is checked against a tiny git
repository whose `make install` / `make demo` stand in for the real ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bench_scripts import load_bench_script

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "llm_gpu.py", *args], cwd=BENCH, capture_output=True, text=True,
                          timeout=600, check=False)


def test_gpu_benchmark_runs_end_to_end_at_the_tiny_shape_on_cpu():
    done = run_bench("--shape", "tiny", "--device", "cpu", "--n-samples", "8", "--score-batch", "4",
                     "--generate-batch", "4", "--train-batch", "2", "--train-steps", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout[done.stdout.index("{\n"):])
    assert result["shape"] == "tiny" and result["device"] == "cpu"
    for key in ("score_users_per_s", "generate_users_per_s", "train_tokens_per_s", "train_mfu"):
        assert result[key] > 0, key
    assert 250 < result["prompt_tokens_mean"] < 350  # the ~256-token prompts the GPU target is about


def test_gpu_benchmark_refuses_to_record_a_smoke_shape():
    done = run_bench("--shape", "tiny", "--device", "cpu", "--write")
    assert done.returncode != 0 and "records only the 7b shape" in done.stderr


# ------------------------------------------------------------------------------------------------ bench/demo.py
FAKE_MAKEFILE = """\
.venv/.installed:
\tmkdir -p .venv && sleep 0.3 && echo installed >> install-runs.txt && touch $@

install: .venv/.installed

demo: install
\tmkdir -p checkpoints/demo && cp fake-results.json checkpoints/demo/demo-results.json && echo demo ran
"""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=repo,
                          capture_output=True, text=True, check=True).stdout.strip()


def _fake_repo(tmp_path: Path, makefile: str = FAKE_MAKEFILE) -> tuple[Path, str]:
    """A git repository whose `make install` / `make demo` stand in for the real ones; (path, HEAD sha1)."""
    repo = tmp_path / "repo"
    repo.mkdir(parents=True)
    (repo / "Makefile").write_text(makefile)
    (repo / "marker.txt").write_text("committed\n")
    stages = {"prepare": {"seconds": 2.5, "hr@1": None}, "encoder": {"seconds": 60.0, "hr@1": 0.477},
              "sdpo": {"seconds": 90.25, "hr@1": 0.084}}
    (repo / "fake-results.json").write_text(json.dumps(
        {"stages": stages, "mostpop_hr@1": 0.284, "sasrec_hr@1": 0.477, "n_test_samples": 500,
         "wall_seconds": 152.75}))
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "fake project")
    return repo, _git(repo, "rev-parse", "HEAD")


def run_demo_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "demo.py", *args], cwd=BENCH, capture_output=True, text=True,
                          timeout=120, check=False)


def test_demo_benchmark_times_a_fresh_clone_of_the_committed_head(tmp_path):
    repo, head = _fake_repo(tmp_path)
    # uncommitted work in the source checkout must not reach the clone
    (repo / "marker.txt").write_text("uncommitted\n")
    (repo / "fake-results.json").write_text(json.dumps({"stages": {"prepare": {"seconds": 999.0}}}))
    (repo / "untracked.txt").write_text("not in git\n")
    (repo / ".venv").mkdir()  # a checkout's own environment is never shared
    results, work = tmp_path / "demo.json", tmp_path / "work"
    done = run_demo_bench("--repo", str(repo), "--work", str(work), "--keep", "--quiet", "--write",
                          "--results", str(results), "--target-seconds", "60")
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(results.read_text())
    assert r["fresh_clone"] is True and r["commit"] == head
    assert r["stages"] == {"prepare": {"seconds": 2.5, "hr@1": None}, "encoder": {"seconds": 60.0, "hr@1": 0.477},
                           "sdpo": {"seconds": 90.25, "hr@1": 0.084}}  # the committed file, not the edited one
    assert (r["mostpop_hr@1"], r["sasrec_hr@1"], r["n_test_samples"]) == (0.284, 0.477, 500)
    assert r["demo_wall_seconds"] == 152.75
    assert r["setup_seconds"] >= 0.3  # `make install` (with its 0.3 s sleep) is timed as the setup
    assert r["wall_seconds"] >= r["setup_seconds"] + r["demo_seconds"] - 0.1
    assert r["target_seconds"] == 60 and r["within_target"] is (r["wall_seconds"] <= 60)
    assert r["within_target"] is True
    for key in ("cpu", "cores"):
        assert r["machine"][key]
    assert r["machine"]["torch"] is None and r["machine"]["transformers"] is None  # no real .venv/bin/python
    assert r["earlier_runs"] == []
    assert r["date"] and r["command"].startswith("python bench/demo.py")
    (clone,) = [p / "clone" for p in work.iterdir() if p.is_dir()]
    assert (clone / "marker.txt").read_text() == "committed\n"
    assert not (clone / "untracked.txt").exists()
    assert (clone / "install-runs.txt").read_text() == "installed\n"  # once: `make demo` found install done
    assert _git(clone, "rev-parse", "HEAD") == head
    log = next(work.glob("llmrec-demo-*.log")).read_text()
    assert "demo ran" in log and "$ make install" in log and "$ make demo" in log
    assert "demo ran" not in done.stdout  # --quiet: the make output went to the log only


def test_demo_benchmark_keeps_the_runs_it_replaces_and_the_readme_lists_them(tmp_path):
    repo, head = _fake_repo(tmp_path)
    results = tmp_path / "demo.json"
    earliest = {"date": "2026-01-02T03:04:05+00:00", "commit": "0" * 40, "wall_seconds": 600.0, "setup_seconds": 90.0,
                "machine": {"cpu": "Old CPU", "cores": 2, "torch": "2.0"},
                "stages": {"llm": {"seconds": 300.0, "hr@1": 0.25}},
                "table": {"SFT LLM": {"hr@1": 0.25}, "S-DPO LLM": {"hr@1": 0.3}, "MostPop": {"hr@1": 0.29}},
                "earlier_runs": [{"date": "older", "wall_seconds": 60.0}] * 9}
    results.write_text(json.dumps(earliest))
    for _ in range(2):
        done = run_demo_bench("--repo", str(repo), "--work", str(tmp_path / "work"), "--quiet", "--write",
                              "--results", str(results))
        assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(results.read_text())
    first, replaced, *older = r["earlier_runs"]
    assert len(r["earlier_runs"]) == 5  # the newest five are kept
    assert first["commit"] == head and first["wall_seconds"] <= r["wall_seconds"] + 60
    assert first["stages_seconds"] == {"prepare": 2.5, "encoder": 60.0, "sdpo": 90.25}
    assert replaced == {"date": earliest["date"], "commit": "0" * 40, "wall_seconds": 600.0, "setup_seconds": 90.0,
                        "within_target": None, "machine": {"cpu": "Old CPU", "cores": 2, "torch": "2.0"},
                        "stages_seconds": {"llm": 300.0},
                        "hr@1": {"SFT LLM": 0.25, "S-DPO LLM": 0.3, "MostPop": 0.29}}
    assert older == [{"date": "older", "wall_seconds": 60.0}] * 3

    tables = load_bench_script("tables")
    rows = tables.demo_section(r).split("Earlier runs of the same benchmark")[1].splitlines()
    assert "| 2026-01-02 | `0000000000` | Old CPU | 10.0 | 90 | — | 300 | — | 0.250 / 0.300 / 0.290 |" in rows
    assert "| older | `?` | ? | 1.0 | — | — | — | — | — / — / — |" in rows


def test_a_damaged_results_file_is_named_before_anything_is_measured(tmp_path):
    repo, _ = _fake_repo(tmp_path)
    work = tmp_path / "work"
    for text, expected in (('{"wall_seconds": 1,', "not valid JSON (Expecting property name enclosed in double quotes: "
                                                    "line 1 column 20 (char 19))"),
                           ('[1, 2]', 'expected an object whose "earlier_runs" is a list'),
                           ('{"earlier_runs": 3}', 'expected an object whose "earlier_runs" is a list')):
        results = tmp_path / "demo.json"
        results.write_text(text)
        done = run_demo_bench("--repo", str(repo), "--work", str(work), "--quiet", "--write", "--results", str(results))
        assert done.returncode == 1 and done.stderr.strip().splitlines() == [
            f"--results {results}: {expected}; move it away or pass another --results"], done.stderr
        assert results.read_text() == text  # left as it was
        assert not work.exists() or not any(work.iterdir())  # nothing cloned, nothing run


def test_demo_benchmark_deletes_the_clone_prints_without_write_and_fails_with_make(tmp_path):
    repo, _ = _fake_repo(tmp_path)
    work = tmp_path / "work"
    done = run_demo_bench("--repo", str(repo), "--work", str(work), "--results", str(tmp_path / "r.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "demo ran" in done.stdout  # streamed to the terminal too
    assert json.loads(done.stdout[done.stdout.index("{\n"):done.stdout.index("\n}\n") + 2])["commit"]
    assert not (tmp_path / "r.json").exists()  # no --write
    assert [p.name for p in work.iterdir() if p.is_dir()] == []  # no --keep: the clone is gone
    assert "within the 900 s target" in done.stdout

    broken, _ = _fake_repo(tmp_path / "b", FAKE_MAKEFILE.replace("cp fake-results.json", "false && cp x"))
    done = run_demo_bench("--repo", str(broken), "--work", str(work), "--write", "--results", str(tmp_path / "r.json"))
    assert done.returncode != 0
    assert "`make` failed with exit status 2" in done.stderr and ".log" in done.stderr
    assert not (tmp_path / "r.json").exists()


def test_result_tables_are_rendered_from_the_committed_results():
    """No page quotes a stale figure: the result sections of README.md and docs/benchmarks.md equal what
    bench/tables.py renders from bench/results, and every section is on some page (none was lost in a move)."""
    root = Path(__file__).resolve().parents[1]
    tables = load_bench_script("tables")
    assert {page.relative_to(root).as_posix() for page in tables.DOCUMENTS} == {"README.md", "docs/benchmarks.md"}
    pages = {page.name: page.read_text(encoding="utf-8") for page in tables.DOCUMENTS}
    for name, text in pages.items():
        assert tables.render(text) == text, f"{name}: result tables are stale: run `python bench/tables.py`"
    for section in tables.SECTIONS:
        assert sum(f"<!-- {section}:START -->" in text for text in pages.values()) == 1, section
    assert "<!-- DEMO-RESULTS:START -->" in pages["README.md"]  # the newcomer's page shows the demo's figures


# ------------------------------------------------------------------------------------------------ bench/pretrained.py
def _pretrained_bench():
    return load_bench_script("pretrained")


def test_each_pretrained_ablation_is_a_valid_train_llm_run_changing_only_its_setting(tmp_path):
    from types import SimpleNamespace

    from llmrec.base.config import resolve_config
    from llmrec.llm.train import TrainLLMConfig
    from llmrec.preference.train import TrainSDPOConfig

    bench = _pretrained_bench()
    data, demo = SimpleNamespace(root=tmp_path / "data"), tmp_path / "demo"
    base = resolve_config(TrainLLMConfig, bench.sft_values(data, demo, tmp_path / "out", 1000, "lora", {}))
    assert (base.prompt, base.curriculum, base.fairness_weights) == ("hybrid", "linear", "none")
    assert (base.finetune, base.lora_r, base.lr, base.max_train_samples) == ("lora", 16, 1e-3, 1000)
    changed_fields = {}
    for name, changed in bench.ABLATIONS.items():
        config = resolve_config(TrainLLMConfig, bench.sft_values(data, demo, tmp_path / "out", 1000, "lora", changed))
        changed_fields[name] = {k for k in vars(base) if getattr(config, k) != getattr(base, k)}
    assert changed_fields == {"sft_text": {"prompt", "encoder"}, "sft_hybrid_summary": {"prompt"},
                              "direct": {"curriculum"}, "two_stage": {"curriculum"},
                              "reweighted": {"fairness_weights"}, "sft_chat": {"prompt_format"}}
    sdpo = resolve_config(TrainSDPOConfig, {"sft": tmp_path / "sft", **bench.SDPO})
    assert (sdpo.negatives, sdpo.loss, sdpo.epochs) == (3, "sdpo", 1)
    assert bench.ORDER.index("curriculum") > bench.ORDER.index("sft_hybrid_1000_lora")  # it reuses that run


# ------------------------------------------------------------------------------------------------ bench/serving.py
def _serving_bench():
    return load_bench_script("serving")


def test_serving_bench_reads_memory_figures_from_proc_status():
    bench = _serving_bench()
    text = ("Name:\tpython\nState:\tS (sleeping)\nVmPeak:\t 1234568 kB\nVmHWM:\t  618949 kB\nVmRSS:\t  532242 kB\n"
            "RssAnon:\t  400000 kB\nThreads:\t3\nSigQ:\t0/95000\nvoluntary_ctxt_switches:\t12\n")
    status = bench.proc_status(text)
    assert status == {"VmPeak": 1234568 * 1024, "VmHWM": 618949 * 1024, "VmRSS": 532242 * 1024,
                      "RssAnon": 400000 * 1024}  # kB lines only: Threads and the counters are left out
    mine = bench.process_memory(os.getpid())  # this process, from the real /proc
    assert 10 < mine["rss_mb"] <= mine["peak_mb"]


def _answer(*ids_scores):
    return [{"id": i, "score": s} for i, s in ids_scores]


def test_serving_bench_agreement_figures_by_hand():
    bench = _serving_bench()
    reference = [_answer((1, -0.5), (2, -0.7), (3, -0.9)),
                 _answer((4, -0.1), (5, -0.2), (6, None)),
                 _answer((7, -1.0), (8, -2.0), (9, -3.0))]
    other = [_answer((1, -0.5), (2, -0.7), (3, -0.9)),        # the same: no change
             _answer((5, -0.15), (4, -0.12), (6, None)),      # top 1 swapped, the same three items
             _answer((7, -1.25), (8, -2.0), (10, -2.5))]      # item 9 replaced by 10
    got = bench.agreement(reference, other, k=3)
    assert got["answers"] == 3 and got["k"] == 3
    assert got["top1_agreement"] == 2 / 3
    assert abs(got["topk_overlap"] - (1 + 1 + 2 / 3) / 3) < 1e-12
    assert got["rankings_changed"] == 2
    assert abs(got["max_score_diff"] - 0.25) < 1e-12  # item 7; unscored and one-sided items are not compared
    top2 = bench.agreement(reference, other, k=2)  # the last answer's top 2 is unchanged
    assert top2["rankings_changed"] == 1 and top2["topk_overlap"] == 1.0
    assert bench.agreement(reference, reference)["top1_agreement"] == 1.0
    with pytest.raises(ValueError, match="as many answers"):
        bench.agreement(reference, other[:2])


def test_serving_bench_keeps_int8_only_within_tolerance_and_faster():
    bench = _serving_bench()
    close = {"top1_agreement": 0.995, "topk_overlap": 0.99}
    far = {"top1_agreement": 0.98, "topk_overlap": 0.99}
    kept = bench.int8_verdict({"lone": close, "batched": close}, speedup=1.5)
    assert kept["keep"] and kept["within_tolerance"] and kept["faster"] and "0.99" in kept["rule"]
    assert bench.int8_verdict({"lone": close, "batched": far}, speedup=1.5) == {**kept, "keep": False,
                                                                             "within_tolerance": False}
    assert bench.int8_verdict({"lone": close, "batched": close}, speedup=1.05) == {**kept, "keep": False,
                                                                                "faster": False}
    assert not bench.int8_verdict({"lone": {"top1_agreement": 1.0, "topk_overlap": 0.97}}, 2.0)["keep"]


def test_serving_bench_sizes_a_checkpoint_on_disk(tmp_path):
    bench = _serving_bench()
    ckpt = tmp_path / "ckpt"
    for rel, size in (("model/model.safetensors", 3000), ("projector.safetensors", 100), ("catalog.parquet", 50),
                      ("encoder/encoder.safetensors", 800), ("encoder/items.faiss", 400),
                      ("reference_logprobs.safetensors", 200), ("eval-test-score/scores.parquet", 70)):
        (ckpt / rel).parent.mkdir(parents=True, exist_ok=True)
        (ckpt / rel).write_bytes(b"x" * size)
    (ckpt / ".llmrec-output.json").write_text(json.dumps({"files": {"model/model.safetensors": {"size": 3000},
                                                                    "catalog.parquet": {"size": 50}}}))
    outside = tmp_path / "big"
    outside.write_bytes(b"x" * 10_000)
    (ckpt / "link").symlink_to(outside)  # not followed
    base = tmp_path / "base"
    base.mkdir()
    (base / "model.safetensors").write_bytes(b"x" * 5000)
    mib = 1 << 20
    sizes = bench.disk_sizes(ckpt, base)
    marker = len((ckpt / ".llmrec-output.json").read_bytes())
    assert sizes["folder_mb"] * mib == 3000 + 100 + 50 + 800 + 400 + 200 + 70 + marker
    assert sizes["bundle_mb"] * mib == 3050
    assert sizes["weights_files_mb"] == {"model/model.safetensors": 3000 / mib, "projector.safetensors": 100 / mib,
                                         "encoder/encoder.safetensors": 800 / mib}  # not the reference log-probs
    assert sizes["weights_mb"] * mib == 3900 and sizes["faiss_file_mb"] * mib == 400
    assert sizes["base_folder"] == str(base) and sizes["base_weights_mb"] * mib == 5000
    assert "base_weights_mb" not in bench.disk_sizes(ckpt, None)


def test_serving_bench_merge_compares_merged_and_unmerged_adapters(lora_ckpt, ckpt, sft_run):
    """`bench/serving.py merge` on the session's tiny LoRA checkpoint: both loads answer every history, in
    batches and alone, with the same rankings (merging changes float rounding only); a fully fine-tuned
    checkpoint has nothing to merge and is refused."""
    from tiny import one_thread

    from llmrec.data.dataset import ProcessedDataset

    bench = _serving_bench()
    data = ProcessedDataset.load(sft_run / "data")
    args = bench.parse_args(["merge", "--ckpt", str(lora_ckpt), "--requests", "6", "--batch-size", "4",
                             "--probe-requests", "2"])
    with one_thread():
        got = bench.merge(args, data)
    assert got["batched"]["requests"] == 6 and got["lone"]["requests"] == 2
    for part in ("batched", "lone"):
        figures = got[part]
        assert figures["seconds_merged"] > 0 and figures["seconds_unmerged"] > 0
        assert figures["speedup"] == figures["seconds_unmerged"] / figures["seconds_merged"]
        assert figures["agreement"]["top1_agreement"] == 1.0 and figures["agreement"]["rankings_changed"] == 0
        assert figures["agreement"]["max_score_diff"] < 1e-3
    with pytest.raises(SystemExit, match="no adapters to merge"):
        bench.merge(bench.parse_args(["merge", "--ckpt", str(ckpt), "--requests", "2"]), data)


def test_serving_bench_rerun_keeps_the_section_it_replaces(tmp_path):
    bench = _serving_bench()
    path = tmp_path / "serving.json"
    bench.write_labelled(path, "models", "tiny", {"rps": 26.0})
    bench.write_labelled(path, "models", "pretrained", {"rps": 0.28})
    bench.write_labelled(path, "models", "pretrained", {"rps": 0.35})
    got = json.loads(path.read_text())["models"]
    assert got["tiny"] == {"rps": 26.0}  # the other label untouched
    assert got["pretrained"] == {"rps": 0.35, "earlier_runs": [{"rps": 0.28}]}


def test_serving_bench_takes_several_checkpoints_only_for_models():
    bench = _serving_bench()
    args = bench.parse_args(["models", "--ckpt", "a", "--ckpt", "b"])
    assert args.ckpts == [Path("a"), Path("b")] and args.requests is None  # per-label defaults
    assert bench.parse_args(["load"]).requests == 500 and bench.parse_args(["load"]).ckpt == bench.DEFAULT_CKPT
    for argv in (["load", "--ckpt", "a", "--ckpt", "b"], ["models", "--ckpt", "a", "--ckpt", "b", "--label", "x"],
                 ["models", "--agreement-samples", "0"]):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
