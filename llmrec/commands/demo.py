"""`llmrec demo`: the whole pipeline in one command, at a small scale that runs on a laptop CPU, ending with a
results table and `report.md` with figures.

    llmrec demo [--dataset ml-100k] [--out checkpoints/demo] [--fresh] [--stages ...]

Stages (each prints `== stage i/N name` when it starts and `-- name done in 1m23s` when it ends). A stage is
skipped when its output is current: it exists (outputs are written through `llmrec.base.atomic.output_directory`, so
an interrupted stage never leaves a folder that looks finished), it is no older than what it is made from (a
retrained SFT model makes the S-DPO model, its rankings, the re-ranking and the report out of date), and it
records the options this run asks for (prepare: dataset, `llara`, `all`, seed; training: seed and
`--llm-test-samples`; rankings: their sample counts and seed); otherwise it runs again, and so does every later
stage. `--fresh` reruns every selected stage. What a preset file says is not compared: after editing one, pass
`--fresh`.
  1. prepare   the dataset (default ML-100K, from the offline source chain) with the `llara` protocol and
               `--eval-positions all` (thousands of test samples);
  2. encoder   the MostPop baseline (`train-encoder --model mostpop`) and SASRec (`--encoder`), each with its
               shipped preset (SASRec: `encoder-sasrec-demo`, capped at 15 epochs; `--encoder-preset` to
               change), evaluated on the 20 stored candidates;
  3. llm       SFT of a tiny Llama recommender with hybrid prompts (`--llm-preset`, a documented SMALL scale:
               full fine-tuning of the tiny model, projector, text -> hybrid curriculum, a subset of the training
               samples), ranking a seeded subset of `--llm-test-samples` test samples in `score` mode;
  4. sdpo      S-DPO (3 negatives per prompt) from that SFT model (`--sdpo-preset`), the same test samples;
  5. evaluate  `llmrec evaluate` of MostPop and SASRec on the SAME test samples as the LLMs (the seeded subset
               of `llmrec.data.sampling.ranked_subset` every ranking draws, into `<encoder>/eval-test-score/`); SFT and S-DPO in `generate` mode on `--generate-samples` test
               samples (`eval-test-generate/`, fairness metrics included); S-DPO in `score` mode on
               `--valid-samples` VALID samples (`eval-valid-score/`, what re-ranking tunes on);
  6. rerank    IFairLRS re-ranking of the S-DPO model's test ranking, alpha chosen on valid (`llmrec rerank
               --alpha auto`, into `<sdpo>/rerank-popularity/`);
  7. predict   the final model's top 10 for one test user over the whole catalog (retrieve with the encoder,
               re-rank with the LLM), printed as `llmrec predict` prints it;
  8. report    `<out>/report.md` with PNG figures in `<out>/report/` (`llmrec.commands.demo_report`): training curves of
               every trained stage, hr@1 per stage, GP vs GH per popularity group, and the results table.
The results table (MostPop, SASRec, SFT LLM, S-DPO LLM, S-DPO + re-ranking: hr@1, valid_ratio, candidates/ndcg@5,
mgu@1) is printed at the end; `<out>/demo-results.json` records each stage's seconds (for a reused stage, those of
the run that made its whole output when recorded; `partial` when the stage remade only some of its outputs) and
hr@1 (encoder: SASRec on the LLMs' test samples; llm, sdpo: score mode; evaluate: S-DPO in generate mode; rerank:
after re-ranking) for the benchmark script (`bench/demo.py`). A row of the table whose ranking is out of date (a
run with `--stages` left it behind) is marked so under the table. The LLM numbers are small-scale numbers; the
full-scale figures are in the README.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llmrec.base.config import option
from llmrec.base.progress import duration

if TYPE_CHECKING:  # the command line imports this module to build its parser: nothing heavy at import time
    import pandas as pd

    from llmrec.data.dataset import ProcessedDataset
    from llmrec.commands.demo_report import ResultRow

STAGES: tuple[str, ...] = ("prepare", "encoder", "llm", "sdpo", "evaluate", "rerank", "predict", "report")
PRESETS = Path(__file__).resolve().parents[1] / "configs"
RESULTS_FILE = "demo-results.json"
REPORT_FILE = "report.md"
FIGURES_DIR = "report"
# the test ranking of a checkpoint: train-llm / train-sdpo write the LLMs' (a seeded subset of the test samples), the
# demo has `llmrec evaluate` rank exactly those samples with each encoder, under the same name in its checkpoint
SUBSET_DIR = "eval-test-score"
GENERATE_DIR = "eval-test-generate"
VALID_DIR = "eval-valid-score"
RERANK_DIR = "rerank-popularity"
BASELINE = "mostpop"
OUTPUT_COMMAND = "demo"
METRICS = "metrics.json"
LABELS = {"mostpop": "MostPop", "sasrec": "SASRec", "gru4rec": "GRU4Rec", "caser": "Caser"}


@dataclass
class DemoConfig:
    """Options of `llmrec demo`."""

    dataset: Literal["ml-100k", "ml-1m", "steam", "lastfm"] = option(
        "ml-100k", "dataset the prepare stage builds (ml-100k is fetched when no raw files are found)")
    raw: Path | None = option(None, "folder with the dataset's raw files; None = data/raw/<dataset>")
    data: Path | None = option(None, "where the prepared data go; None = data/processed/<dataset>-llara-all")
    out: Path = option(Path("checkpoints/demo"), "where the demo's checkpoints, report and results go")
    seed: int = option(42, "seed of every stage", min=0, max=2**32 - 1)
    stages: list[str] = option(factory=lambda: list(STAGES), help="which stages to run, in order", choices=STAGES)
    encoder: Literal["sasrec", "gru4rec", "caser"] = option("sasrec", "sequential encoder to train")
    fresh: bool = option(False, "rerun stages whose output already exists")
    encoder_preset: str | None = option(None, "preset of the encoder: a shipped name (llmrec/configs/<name>.yaml) "
                                              "or a YAML file; None = encoder-<encoder>-demo when shipped "
                                              "(SASRec), else encoder-<encoder>")
    llm_preset: str = option("llm-tiny-cpu-demo", "preset of the LLM stage: a shipped name "
                                                   "(llmrec/configs/<name>.yaml) or a YAML file")
    llm_test_samples: int = option(1000, "LLM stage: rank a seeded subset of this many test samples", min=1)
    sdpo_preset: str = option("sdpo-tiny-cpu-demo", "preset of the S-DPO stage: a shipped name "
                                                     "(llmrec/configs/<name>.yaml) or a YAML file")
    generate_samples: int = option(100, "evaluate stage: rank a seeded subset of this many test samples in "
                                        "`generate` mode (SFT and S-DPO)", min=1)
    valid_samples: int = option(1000, "evaluate stage: rank a seeded subset of this many valid samples in `score` "
                                     "mode (the re-ranking tunes on them)", min=1)
    eval_batch_size: int = option(32, "evaluate stage: prompts per batch (greedy decoding of a small model costs "
                                      "about the same per step for 8 or 32 prompts)", min=1)


@dataclass(frozen=True)
class DemoPaths:
    """Every folder and file the demo reads or writes."""

    data: Path
    out: Path
    baseline: Path  # MostPop
    encoder: Path
    llm: Path
    sdpo: Path

    @classmethod
    def from_config(cls, config: DemoConfig) -> DemoPaths:
        out = Path(config.out)
        data = Path(config.data) if config.data is not None else Path(f"data/processed/{config.dataset}-llara-all")
        return cls(data=data, out=out, baseline=out / BASELINE, encoder=out / config.encoder,
                   llm=out / f"llm-hybrid-{config.encoder}", sdpo=out / f"sdpo-hybrid-{config.encoder}")

    @property
    def results(self) -> Path:
        return self.out / RESULTS_FILE

    @property
    def report(self) -> Path:
        return self.out / REPORT_FILE

    @property
    def figures(self) -> Path:
        return self.out / FIGURES_DIR

    @property
    def rerank(self) -> Path:
        return self.sdpo / RERANK_DIR


def default_encoder_preset(model: str) -> Path | None:
    """The shipped preset the demo trains `model` with when `--encoder-preset` is not given: its demo preset
    (`encoder-<model>-demo.yaml`, e.g. SASRec capped at the benchmark's 15 epochs) when one ships, else
    `encoder-<model>.yaml`, else None (the command's defaults)."""
    for name in (f"encoder-{model}-demo.yaml", f"encoder-{model}.yaml"):
        if (PRESETS / name).is_file():
            return PRESETS / name
    return None


def preset_path(value: str, option_name: str) -> Path:
    """A preset given as a shipped name (`llm-tiny-cpu-small`) or a YAML file path; ConfigError if missing."""
    from llmrec.base.errors import ConfigError

    given = Path(value)
    path = given if given.suffix in (".yaml", ".yml") or len(given.parts) > 1 else PRESETS / f"{value}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise ConfigError(f"option --{option_name}: no preset file {path} (a YAML file, or one of the shipped "
                          f"names: {shipped})")
    return path


def _finished(folder: Path) -> bool:
    return (folder / METRICS).is_file()


# ------------------------------------------------------------------------------------------------ outputs
@dataclass(frozen=True)
class Output:
    """One thing a stage makes. It is current when `marker` exists (written last, atomically), is no older than
    any of `inputs` (the markers of what it is made from; a missing input does not count: the stage itself
    says it needs it), and the mapping in `recorded` (a JSON or YAML file it wrote) holds the `expected`
    values of the options this run asks for."""

    marker: Path
    inputs: tuple[Path, ...] = ()
    recorded: Path | None = None
    expected: dict[str, Any] = field(default_factory=dict)

    def status(self) -> str | None:
        """None when current; else why not, in a few words (`missing` when there is no output)."""
        if not self.marker.is_file():
            return "missing"
        made = self.marker.stat().st_mtime_ns
        newer = next((i for i in self.inputs if i.is_file() and i.stat().st_mtime_ns > made), None)
        if newer is not None:
            return f"{self.marker.parent} is older than {newer}"
        if not self.expected or self.recorded is None:
            return None
        found = _read_mapping(self.recorded)
        if found is None:
            return f"{self.recorded} is unreadable"
        for key, want in self.expected.items():
            if found.get(key) != want:
                return f"{self.recorded} records {key}={found.get(key)!r}, this run asks for {want!r}"
        return None


def _read_mapping(path: Path) -> dict[str, Any] | None:
    """The mapping in a JSON (`.json`) or YAML file; None when it is missing, unreadable or not a mapping."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def prepare_output(config: DemoConfig, paths: DemoPaths) -> Output:
    """The prepared data: current when `meta.json` says dataset, `llara`, `all` and the seed of this run."""
    meta = paths.data / "meta.json"
    return Output(meta, recorded=meta, expected={"dataset": config.dataset, "protocol": "llara",
                                                 "eval_positions": "all", "seed": config.seed})


def encoder_outputs(config: DemoConfig, paths: DemoPaths) -> dict[str, Output]:
    """{model: output} of the encoder stage: MostPop and the LLM's encoder, each made from the prepared data."""
    meta = paths.data / "meta.json"
    return {model: Output(folder / METRICS, (meta,), folder / METRICS, {"model": model, "seed": config.seed})
            for model, folder in ((BASELINE, paths.baseline), (config.encoder, paths.encoder))}


def llm_output(config: DemoConfig, paths: DemoPaths) -> Output:
    """The SFT model, made from the encoder (and so the data); its test ranking is of `--llm-test-samples`."""
    return Output(paths.llm / METRICS, (paths.data / "meta.json", paths.encoder / METRICS), paths.llm / "config.yaml",
                  {"seed": config.seed, "max_test_samples": config.llm_test_samples})


def sdpo_output(config: DemoConfig, paths: DemoPaths) -> Output:
    """The S-DPO model, made from the SFT model."""
    return Output(paths.sdpo / METRICS, (paths.llm / METRICS,), paths.sdpo / "config.yaml",
                  {"seed": config.seed, "max_test_samples": config.llm_test_samples})


def evaluate_outputs(config: DemoConfig, paths: DemoPaths) -> dict[str, Output]:
    """{name: output} of the evaluate stage: each ranking, made from its model (the encoders' from the LLM's
    test ranking too, whose samples they rank), with the sample count and seed it was asked for."""
    def ranking(folder: Path, inputs: tuple[Path, ...], n: int, **more: str) -> Output:
        return Output(folder / METRICS, inputs, folder / "config.yaml", {"max_samples": n, "seed": config.seed, **more})

    llm_samples = paths.llm / SUBSET_DIR / METRICS
    return {
        BASELINE: ranking(paths.baseline / SUBSET_DIR, (paths.baseline / METRICS, llm_samples),
                          config.llm_test_samples),
        config.encoder: ranking(paths.encoder / SUBSET_DIR, (paths.encoder / METRICS, llm_samples),
                                config.llm_test_samples),
        "llm-generate": ranking(paths.llm / GENERATE_DIR, (paths.llm / METRICS,), config.generate_samples,
                                mode="generate", split="test"),
        "sdpo-generate": ranking(paths.sdpo / GENERATE_DIR, (paths.sdpo / METRICS,), config.generate_samples,
                                 mode="generate", split="test"),
        "sdpo-valid": ranking(paths.sdpo / VALID_DIR, (paths.sdpo / METRICS,), config.valid_samples,
                              mode="score", split="valid"),
    }


def rerank_output(paths: DemoPaths) -> Output:
    """The re-ranked S-DPO test ranking, made from its test and valid rankings."""
    return Output(paths.rerank / METRICS, (paths.sdpo / SUBSET_DIR / METRICS, paths.sdpo / VALID_DIR / METRICS))


def report_outputs(config: DemoConfig, paths: DemoPaths) -> list[Output]:
    """report.md and its figures, made from every ranking and every training log."""
    from llmrec.base.atomic import OUTPUT_MARKER

    made_from = (paths.encoder / METRICS, paths.llm / METRICS, paths.sdpo / METRICS,
                 *(o.marker for o in evaluate_outputs(config, paths).values()),
                 paths.llm / SUBSET_DIR / METRICS, paths.sdpo / SUBSET_DIR / METRICS, rerank_output(paths).marker)
    return [Output(paths.report, made_from), Output(paths.figures / OUTPUT_MARKER, made_from)]


# ------------------------------------------------------------------------------------------------ same samples
def sample_keys(table: pd.DataFrame) -> list[tuple[int, int]]:
    """The (user, position) of every row of a ranked table, in row order."""
    return list(zip(table["user_id"].astype(int).tolist(), table["position"].astype(int).tolist()))


def check_same_samples(tables: dict[str, pd.DataFrame]) -> None:
    """DataError unless every ranked table holds the same (user, position) samples in the same order."""
    from llmrec.base.errors import DataError

    items = list(tables.items())
    for name, table in items[1:]:
        if sample_keys(table) != sample_keys(items[0][1]):
            raise DataError(f"{name} ranks other test samples than {items[0][0]} ({len(table)} vs "
                            f"{len(items[0][1])} rows, or other users/positions): a stage was run with other "
                            f"options (--llm-test-samples, --seed); rerun with --fresh")


# ------------------------------------------------------------------------------------------------ results
def result_rows(paths: DemoPaths, data: ProcessedDataset, encoder: str) -> list[ResultRow]:
    """The five rows of the results table from the saved rankings (empty metrics where a ranking is missing);
    DataError when the rankings that exist are not of the same samples."""
    from llmrec.commands.demo_report import ResultRow
    from llmrec.evaluation.fairness_metrics import FAIRNESS_KS
    from llmrec.evaluation.groups import item_groups
    from llmrec.evaluation.ranked_metrics import table_metrics
    from llmrec.evaluation.scores import SCORES_FILE, read_scores

    groups = item_groups(data, "popularity")
    sources = [(LABELS[BASELINE], paths.baseline / SUBSET_DIR, None),
               (LABELS[encoder], paths.encoder / SUBSET_DIR, None),
               ("SFT LLM", paths.llm / SUBSET_DIR, paths.llm / GENERATE_DIR),
               ("S-DPO LLM", paths.sdpo / SUBSET_DIR, paths.sdpo / GENERATE_DIR),
               ("S-DPO + re-ranking", paths.rerank, None)]
    rows, tables = [], {}
    for label, folder, generated in sources:
        row = ResultRow(label, source=str(folder))
        if (folder / SCORES_FILE).is_file():
            tables[label] = table = read_scores(folder)
            row.metrics = table_metrics(table, data, groups, list(FAIRNESS_KS))
        found = _read_mapping(generated / METRICS) if generated is not None else None
        if found is not None and isinstance(found.get("valid_ratio"), (int, float)):
            row.valid_ratio = float(found["valid_ratio"])
        rows.append(row)
    check_same_samples(tables)
    return rows


def _stage_hr(rows: list[ResultRow], encoder: str, generated: Path) -> dict[str, float | None]:
    """hr@1 each stage is known for (the encoder stage by its SASRec row, evaluate by S-DPO in generate mode)."""
    by_label = {r.label: r.value("hr@1") for r in rows}
    gen = (_read_mapping(generated / METRICS) or {}).get("hr@1")
    return {"encoder": by_label.get(LABELS[encoder]), "llm": by_label.get("SFT LLM"),
            "sdpo": by_label.get("S-DPO LLM"), "evaluate": gen, "rerank": by_label.get("S-DPO + re-ranking")}


@dataclass
class Stage:
    """One stage of the demo: `work(redo)` makes its `outputs` unless they are all current (`StageRunner.run`)."""

    name: str
    outputs: list[Output]  # what it makes; [] = it writes nothing, so it always runs
    what: str  # printed when it runs
    reused: str  # what is reused, printed when it does not run
    work: Callable[[bool], bool]  # work(redo) -> whether later stages must run again (their input changed)
    per_output: bool = False  # work(False) remakes only its outputs that are not current, keeping the others


class StageRunner:
    """Runs the selected stages in order: the `== stage` / `-- done` lines, reuse, timing and the record."""

    def __init__(self, selected: list[str], fresh: bool, previous: dict[str, Any]):
        self.selected = [s for s in STAGES if s in selected]
        self.redo = fresh  # once a stage changes what later stages read, they must run again
        self.previous = previous.get("stages") if isinstance(previous.get("stages"), dict) else {}
        self.records: dict[str, dict[str, Any]] = {}

    def run(self, stage: Stage) -> bool:
        """Run `stage.work(redo)` unless every output is current and no stage before it ran again; True if
        reused. A stage without outputs always runs. The record says `partial` when the stage kept some current
        outputs and remade the others: its seconds are then not those of making its whole output."""
        number = f"{self.selected.index(stage.name) + 1}/{len(self.selected)}"
        statuses = [o.status() for o in stage.outputs]
        reuse = bool(stage.outputs) and not self.redo and all(s is None for s in statuses)
        stale = next((s for s in statuses if s not in (None, "missing")), None)
        if reuse:
            line = f"reusing {stage.reused} (pass --fresh to rerun)"
        else:
            line = stage.what + (f" (out of date: {stale})" if stale is not None and not self.redo else "")
        print(f"== stage {number} {stage.name}: {line}", flush=True)
        partial = not reuse and not self.redo and stage.per_output and any(s is None for s in statuses)
        started = time.perf_counter()
        if not reuse:
            self.redo = stage.work(self.redo) or self.redo
        seconds = time.perf_counter() - started
        print(f"-- {stage.name} done in {duration(seconds)}", flush=True)
        record: dict[str, Any] = {"seconds": seconds, "hr@1": None, "reused": reuse, "partial": partial,
                                  "seconds_from": "this run"}
        if reuse:
            earlier = self.previous.get(stage.name) or {}
            whole = earlier.get("seconds_from") in ("this run", "earlier run") and not earlier.get("partial", True)
            if whole and isinstance(earlier.get("seconds"), (int, float)):
                record.update(seconds=float(earlier["seconds"]), seconds_from="earlier run")
            else:
                record["seconds_from"] = "reuse check"
        self.records[stage.name] = record
        return reuse




def _read_previous(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_results(path: Path, records: dict[str, dict[str, Any]], rows: list[ResultRow], encoder: str,
                  wall_seconds: float, facts: dict[str, Any]) -> Path:
    """`demo-results.json`: per-stage seconds and hr@1, the baselines' hr@1, the table and the wall time."""
    from llmrec.base.atomic import atomic_write_text

    by_label = {r.label: r for r in rows}
    n = next((r.metrics.get("n_samples") for r in rows if r.metrics.get("n_samples") is not None), None)
    results = {"stages": records,
               "mostpop_hr@1": by_label[LABELS[BASELINE]].value("hr@1") if by_label else None,
               f"{encoder}_hr@1": by_label[LABELS[encoder]].value("hr@1") if by_label else None,
               "n_test_samples": n, "wall_seconds": wall_seconds,
               "table": {r.label: {"hr@1": r.value("hr@1"), "valid_ratio": r.value("valid_ratio"),
                                   "candidates/ndcg@5": r.value("candidates/ndcg@5"), "mgu@1": r.value("mgu@1")}
                         for r in rows},
               **facts}
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(results, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------ stages
def _prepare(config: DemoConfig, paths: DemoPaths) -> bool:
    from llmrec.data.prepare import PrepareConfig, run_prepare

    run_prepare(PrepareConfig(dataset=config.dataset, raw=config.raw, protocol="llara", eval_positions="all",
                              seed=config.seed, out=paths.data))
    return True


def _print_encoder(name: str, folder: Path) -> None:
    test = json.loads((folder / METRICS).read_text()).get("test", {})
    keys = ("candidates/hr@1", "candidates/ndcg@5", "candidates/mgu@1")
    print(f"  {LABELS[name]:8s} test ({test.get('n_samples')} samples, stored candidates): "
          + "  ".join(f"{k}={test[k]:.4f}" for k in keys if k in test), flush=True)


def _needs(folder: Path, stage: str, needed_by: str) -> None:
    """ConfigError unless `folder` holds a finished output (of stage `stage`)."""
    from llmrec.base.errors import ConfigError

    if not _finished(folder):
        raise ConfigError(f"stage {needed_by} needs {folder} (made by the {stage} stage; add it to --stages)")


def _train_encoders(config: DemoConfig, paths: DemoPaths, redo: bool) -> bool:
    """Train the encoders that are not current (all with `redo`); True when the LLM's encoder was trained
    (MostPop alone changes only its own ranking, which the evaluate stage then remakes: it is out of date)."""
    from llmrec.base.config import resolve_config
    from llmrec.encoders.train import TrainEncoderConfig, run_train_encoder
    from llmrec.base.progress import interactive

    outputs = encoder_outputs(config, paths)
    trained = False
    for model, folder in ((BASELINE, paths.baseline), (config.encoder, paths.encoder)):
        if not redo and outputs[model].status() is None:
            print(f"  reusing {folder}", flush=True)
            continue
        trained = trained or model == config.encoder
        preset = default_encoder_preset(model)
        if model != BASELINE and config.encoder_preset is not None:
            preset = preset_path(config.encoder_preset, "encoder-preset")
        run_train_encoder(resolve_config(TrainEncoderConfig, {
            "data": paths.data, "out": folder, "model": model, "seed": config.seed,
            "progress_bar": interactive()}, preset))  # a bar off a terminal would print control characters
    for model, folder in ((BASELINE, paths.baseline), (config.encoder, paths.encoder)):
        _print_encoder(model, folder)
    return trained


def _run_quietly(run: Callable[[Any], int], config: Any) -> None:
    """Run a command whose JSON printout the demo replaces by its own summary line (progress goes to stderr)."""
    with contextlib.redirect_stdout(io.StringIO()):
        run(config)


def _train_llm_stage(run: Callable[[Any], int], config_class: type, values: dict[str, Any], preset: Path,
                     needs: tuple[Path, str, str]) -> bool:
    """Train one LLM stage (SFT or S-DPO) from its preset and the demo's own values, once its input stage is done.

    `needs` is (input folder, input stage, this stage), for the one-line message when the input is missing.
    """
    from llmrec.base.config import resolve_config

    _needs(*needs)
    _run_quietly(run, resolve_config(config_class, values, preset))
    return True


def _train_llm(config: DemoConfig, paths: DemoPaths) -> bool:
    from llmrec.llm.train import TrainLLMConfig, run_train_llm

    return _train_llm_stage(run_train_llm, TrainLLMConfig, {
        "data": paths.data, "encoder": paths.encoder, "out": paths.llm, "seed": config.seed,
        "max_test_samples": config.llm_test_samples}, preset_path(config.llm_preset, "llm-preset"),
        needs=(paths.encoder, "encoder", "llm"))


def _train_sdpo(config: DemoConfig, paths: DemoPaths) -> bool:
    from llmrec.preference.train import TrainSDPOConfig, run_train_sdpo

    return _train_llm_stage(run_train_sdpo, TrainSDPOConfig, {
        "sft": paths.llm, "data": paths.data, "out": paths.sdpo, "seed": config.seed,
        "max_test_samples": config.llm_test_samples}, preset_path(config.sdpo_preset, "sdpo-preset"),
        needs=(paths.llm, "llm", "sdpo"))


def _print_llm(title: str, folder: Path) -> None:
    metrics = json.loads((folder / METRICS).read_text())
    print(f"  {title}, score mode, {metrics.get('test/n_samples')} test samples (SMALL demo scale, not the "
          f"benchmark figure): hr@1={metrics.get('test/hr@1', float('nan')):.4f}  "
          f"candidates/ndcg@5={metrics.get('test/candidates/ndcg@5', float('nan')):.4f}", flush=True)


def _evaluate(config: DemoConfig, paths: DemoPaths, redo: bool) -> bool:
    """Make the rankings that are not current (all with `redo`), each with `llmrec evaluate`."""
    from llmrec.commands.evaluate import EvaluateConfig, run_evaluate
    from llmrec.evaluation.scores import read_scores

    for folder, stage in ((paths.baseline, "encoder"), (paths.encoder, "encoder"), (paths.llm, "llm"),
                          (paths.sdpo, "sdpo")):
        _needs(folder, stage, "evaluate")
    outputs = evaluate_outputs(config, paths)
    # the encoders rank the LLMs' test samples: the same seeded subset of the same size
    for name, folder in ((BASELINE, paths.baseline), (config.encoder, paths.encoder)):
        if redo or outputs[name].status() is not None:
            _run_quietly(run_evaluate, EvaluateConfig(ckpt=folder, data=paths.data, mode="score", split="test",
                                                      max_samples=config.llm_test_samples, seed=config.seed,
                                                      out=folder / SUBSET_DIR))
        m = json.loads((folder / SUBSET_DIR / METRICS).read_text())
        print(f"  {LABELS[name]:8s} on the LLMs' {m['n_samples']} test samples: hr@1={m['hr@1']:.4f}  "
              f"candidates/ndcg@5={m['candidates/ndcg@5']:.4f}  mgu@1={m.get('mgu@1', float('nan')):.4f}",
              flush=True)
    check_same_samples({f"{LABELS[config.encoder]} ({paths.encoder / SUBSET_DIR})":
                        read_scores(paths.encoder / SUBSET_DIR),
                        f"SFT LLM ({paths.llm / SUBSET_DIR})": read_scores(paths.llm / SUBSET_DIR),
                        f"S-DPO LLM ({paths.sdpo / SUBSET_DIR})": read_scores(paths.sdpo / SUBSET_DIR)})
    runs = [("llm-generate", paths.llm, "SFT LLM", "generate", "test", config.generate_samples, GENERATE_DIR),
            ("sdpo-generate", paths.sdpo, "S-DPO LLM", "generate", "test", config.generate_samples, GENERATE_DIR),
            ("sdpo-valid", paths.sdpo, "S-DPO LLM", "score", "valid", config.valid_samples, VALID_DIR)]
    for key, ckpt, label, mode, split, n, name in runs:
        if redo or outputs[key].status() is not None:
            _run_quietly(run_evaluate, EvaluateConfig(ckpt=ckpt, data=paths.data, mode=mode, split=split,
                                                      batch_size=config.eval_batch_size, max_samples=n,
                                                      seed=config.seed, out=ckpt / name))
        m = json.loads((ckpt / name / METRICS).read_text())
        print(f"  {label:9s} {mode:8s} on {m['n_samples']} {split} samples: hr@1={m['hr@1']:.4f}  "
              f"valid_ratio={m['valid_ratio']:.4f}  mgu@1={m.get('mgu@1', float('nan')):.4f}", flush=True)
    return True


def _rerank(paths: DemoPaths) -> bool:
    from llmrec.fairness.rerank_command import RerankConfig, run_rerank

    _needs(paths.sdpo / SUBSET_DIR, "sdpo", "rerank")
    _needs(paths.sdpo / VALID_DIR, "evaluate", "rerank")  # alpha is chosen on these valid scores
    run_rerank(RerankConfig(scores=paths.sdpo, alpha="auto", out=paths.rerank))
    return True


def _predict(paths: DemoPaths) -> bool:
    from llmrec.data.dataset import ProcessedDataset
    from llmrec.base.errors import ConfigError, DataError
    from llmrec.serving.predict import PredictConfig, run_predict

    final = next((d for d in (paths.sdpo, paths.llm) if _finished(d)), None)
    if final is None:
        raise ConfigError(f"stage predict needs a trained LLM ({paths.sdpo} or {paths.llm}: the sdpo or llm stage)")
    test = ProcessedDataset.load(paths.data).split("test")
    if not len(test):
        raise DataError(f"{paths.data}: the test split has no samples to predict for")
    user = test.iloc[len(test) // 2]  # a test user the models never trained on (llara holds test users out)
    history = [int(i) for i in user["history"]]
    print(f"  top 10 of the whole catalog for test user {int(user['user_id'])} ({final.name}), history of "
          f"{len(history)} items (the true next item was {int(user['target'])})", flush=True)
    run_predict(PredictConfig(ckpt=final, history=[",".join(map(str, history))], k=10, device="cpu"))
    return False  # prints only


def _generated_samples(paths: DemoPaths) -> int | None:
    """How many test samples the generate-mode rankings hold (as made, whatever this run's options say)."""
    for folder in (paths.sdpo / GENERATE_DIR, paths.llm / GENERATE_DIR):
        found = _read_mapping(folder / METRICS)
        if found is not None and isinstance(found.get("n_samples"), int):
            return int(found["n_samples"])
    return None


def _report(config: DemoConfig, paths: DemoPaths, rows: list[ResultRow], runner: StageRunner) -> bool:
    from llmrec.base.atomic import atomic_write_text, output_directory
    from llmrec.data.dataset import ProcessedDataset
    from llmrec.commands.demo_report import read_stage_curves, report_markdown, write_figures
    from llmrec.evaluation.groups import item_groups

    curves = [c for c in (read_stage_curves(LABELS[config.encoder], paths.encoder),
                          read_stage_curves("SFT LLM", paths.llm), read_stage_curves("S-DPO LLM", paths.sdpo))
              if c is not None]
    groups = item_groups(ProcessedDataset.load(paths.data), "popularity").to_dict()
    with output_directory(paths.figures, OUTPUT_COMMAND) as tmp:
        figures = write_figures(tmp, rows, curves, groups)
    n = next((r.metrics.get("n_samples") for r in rows if r.metrics.get("n_samples") is not None), None)
    facts = {"dataset": config.dataset, "data": paths.data, "out": paths.out, "seed": config.seed,
             "n_test_samples": n, "n_generate_samples": _generated_samples(paths),
             "encoder_label": LABELS[config.encoder],
             "scale": (f"The LLM stages run at the documented SMALL CPU scale of `{config.llm_preset}` and "
                       f"`{config.sdpo_preset}`: smoke-level numbers that show every stage working, not what the "
                       f"method reaches at full scale (see the README's benchmark tables).")}
    stages = {**runner.records, "report": {"seconds": None, "reused": False}}
    atomic_write_text(paths.report, report_markdown(rows, figures, FIGURES_DIR, facts, stages))
    print(f"  wrote {paths.report} (figures in {paths.figures})", flush=True)
    return True


def _rows_if_any(config: DemoConfig, paths: DemoPaths) -> list[ResultRow]:
    """The results rows when the data are prepared (else none); a row whose ranking is out of date says why in
    its `note`."""
    from llmrec.data.dataset import ProcessedDataset, is_processed_dir

    if not is_processed_dir(paths.data):
        return []
    rows = result_rows(paths, ProcessedDataset.load(paths.data), config.encoder)
    rankings = evaluate_outputs(config, paths)
    llm, sdpo = llm_output(config, paths), sdpo_output(config, paths)
    # per row (in row order), the outputs its ranking comes from, the nearest first: out of date if any is
    made = [[rankings[BASELINE]], [rankings[config.encoder]], [llm], [sdpo, llm], [rerank_output(paths), sdpo, llm]]
    for row, chain in zip(rows, made):
        why = next((w for w in (o.status() for o in chain) if w is not None), None)
        if row.metrics and why is not None:
            row.note = f"out of date: {why}"
    return rows


def demo_stages(config: DemoConfig, paths: DemoPaths, runner: StageRunner) -> list[Stage]:
    """The eight stages in order."""
    enc = LABELS[config.encoder]
    return [
        Stage("prepare", [prepare_output(config, paths)],
              f"{config.dataset} into {paths.data} (llara protocol, every eval position)", str(paths.data),
              lambda redo: _prepare(config, paths)),
        Stage("encoder", list(encoder_outputs(config, paths).values()),
              f"train MostPop and {enc} on {paths.data}", f"{paths.baseline} and {paths.encoder}",
              lambda redo: _train_encoders(config, paths, redo), per_output=True),
        Stage("llm", [llm_output(config, paths)],
              f"SFT of a tiny hybrid LLM recommender ({config.llm_preset}: small scale, see the file)", str(paths.llm),
              lambda redo: _train_llm(config, paths)),
        Stage("sdpo", [sdpo_output(config, paths)],
              f"S-DPO from the SFT model ({config.sdpo_preset}: small scale, see the file)", str(paths.sdpo),
              lambda redo: _train_sdpo(config, paths)),
        Stage("evaluate", list(evaluate_outputs(config, paths).values()),
              f"MostPop and {enc} on the LLMs' test samples; SFT and S-DPO in generate mode "
              f"({config.generate_samples} test samples); S-DPO on {config.valid_samples} valid samples",
              f"the rankings in {paths.baseline}, {paths.encoder}, {paths.llm} and {paths.sdpo}",
              lambda redo: _evaluate(config, paths, redo), per_output=True),
        Stage("rerank", [rerank_output(paths)],
              "IFairLRS re-ranking of the S-DPO test ranking (popularity groups, alpha chosen on valid)",
              str(paths.rerank), lambda redo: _rerank(paths)),
        Stage("predict", [], "the final model's top 10 for one test user", "", lambda redo: _predict(paths)),
        Stage("report", report_outputs(config, paths),
              f"{paths.report} with figures in {paths.figures}", str(paths.report),
              lambda redo: _report(config, paths, _rows_if_any(config, paths), runner)),
    ]


def _after(name: str, paths: DemoPaths, config: DemoConfig, reused: bool) -> None:
    """What a stage prints once done (a reused training stage still shows its metrics)."""
    if name == "encoder" and reused:
        for model, folder in ((BASELINE, paths.baseline), (config.encoder, paths.encoder)):
            _print_encoder(model, folder)
    elif name in ("llm", "sdpo"):
        _print_llm("SFT LLM" if name == "llm" else "S-DPO LLM", paths.llm if name == "llm" else paths.sdpo)


def run_demo(config: DemoConfig) -> int:
    """Run the selected stages (see the module docstring); print the results table; write demo-results.json."""
    from llmrec.base.config import check_config
    from llmrec.commands.demo_report import results_text
    from llmrec.base.errors import ConfigError, DataError

    check_config(config)
    unknown = [s for s in config.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"option --stages: unknown stage(s) {', '.join(unknown)}; expected {', '.join(STAGES)}")
    started = time.perf_counter()
    paths = DemoPaths.from_config(config)
    for name, value in (("llm-preset", config.llm_preset), ("sdpo-preset", config.sdpo_preset),
                        ("encoder-preset", config.encoder_preset)):
        if value is not None:
            preset_path(value, name)  # a mistyped preset fails now, not after an hour of training
    runner = StageRunner(config.stages, config.fresh, _read_previous(paths.results))
    facts = {"dataset": config.dataset, "seed": config.seed, "encoder": config.encoder,
             "llm_preset": config.llm_preset, "sdpo_preset": config.sdpo_preset,
             "llm_test_samples": config.llm_test_samples, "generate_samples": config.generate_samples,
             "valid_samples": config.valid_samples}
    for stage in demo_stages(config, paths, runner):
        if stage.name in runner.selected:
            _after(stage.name, paths, config, reused=runner.run(stage))
            # after every stage, so an interrupted run keeps the seconds of the stages it finished
            write_results(paths.results, runner.records, [], config.encoder, time.perf_counter() - started, facts)
    try:
        rows = _rows_if_any(config, paths)
    except DataError as e:  # rankings left by runs with other options: say so, the stages themselves succeeded
        print(f"\nno results table: {e}", flush=True)
        rows = []
    for stage, hr in _stage_hr(rows, config.encoder, paths.sdpo / GENERATE_DIR).items():
        if stage in runner.records:
            runner.records[stage]["hr@1"] = hr
    if any(r.metrics for r in rows):
        n = next(r.metrics["n_samples"] for r in rows if r.metrics)
        generated = _generated_samples(paths)
        print("\n" + results_text(rows, f"results on the same {n} test samples (hr@1, ndcg@5, mgu@1: score mode; "
                                        f"valid_ratio: generate mode on "
                                        f"{'no' if generated is None else generated} samples)"))
        for row in rows:
            if row.note:
                print(f"  {row.label}: {row.note}; run the demo without --stages to remake it", flush=True)
    wall = time.perf_counter() - started
    write_results(paths.results, runner.records, rows, config.encoder, wall, facts)
    print(f"\ndemo finished in {duration(wall)}; outputs in {paths.out} and {paths.data}"
          + (f"; report: {paths.report}" if paths.report.is_file() else ""), flush=True)
    return 0
