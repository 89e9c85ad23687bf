"""`llmrec report`: accuracy and item-side fairness (IFairLRS, docs/design.md §7-§8) of several models, as a
Markdown page with PNG figures.

    llmrec report DIR [DIR ...] [--out DIR] [--data DIR] [--grouping popularity|genre] [--bars-k K]

Each DIR is one of
- an `llmrec evaluate` folder (metrics.json + scores.parquet; the fairness metrics are computed from the saved
  ranking with `--grouping`, so every model is grouped alike: no model runs);
- an LLM checkpoint folder (its `eval-test-*/` and `rerank-*/` folders; valid folders only when named directly);
- an `llmrec train-encoder` folder (the candidate-ranking test metrics of its metrics.json, popularity groups);
- an `llmrec rerank` folder (the model before and after re-ranking).
The same ranking is shown once even when it is reached twice (a checkpoint and its rerank folder).

`report.md` holds a table of accuracy (hr@1, valid_ratio, candidates/ndcg@5) and fairness (mgu@1, mgu@5, mgu@10,
dgu@1) side by side, the GP/GH numbers per group, and two figures: `gp-gh*.png` (GP@K of each model beside GH,
per group, one figure per grouping) and `mgu-k.png` (MGU@K against K for each model). `write_report` is the
piece `llmrec evaluate` calls for its own folder. Figures are drawn with matplotlib's Agg canvas through
`matplotlib.figure.Figure` (no pyplot, no display, no global state).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmrec.base.atomic import atomic_write, atomic_write_text, check_output, output_directory
from llmrec.base.config import check_config, load_yaml_mapping, option, save_config
from llmrec.data.dataset import ProcessedDataset
from llmrec.base.errors import ConfigError
from llmrec.base.markers import MarkerSpec, read_marker
from llmrec.evaluation.ranked_metrics import ranked_fairness, split_metrics
from llmrec.evaluation.scores import SCORES_FILE, read_scores, table_mode, table_split
from llmrec.evaluation.groups import ItemGroups, item_groups

log = logging.getLogger(__name__)

REPORT_FILE = "report.md"
MARKER = "<!-- written by `llmrec report` -->"
ACCURACY_KEYS: tuple[str, ...] = ("hr@1", "valid_ratio", "candidates/ndcg@5")
FAIRNESS_KEYS: tuple[str, ...] = ("mgu@1", "mgu@5", "mgu@10", "dgu@1")
GH_COLOR = "#9e9e9e"

K20_NOTE = ("With 20 candidates per sample, K = 20 recommends every candidate: GP@20 is then the candidate "
            "distribution whatever the model does, so candidate ranking is measured at K in {1, 5, 10}. Full-catalog "
            "ranking (the encoders' `full/...` metrics) uses K in {1, 5, 10, 20}.")
RERANK_NOTE = ("Re-ranking (`llmrec rerank`) works on the saved score-mode scores, which are summed "
               "log-probabilities of each candidate's title: their scale differs with title length, model and "
               "sample, so a fixed alpha would mean a different strength on every row. Each sample's scores are "
               "therefore standardised over its candidates first (z-scores: mean 0, standard deviation 1; a "
               "strictly increasing map that alone changes no ranking), then final = z - alpha * adjustment, where "
               "an item's adjustment is the mean over its groups of U_G = sum_K (K / sum K') GU(G)@K measured on "
               "VALID and divided by max_G |U_G|, so it lies in [-1, 1]. alpha = 1 thus moves an item by at most "
               "one standard deviation of its own sample's scores; alpha = 0 leaves every ranking unchanged. "
               "`--alpha auto` keeps the alpha of a grid that lowers valid MGU most while valid hr@1 stays within "
               "5% (relative) of alpha = 0.")


@dataclass
class ReportEntry:
    """One model (one ranking) in a report.

    `metrics` is flat, with the keys of an LLM evaluation: `hr@1`, `valid_ratio`, `candidates/ndcg@5`,
    `mgu@k`, `dgu@k`, `gu@k/<group>`, `gh/<group>` (an encoder's `candidates/...` keys renamed so).
    """

    label: str
    metrics: dict[str, Any]
    source: str = ""
    note: str = ""
    groups: dict[str, Any] | None = None  # `ItemGroups.to_dict()` when known (names, sizes, popularity edges)
    n_samples: int | None = None  # samples ranked; None: `metrics["n_samples"]` when recorded

    @property
    def samples(self) -> int | None:
        """How many samples this row was ranked on (rows over different counts are not directly comparable)."""
        n = self.n_samples if self.n_samples is not None else self.metrics.get("n_samples")
        return int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) and n == n else None


# ------------------------------------------------------------------------------------------------ reading
def group_names(metrics: dict[str, Any]) -> list[str]:
    """Group names, in the order of the `gh/<group>` keys."""
    return [k[3:] for k in metrics if k.startswith("gh/")]


def fairness_ks(metrics: dict[str, Any]) -> list[int]:
    """The K with an `mgu@k` value, ascending."""
    return sorted(int(m.group(1)) for k in metrics if (m := re.fullmatch(r"mgu@(\d+)", k)))


def group_shares(metrics: dict[str, Any], k: int) -> tuple[list[float], list[float]] | None:
    """(GH, GP@K) per group, GP = GU + GH; None when the metrics lack them."""
    names = group_names(metrics)
    if not names or any(f"gu@{k}/{g}" not in metrics for g in names):
        return None
    gh = [float(metrics[f"gh/{g}"]) for g in names]
    return gh, [float(metrics[f"gu@{k}/{g}"]) + h for g, h in zip(names, gh)]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(float(value)) else float(value)


def _cell(value: Any) -> str:
    v = _number(value)
    return "–" if v is None else f"{v:.4f}"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# ------------------------------------------------------------------------------------------------ figures
def _save(fig: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def _gp_gh_figure(entries: list[ReportEntry], names: list[str], k: int, path: Path) -> None:
    """Grouped bars: per group, GH (grey) and each model's GP@K; GH as a black tick per model if it differs."""
    import numpy as np
    from matplotlib.figure import Figure

    shares = [group_shares(e.metrics, k) for e in entries]
    ghs = [s[0] for s in shares if s is not None]
    common = all(np.allclose(g, ghs[0], atol=1e-12) for g in ghs)
    n_bars = len(entries) + (1 if common else 0)
    width = 0.8 / n_bars
    x = np.arange(len(names))
    fig = Figure(figsize=(min(16.0, max(6.0, 0.45 * len(names) * n_bars + 2)), 4.2), layout="constrained")
    ax = fig.add_subplot()
    slot = 0
    if common:
        ax.bar(x - 0.4 + width / 2, ghs[0], width, color=GH_COLOR, label="GH (share of history items)")
        slot = 1
    for entry, share in zip(entries, shares):
        assert share is not None
        offset = x - 0.4 + width * (slot + 0.5)
        ax.bar(offset, share[1], width, label=f"{entry.label}: GP@{k}")
        if not common:
            ax.hlines(share[0], offset - width / 2, offset + width / 2, colors="black", linewidth=2)
        slot += 1
    if not common:
        ax.plot([], [], color="black", linewidth=2, label="GH of each model's samples")
    ax.set_xticks(x, names, rotation=45 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
    ax.set_ylabel("share")
    ax.set_title(f"Recommended (GP@{k}) vs consumed (GH) share per item group")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def _mgu_figure(entries: list[ReportEntry], path: Path) -> None:
    """MGU@K against K, one line (or one marker, for one-choice modes) per model."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    all_ks: set[int] = set()
    for e in entries:
        ks = fairness_ks(e.metrics)
        all_ks.update(ks)
        ax.plot(ks, [float(e.metrics[f"mgu@{k}"]) for k in ks], marker="o", label=e.label)
    ax.set_xticks(sorted(all_ks))
    ax.set_xlabel("K (top-K recommended candidates)")
    ax.set_ylabel("MGU@K = mean over groups of |GP@K - GH|")
    ax.set_title("Group unfairness against K (lower is fairer)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


# ------------------------------------------------------------------------------------------------ report.md
def _groupings(entries: list[ReportEntry]) -> list[tuple[list[str], list[ReportEntry]]]:
    """Entries with fairness metrics, grouped by their group names (first-seen order)."""
    out: dict[tuple[str, ...], list[ReportEntry]] = {}
    for e in entries:
        names = tuple(group_names(e.metrics))
        if names:
            out.setdefault(names, []).append(e)
    return [(list(k), v) for k, v in out.items()]


def _groups_text(entries: list[ReportEntry], names: list[str]) -> str:
    info = next((e.groups for e in entries if e.groups and list(e.groups.get("names", [])) == names), None)
    if not info:
        return ""
    if info.get("kind") == "popularity" and info.get("edges"):
        parts = [f"`{n}` {lo}-{hi} ({size} items)" for n, (lo, hi), size in
                 zip(names, info["edges"], info.get("sizes") or [""] * len(names))]
        return ("Popularity groups by TRAINING interactions per item, least popular first: " + "; ".join(parts)
                + ".")
    sizes = info.get("sizes") or []
    return (f"{info.get('kind', 'item').capitalize()} groups: "
            + "; ".join(f"`{n}` ({s} items)" for n, s in zip(names, sizes)) + ".")


def write_report(folder: str | Path, entries: Sequence[ReportEntry], bars_k: int = 1,
                 title: str = "Accuracy and item-side fairness") -> Path:
    """Write `report.md` and its PNG figures into `folder` (created if needed); returns the report's path.

    Args:
        folder: where to write (the caller makes it atomic: `llmrec report` and `llmrec evaluate` write into
            a temporary folder that replaces the output only when complete).
        entries: the models to show, in order.
        bars_k: the K of the GP vs GH figure (entries without GU at that K are left out of it).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = list(entries)
    lines = [MARKER, f"# {title}", ""]
    lines += [("Accuracy and item-side fairness (IFairLRS) side by side; every ranking is over each sample's "
               "stored candidates. GH(G) = share of group G among the evaluated samples' history items; GP(G)@K = "
               "share of G among the top-K recommended slots; GU = GP - GH (> 0: G is recommended more than these "
               "users consumed it); MGU@K = mean over groups of |GU|, DGU@K = max GU - min GU. Lower is fairer."),
              ""]
    lines += [("`n_samples` is how many samples each row was ranked on: rows ranked on different samples (a subset, "
               "another split) are not directly comparable, and a small count gives a noisy value."), ""]
    header = ["model", *ACCURACY_KEYS, *FAIRNESS_KEYS, "n_samples"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in entries:
        n = "–" if e.samples is None else str(e.samples)
        lines.append("| " + " | ".join([_md(e.label), *(_cell(e.metrics.get(k)) for k in header[1:-1]), n]) + " |")
    lines.append("")

    figures: list[str] = []
    groupings = _groupings(entries)
    for i, (names, members) in enumerate(groupings):
        shown = [e for e in members if group_shares(e.metrics, bars_k) is not None]
        lines += [f"## GP@{bars_k} vs GH per group" + (f" ({i + 1})" if len(groupings) > 1 else ""), ""]
        text = _groups_text(members, names)
        if text:
            lines += [text, ""]
        if shown:
            name = "gp-gh.png" if len(groupings) == 1 else f"gp-gh-{i + 1}.png"
            _gp_gh_figure(shown, names, bars_k, folder / name)
            figures.append(name)
            lines += [f"![GP@{bars_k} vs GH per group]({name})", ""]
            gh_rows = ([("GH", group_shares(shown[0].metrics, bars_k)[0])]  # type: ignore[index]
                       if len({tuple(group_shares(e.metrics, bars_k)[0]) for e in shown}) == 1  # type: ignore[index]
                       else [(f"GH ({e.label})", group_shares(e.metrics, bars_k)[0]) for e in shown])  # type: ignore[index]
            lines += ["| share | " + " | ".join(f"`{_md(n)}`" for n in names) + " |",
                      "|" + "---|" * (len(names) + 1)]
            for label, values in gh_rows:
                lines.append(f"| {_md(label)} | " + " | ".join(_cell(v) for v in values) + " |")
            for e in shown:
                gp = group_shares(e.metrics, bars_k)[1]  # type: ignore[index]
                lines.append(f"| {_md(e.label)}: GP@{bars_k} | " + " | ".join(_cell(v) for v in gp) + " |")
            lines.append("")
        left_out = [e.label for e in members if e not in shown]
        if left_out:
            lines += [f"Not in this figure (no GU at K = {bars_k}): {', '.join(left_out)}.", ""]

    with_mgu = [e for e in entries if fairness_ks(e.metrics)]
    if with_mgu:
        _mgu_figure(with_mgu, folder / "mgu-k.png")
        figures.append("mgu-k.png")
        lines += ["## MGU@K against K", "", "![MGU@K against K](mgu-k.png)", ""]
    missing = [e.label for e in entries if not fairness_ks(e.metrics)]
    if missing:
        lines += [f"No fairness metrics for: {', '.join(missing)}.", ""]

    lines += ["## How to read", "", f"- {K20_NOTE}",
              ("- `generate` and `constrained` modes make one choice per sample, so only K = 1 is defined for "
               "them; an invalid output (no candidate named) recommends nothing and takes no slot: GP@1 is the "
               "share among the valid choices (`valid_ratio` says how many there were)."),
              f"- {RERANK_NOTE}", ""]
    notes = [e for e in entries if e.note]
    if notes:
        lines += ["## Notes", ""] + [f"- {_md(e.label)}: {e.note}" for e in notes] + [""]
    lines += ["## Sources", ""] + [f"- {_md(e.label)}: `{e.source}`" for e in entries if e.source] + [""]
    return atomic_write_text(folder / REPORT_FILE, "\n".join(lines))


# ------------------------------------------------------------------------------------------------ collecting
METRICS_SPEC = MarkerSpec(kind=None, version=None, what="the metrics of an llmrec run",
                          writer="`llmrec evaluate`, `rerank`, `train-encoder` or `train-llm`")


def _read_json(path: Path) -> dict[str, Any]:
    return read_marker(path, METRICS_SPEC, error=ConfigError)


def _recorded(folder: Path, key: str) -> Path | None:
    f = folder / "config.yaml"
    value = load_yaml_mapping(f).get(key) if f.is_file() else None
    return Path(value) if value else None


class _Collector:
    """Turns folders into report entries; loads each data folder and grouping once."""

    def __init__(self, data: Path | None, grouping: str, n_groups: int, split_multi: bool):
        self.data_override, self.grouping, self.n_groups, self.split_multi = data, grouping, n_groups, split_multi
        self._data: dict[Path, tuple[ProcessedDataset, ItemGroups]] = {}
        self.entries: list[ReportEntry] = []
        self._sources: set[Path] = set()

    # -- data
    def _data_for(self, folder: Path) -> tuple[ProcessedDataset, ItemGroups] | None:
        path = self.data_override
        if path is None:
            ckpt = _recorded(folder, "ckpt") or folder.parent
            for d in (folder, ckpt):
                path = path or _recorded(d, "data")
            if path is None or not path.is_dir():
                return None
        key = Path(path).resolve()
        if key not in self._data:
            data = ProcessedDataset.load(path)
            self._data[key] = (data, item_groups(data, self.grouping, self.n_groups, self.split_multi))
        return self._data[key]

    def _add(self, entry: ReportEntry, source: Path) -> None:
        key = source.resolve()
        if key in self._sources:
            return
        self._sources.add(key)
        labels = {e.label for e in self.entries}
        base, n = entry.label, 2
        while entry.label in labels:
            entry.label, n = f"{base} #{n}", n + 1
        self.entries.append(entry)

    def _fairness(self, folder: Path, table: Any, stored: dict[str, Any], scores_column: str = "scores"
                  ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Fairness of a saved ranking with the report's grouping, or the stored keys when no data is found."""
        found = self._data_for(folder)
        if found is None:
            kept = {k: v for k, v in stored.items() if re.match(r"(mgu|dgu|gu)@\d+|gh/", k)}
            if not kept:
                raise ConfigError(f"{folder}: no fairness metrics stored and no data folder recorded (or it is "
                                  f"gone); pass --data DIR (the prepared dataset it was evaluated on)")
            return kept, stored.get("groups") if isinstance(stored.get("groups"), dict) else None
        data, groups = found
        ranked = table.assign(scores=table[scores_column]) if scores_column != "scores" else table
        ranked.attrs = dict(table.attrs)
        return ranked_fairness(ranked, data, groups), groups.to_dict()

    # -- folder kinds
    def add_evaluation(self, folder: Path) -> None:
        table = read_scores(folder)
        mode, split = table_mode(table), table_split(table)
        stored = _read_json(folder / "metrics.json") if (folder / "metrics.json").is_file() else {}
        accuracy = {k: stored[k] for k in ACCURACY_KEYS if k in stored} or split_metrics(table, mode)  # type: ignore[arg-type]
        fairness, groups = self._fairness(folder, table, stored)
        ckpt = _recorded(folder, "ckpt") or folder.parent
        label = f"{ckpt.name} {mode}" + ("" if split == "test" else f" ({split})")
        self._add(ReportEntry(label, {**accuracy, **fairness}, str(folder), groups=groups, n_samples=len(table)),
                  folder)

    def add_rerank(self, folder: Path) -> None:
        stored = _read_json(folder / "metrics.json")
        table = read_scores(folder)
        ckpt = Path(stored.get("ckpt") or folder.parent)
        kind = (stored.get("groups") or {}).get("kind", "")
        alpha = float(stored.get("alpha", float("nan")))
        how = "chosen on valid" if stored.get("alpha_choice") == "auto" else "given"
        before_src = Path(stored["test_scores"]) if stored.get("test_scores") else None
        if before_src is not None:
            before = stored.get("before") or {}
            fair, groups = self._fairness(folder, table, before, scores_column="model_scores") \
                if "model_scores" in table.columns else ({}, None)
            accuracy = {k: before[k] for k in ACCURACY_KEYS if k in before}
            self._add(ReportEntry(f"{ckpt.name} score", {**accuracy, **fair}, str(before_src), groups=groups,
                                  n_samples=len(table)), before_src)
        fair, groups = self._fairness(folder, table, stored)
        accuracy = {k: stored[k] for k in ACCURACY_KEYS if k in stored}
        note = (f"re-ranked with {kind} groups, alpha = {alpha:g} ({how}); valid hr@1 "
                f"{_cell((stored.get('valid') or {}).get('before', {}).get('hr@1'))} -> "
                f"{_cell((stored.get('valid') or {}).get('after', {}).get('hr@1'))}")
        self._add(ReportEntry(f"{ckpt.name} re-ranked ({kind}, alpha={alpha:g})", {**accuracy, **fair},
                              str(folder), note=note, groups=groups, n_samples=len(table)), folder)

    def add_encoder(self, folder: Path, metrics: dict[str, Any]) -> None:
        test = metrics["test"]
        flat: dict[str, Any] = {"valid_ratio": 1.0}
        for key, value in test.items():
            if key.startswith("candidates/") and re.match(r"candidates/((mgu|dgu|gu)@|hr@1$)", key):
                flat[key.removeprefix("candidates/")] = value
            elif key.startswith("gh/") or key in ACCURACY_KEYS:
                flat[key] = value
        note = ""
        if self.grouping != "popularity" and any(k.startswith("gh/") for k in flat):
            note = "the encoder's fairness metrics use popularity groups (as `train-encoder` computes them)"
        label = f"{folder.name} ({metrics.get('model', 'encoder')})"
        self._add(ReportEntry(label, flat, str(folder), note=note, n_samples=test.get("n_samples")), folder)

    def add(self, folder: Path) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise ConfigError(f"{folder} does not exist; expected an evaluation, checkpoint, encoder or rerank folder")
        metrics_file = folder / "metrics.json"
        if (folder / SCORES_FILE).is_file():
            if metrics_file.is_file() and "group_adjustment" in _read_json(metrics_file):
                return self.add_rerank(folder)
            return self.add_evaluation(folder)
        if (folder / "checkpoint.json").is_file():
            subs = sorted(p for p in folder.glob("eval-test-*") if (p / SCORES_FILE).is_file())
            subs += sorted(p for p in folder.glob("rerank-*") if (p / SCORES_FILE).is_file())
            if not subs:
                raise ConfigError(f"{folder} has no eval-test-*/ or rerank-*/ folder with {SCORES_FILE}; run "
                                  f"`llmrec evaluate --ckpt {folder} --data DATA --mode score` first")
            for sub in subs:
                self.add(sub)
            return None
        if metrics_file.is_file():
            metrics = _read_json(metrics_file)
            if isinstance(metrics.get("test"), dict) and "model" in metrics:
                return self.add_encoder(folder, metrics)
        raise ConfigError(f"{folder} is not an evaluation, LLM checkpoint, encoder or rerank folder (no "
                          f"{SCORES_FILE}, checkpoint.json, or encoder metrics.json)")


def collect_entries(dirs: Sequence[str | Path], data: Path | None = None, grouping: str = "popularity",
                    n_groups: int = 5, split_multi: bool = False) -> list[ReportEntry]:
    """Report entries of `dirs` (see the module docstring), in order, each ranking once."""
    collector = _Collector(data, grouping, n_groups, split_multi)
    for d in dirs:
        collector.add(Path(d))
    return collector.entries


# ------------------------------------------------------------------------------------------------ command
@dataclass
class ReportConfig:
    dirs: list[Path] = option(factory=list, help="evaluation, LLM checkpoint, encoder or rerank folders",
                              positional=True)
    out: Path | None = option(None, "output folder for report.md and its figures (default: ./report)")
    data: Path | None = option(None, "processed dataset folder (default: the one recorded in each folder's "
                                     "config.yaml)")
    grouping: Literal["popularity", "genre"] = option("popularity", "item groups of the computed fairness metrics")
    n_groups: int = option(5, "number of popularity groups", min=1)
    split_multi: bool = option(False, "genre grouping: a multi-genre item counts 1/|genres| in each genre")
    bars_k: int = option(1, "K of the GP vs GH figure", min=1)


def run_report(config: ReportConfig) -> int:
    check_config(config)
    if not config.dirs:
        raise ConfigError("report needs one folder at least: llmrec report DIR [DIR ...]")
    out = Path(config.out) if config.out is not None else Path("report")
    check_output(out, "report")
    entries = collect_entries(config.dirs, config.data, config.grouping, config.n_groups, config.split_multi)
    with output_directory(out, "report") as tmp:
        write_report(tmp, entries, bars_k=config.bars_k)
        save_config(config, tmp)
    print(f"wrote {out / REPORT_FILE} ({len(entries)} models)")
    return 0
