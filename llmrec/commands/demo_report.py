"""The results of `llmrec demo` (`llmrec.commands.demo`): the results table, the training curves and `report.md`.

Everything here reads files the pipeline already wrote and runs no model:
- `ResultRow`: one row of the results table (MostPop, the encoder, SFT LLM, S-DPO LLM, S-DPO + re-ranking), all
  measured on the SAME seeded subset of the test samples (`llmrec.commands.demo` makes sure of that);
- `results_text` / `results_markdown`: that table for the terminal and for Markdown;
- `read_stage_curves`: the train loss and the validation metric of one training stage against the optimiser
  step, from the Lightning CSV log every trainer writes (`<folder>/logs/csv/metrics.csv`,
  `llmrec.training.loggers`);
- `write_figures`: `training-curves.png`, `hr1.png` and, through `llmrec.fairness.report.write_report` (the
  same GP vs GH figure and fairness tables as `llmrec report`), `fairness/`;
- `generate_examples` / `examples_text` / `examples_markdown`: a few test samples ranked in `generate` mode in
  titles (the history, the generated answer, the candidate it named, the true next item), from the ranking's
  `scores.parquet` (which keeps the decoded text) and the dataset;
- `report_markdown`: the text of `<out>/report.md`.
Figures are drawn with matplotlib's Agg canvas through `matplotlib.figure.Figure` (no pyplot, no display).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmrec.base.atomic import atomic_write
from llmrec.fairness.report import ReportEntry, write_report
from llmrec.training.loggers import LOG_DIR

TABLE_COLUMNS: tuple[str, ...] = ("hr@1", "valid_ratio", "candidates/ndcg@5", "mgu@1")
MISSING = "-"
CURVES_FILE = "training-curves.png"
HR_FILE = "hr1.png"
FAIRNESS_DIR = "fairness"
GP_GH_FILE = "gp-gh.png"
MGU_FILE = "mgu-k.png"
# The encoder logs its loss on_step and on_epoch; with ~14 steps an epoch Lightning writes the step loss once an
# epoch, of the epoch's last (partial) batch, so the epoch mean is the truer curve. The first key with the most
# logged points wins: the step loss only when it was logged more often than the epoch mean.
LOSS_KEYS: tuple[str, ...] = ("train/loss_epoch", "train/loss_step", "train/loss")
VALID_KEYS: tuple[str, ...] = ("valid/hr@1", "valid/candidates/hr@1", "valid/full/ndcg@10")


@dataclass
class ResultRow:
    """One model in the results table.

    `metrics` is flat with the keys of an LLM evaluation (`hr@1`, `candidates/ndcg@5`, `mgu@k`, `dgu@k`,
    `gu@k/<group>`, `gh/<group>`); `valid_ratio` is the generate-mode valid ratio (None: not an LLM, or the
    ranking is not generated). An empty `metrics` means the model's ranking is not there (stage not run).
    """

    label: str
    metrics: dict[str, Any] = field(default_factory=dict)
    valid_ratio: float | None = None
    source: str = ""
    note: str = ""

    def value(self, key: str) -> float | None:
        """The number under `key` (`valid_ratio` included); None when missing or NaN."""
        value = self.valid_ratio if key == "valid_ratio" else self.metrics.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(float(value)):
            return None
        return float(value)


def cell(value: float | None) -> str:
    """`0.12345` -> `0.1235`; None -> `-`."""
    return MISSING if value is None else f"{value:.4f}"


def results_text(rows: Sequence[ResultRow], title: str = "") -> str:
    """The results table in fixed-width columns for the terminal."""
    width = max([len("model")] + [len(r.label) for r in rows])
    cols = [max(len(c), 6) for c in TABLE_COLUMNS]
    lines = [title] if title else []
    lines.append(f"{'model':<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(TABLE_COLUMNS, cols)))
    for r in rows:
        lines.append(f"{r.label:<{width}}  " + "  ".join(f"{cell(r.value(c)):>{w}}"
                                                          for c, w in zip(TABLE_COLUMNS, cols)))
    return "\n".join(lines)


def results_markdown(rows: Sequence[ResultRow]) -> str:
    """The results table in Markdown."""
    lines = ["| model | " + " | ".join(f"`{c}`" for c in TABLE_COLUMNS) + " |",
             "|---|" + "---:|" * len(TABLE_COLUMNS)]
    lines += [f"| {r.label} | " + " | ".join(cell(r.value(c)) for c in TABLE_COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def report_entries(rows: Sequence[ResultRow], groups: dict[str, Any] | None) -> list[ReportEntry]:
    """`llmrec.fairness.report` entries of the rows that have a ranking (valid_ratio = the generate one)."""
    return [ReportEntry(r.label, {**r.metrics, "valid_ratio": r.valid_ratio}, r.source, r.note, groups)
            for r in rows if r.metrics]


# ------------------------------------------------------------------------------------------------ curves
@dataclass
class StageCurves:
    """The curves of one training stage: [S] steps and [S] values of the train loss and of the valid metric."""

    label: str
    loss_steps: np.ndarray
    loss: np.ndarray
    valid_key: str | None
    valid_steps: np.ndarray
    valid: np.ndarray


def metrics_csv(folder: Path) -> Path:
    """Where a training stage's Lightning CSV logger writes (`llmrec.training.loggers`)."""
    return Path(folder) / LOG_DIR / "csv" / "metrics.csv"


def _column(table: pd.DataFrame, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the rows where `key` was logged."""
    rows = table[table[key].notna()] if key in table.columns else table.iloc[:0]
    steps = rows["step"].to_numpy(dtype=np.int64) if "step" in rows.columns else np.arange(len(rows))
    return steps, rows[key].to_numpy(dtype=np.float64) if key in rows.columns else np.zeros(0)


def curves_from_table(label: str, table: pd.DataFrame, monitor: str | None = None) -> StageCurves:
    """The curves of a Lightning `metrics.csv` table (one row per logging call, NaN where not logged).

    The valid curve is `monitor` (the metric KeepBest watched, as the stage's metrics.json names it) when logged,
    else the first logged of VALID_KEYS (the LLM stages watch `valid/hr@1` and record no `monitor`)."""
    logged = {k: int(table[k].notna().sum()) for k in LOSS_KEYS if k in table.columns and table[k].notna().any()}
    loss_key = max(logged, key=logged.__getitem__) if logged else None  # max keeps the first of equal counts
    keys = (monitor, *VALID_KEYS) if monitor else VALID_KEYS
    valid_key = next((k for k in keys if k in table.columns and table[k].notna().any()), None)
    loss_steps, loss = _column(table, loss_key) if loss_key else (np.zeros(0, np.int64), np.zeros(0))
    valid_steps, valid = _column(table, valid_key) if valid_key else (np.zeros(0, np.int64), np.zeros(0))
    return StageCurves(label, loss_steps, loss, valid_key, valid_steps, valid)


def read_stage_curves(label: str, folder: Path) -> StageCurves | None:
    """The curves of the training stage whose output is `folder`; None when it has no CSV log."""
    path = metrics_csv(folder)
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None
    try:
        monitor = json.loads((Path(folder) / "metrics.json").read_text(encoding="utf-8")).get("monitor")
    except (OSError, ValueError, AttributeError):
        monitor = None
    return curves_from_table(label, table, monitor if isinstance(monitor, str) else None)


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """[S] trailing mean of [S] `values` over the last `window` entries (fewer at the start, where fewer exist).

    A training loss logged every few steps of a small batch is noisy (the S-DPO loss of 16 samples jumps by 2x
    from step to step); its running mean shows whether it goes down.
    """
    if window < 1:
        raise ValueError(f"running mean over window {window}: expected at least 1")
    sums = np.cumsum(np.concatenate([[0.0], values.astype(np.float64)]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def loss_window(n_points: int) -> int:
    """Entries per running mean of a loss curve of `n_points`: about a twentieth of the curve, at least 3."""
    return max(3, n_points // 20)


# ------------------------------------------------------------------------------------------------ figures
def _save(fig: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def curves_figure(curves: Sequence[StageCurves], path: Path) -> None:
    """One column per stage: the train loss (top) and the validation metric (bottom) against the step."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(curves), 6.0), layout="constrained")
    axes = fig.subplots(2, len(curves), squeeze=False, sharex="col")  # one step axis per stage
    for col, c in enumerate(curves):
        top, bottom = axes[0][col], axes[1][col]
        if len(c.loss) <= 20:  # a short run: show each logged step
            top.plot(c.loss_steps, c.loss, color="#1f77b4", linewidth=1.2, marker="o", markersize=3)
        else:  # each logged step faint, their running mean on top
            window = loss_window(len(c.loss))
            top.plot(c.loss_steps, c.loss, color="#1f77b4", linewidth=0.8, alpha=0.3, label="logged")
            top.plot(c.loss_steps, running_mean(c.loss, window), color="#1f77b4", linewidth=1.8,
                     label=f"running mean of {window}")
            top.legend(loc="upper right", fontsize="small")
        top.set_title(c.label)
        top.set_ylabel("train loss")
        bottom.plot(c.valid_steps, c.valid, color="#d62728", marker="o")
        if len(c.valid):  # every VALID_KEYS metric is higher-is-better: KeepBest keeps the weights of the maximum
            best = int(np.argmax(c.valid))
            bottom.annotate(f"kept: {c.valid[best]:.3f}", (c.valid_steps[best], c.valid[best]),
                            textcoords="offset points", xytext=(0, -14), ha="center", fontsize="small")
        bottom.set_ylabel(c.valid_key or "no validation logged")
        bottom.set_xlabel("optimiser step")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    _save(fig, path)


def hr_figure(rows: Sequence[ResultRow], path: Path) -> None:
    """hr@1 of every row as bars (a row without a value gets an empty slot marked `-`)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 1.5 * len(rows)), 4.2), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    values = [r.value("hr@1") for r in rows]
    bars = ax.bar(x, [v or 0.0 for v in values], color="#4c72b0")
    for bar, v in zip(bars, values):
        ax.annotate(cell(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x, [r.label for r in rows], rotation=15, ha="right")
    ax.set_ylabel("hr@1 (20 candidates)")
    ax.set_ylim(0, max([v for v in values if v is not None] + [0.05]) * 1.2)
    ax.set_title("hr@1 per stage, same test samples")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def write_figures(folder: Path, rows: Sequence[ResultRow], curves: Sequence[StageCurves],
                  groups: dict[str, Any] | None) -> dict[str, str]:
    """Write the demo's figures into `folder` (created); returns {figure: path relative to `folder`}.

    Keys: `curves` (when some stage has a log), `hr` (when some row has hr@1), `gp_gh` and `mgu` (drawn by
    `llmrec.fairness.report.write_report` into `folder/fairness/`, beside its `report.md`) when some row has
    fairness metrics.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    if curves:
        curves_figure(curves, folder / CURVES_FILE)
        out["curves"] = CURVES_FILE
    if any(r.value("hr@1") is not None for r in rows):
        hr_figure(rows, folder / HR_FILE)
        out["hr"] = HR_FILE
    entries = report_entries(rows, groups)
    if entries:
        write_report(folder / FAIRNESS_DIR, entries, bars_k=1,
                     title="llmrec demo: accuracy and item-side fairness on the same test samples")
        out["fairness"] = f"{FAIRNESS_DIR}/report.md"
        for key, name in (("gp_gh", GP_GH_FILE), ("mgu", MGU_FILE)):
            if (folder / FAIRNESS_DIR / name).is_file():
                out[key] = f"{FAIRNESS_DIR}/{name}"
    return out


# ------------------------------------------------------------------------------------------------ generate mode
@dataclass(frozen=True)
class GenerateExample:
    """One test sample ranked in `generate` mode, in titles: what the prompt listed, what the LLM answered."""

    user_id: int
    history: tuple[str, ...]  # the titles of the sample's history, oldest first
    answer: str               # the first line of the generated text: what LLaRA's matching rule reads
    chosen: str | None        # the candidate the answer named; None = it named none (invalid)
    target: str               # the true next item's title
    hit: bool                 # the named candidate is the true next item


def answer_line(text: str) -> str:
    """The first non-empty line of a generated text, stripped (the line generate mode matches)."""
    return text.strip().split("\n", 1)[0].strip()


def generate_examples(table: pd.DataFrame, samples: pd.DataFrame, titles: Sequence[str], n: int
                      ) -> list[GenerateExample]:
    """The first `n` rows of a generate-mode ranked table (`llmrec.evaluation.scores`: `user_id`, `position`,
    `target`, `chosen`, `text`) of distinct users, in titles; `samples` are the split's rows the table ranked
    (`user_id`, `position`, `history`), `titles[item_id]` each item's title. DataError when a row is not among
    `samples` (a ranking of other data)."""
    from llmrec.base.errors import DataError
    from llmrec.evaluation.scores import INVALID

    histories = {(int(u), int(p)): h for u, p, h in zip(samples["user_id"], samples["position"], samples["history"])}
    out: list[GenerateExample] = []
    for row in table.itertuples(index=False):
        user, position = int(row.user_id), int(row.position)
        if len(out) >= n:
            break
        if any(e.user_id == user for e in out):
            continue
        if (user, position) not in histories:
            raise DataError(f"generate-mode ranking: sample (user {user}, position {position}) is not in the "
                            f"dataset's split; the ranking was made from other data")
        chosen = int(row.chosen)
        out.append(GenerateExample(user, tuple(titles[int(i)] for i in histories[user, position]),
                                   answer_line(str(row.text or "")), None if chosen == INVALID else titles[chosen],
                                   titles[int(row.target)], chosen == int(row.target)))
    return out


def examples_text(examples: Sequence[GenerateExample]) -> str:
    """The examples for the terminal: one block per user."""
    lines = []
    for e in examples:
        lines += [f"  user {e.user_id} watched: {'; '.join(e.history)}",
                  f"    generated: {e.answer!r}",
                  f"    named:     {e.chosen if e.chosen is not None else 'invalid (names no single candidate)'}",
                  f"    true next: {e.target} ({'hit' if e.hit else 'miss'})"]
    return "\n".join(lines)


def _escape(text: str) -> str:
    """Text shown as is in Markdown (titles hold `*`, `_`, `[`, ... now and then)."""
    return "".join(f"\\{c}" if c in "\\`*_[]<>|#" else c for c in text)


def examples_markdown(examples: Sequence[GenerateExample]) -> list[str]:
    """The examples as Markdown lines: one list item per user."""
    lines = []
    for e in examples:
        named = f"*{_escape(e.chosen)}*" if e.chosen is not None else "invalid (names no single candidate)"
        lines += [f"- user {e.user_id} watched: {_escape('; '.join(e.history))}  ",
                  f"  generated: \"{_escape(e.answer)}\" → {named}; true next item: *{_escape(e.target)}* "
                  f"({'hit' if e.hit else 'miss'})"]
    return lines


# ------------------------------------------------------------------------------------------------ report.md
def stage_lines(stages: dict[str, dict[str, Any]]) -> list[str]:
    """The Markdown table of the stages' records (`llmrec.commands.demo.StageRunner`): seconds and how each was made."""
    lines = ["| stage | seconds | this run |", "|---|---:|---|"]
    for name, s in stages.items():
        seconds = s.get("seconds")
        how = "ran (remade only what was out of date)" if s.get("partial") else "ran"
        if s.get("reused"):
            how = ("reused (seconds of the run that made it)" if s.get("seconds_from") == "earlier run" else
                   "reused (seconds of the reuse check)")
        lines.append(f"| {name} | {MISSING if seconds is None else f'{seconds:.1f}'} | {how} |")
    return lines


def report_markdown(rows: Sequence[ResultRow], figures: dict[str, str], figures_dir: str,
                    facts: dict[str, Any], stages: dict[str, dict[str, Any]]) -> str:
    """The text of the demo's `report.md`; figure paths are `figures_dir/<figures[key]>` (relative to it).

    `facts` holds `dataset`, `data`, `out`, `seed`, `n_test_samples`, `n_generate_samples` (None: no generated
    ranking), `encoder_label` (the encoder's row label) and `scale` (one sentence on the training scale); a
    preset's report adds `title`, `skipped` (a sentence on the stages it leaves out, in place of the one on
    re-ranking) and `examples` (`GenerateExample`s, shown in a section of their own); `stages` maps each stage to
    its record (`seconds`, `reused`, `partial`, `seconds_from`).
    """
    def fig(key: str, alt: str) -> list[str]:
        return [f"![{alt}]({figures_dir}/{figures[key]})", ""] if key in figures else [f"({alt}: no data.)", ""]

    n = facts.get("n_test_samples")
    rerank = ("Re-ranking (IFairLRS, popularity groups, alpha chosen on valid) reorders the S-DPO model's scores, "
              "so it has no generated answers.")
    lines = [f"# {facts.get('title', 'llmrec demo: results')}", "",
             (f"Dataset `{facts.get('dataset')}` (`{facts.get('data')}`), seed {facts.get('seed')}, outputs in "
              f"`{facts.get('out')}`. {facts.get('scale', '')}"), "",
             f"## Results on the same {n} test samples", "",
             results_markdown(rows), "",
             *[f"- {r.label}: {r.note}." for r in rows if r.note], *([""] if any(r.note for r in rows) else []),
             (f"Every row ranks the 20 stored candidates of the same seeded subset of {n} test samples (the subset "
              f"the LLM stages rank): `hr@1`, `candidates/ndcg@5` and `mgu@1` come from each model's score-mode "
              f"ranking of exactly those samples (MostPop and {facts.get('encoder_label')} scored on them with the "
              f"saved encoders). `valid_ratio` is the share of generated answers that name exactly one candidate "
              f"(`generate` mode, greedy decoding) on a smaller seeded subset of "
              f"{facts.get('n_generate_samples')} test samples; it is defined for the LLMs only. "
              f"{facts.get('skipped', rerank)} `mgu@1` = mean over 5 popularity groups of |GP@1 - GH| (lower is "
              f"fairer)."), ""]
    examples = facts.get("examples")
    if examples:
        lines += ["## Generate mode with real titles", "",
                  (f"{len(examples)} of the test samples ranked in `generate` mode (the first of the seeded subset, "
                   f"one per user): the titles of the history the prompt lists, the first line the SFT LLM "
                   f"generated (greedy decoding), the candidate it names (valid when exactly one) and the true "
                   f"next item."), "", *examples_markdown(examples), ""]
    lines += ["## Training curves", "",
             ("Train loss (top) and the validation metric that chooses the kept weights (bottom) of every trained "
              "stage against the optimiser step, from each stage's `logs/csv/metrics.csv`. The encoder's loss is "
              "its epoch mean; a loss logged many times is drawn faint with its running mean on top. `kept` marks "
              "the validation round whose weights the stage kept (a stage validated once has one point). MostPop "
              "only counts items: it has no curve."), ""]
    lines += fig("curves", "training curves")
    lines += ["## hr@1 per stage", ""] + fig("hr", "hr@1 per stage")
    lines += ["## GP@1 vs GH per popularity group", "",
              "GH = share of each popularity group among the test samples' history items; GP@1 = its share among "
              "the models' top choices (least popular group first)."
              + (f" Fairness tables and MGU@K: [{figures_dir}/{figures['fairness']}]"
                 f"({figures_dir}/{figures['fairness']})." if "fairness" in figures else ""), ""]
    lines += fig("gp_gh", "GP@1 vs GH per popularity group")
    lines += ["## Stages", ""] + stage_lines(stages) + [""]
    sources = [r for r in rows if r.source]
    if sources:
        lines += ["## Sources", ""] + [f"- {r.label}: `{r.source}`" for r in sources] + [""]
    return "\n".join(lines)
