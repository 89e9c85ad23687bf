"""Batch prediction for every user of a prepared dataset: the top-k of the whole catalog for each, as one parquet
table (`llmrec predict --all-users`, `recommend_all_users` from Python).

    llmrec predict --ckpt DIR --all-users --split test --out recs.parquet [--k 10] [--devices 2]
    rec = Recommender.from_pretrained("checkpoints/demo/sdpo-hybrid-sasrec")
    recommend_all_users(rec, "data/processed/ml-100k-llara-all", split="all", k=10)   # a DataFrame
    recommend_all_users(rec, data, split="test", out="recs.parquet")   # also written in parts, resumable

Which users and which history (`user_histories`):
- `test`: every user with a sample in the test split; the history is the user's whole sequence before their
  final test sample (the sample `llmrec.data.sampling` marks `is_last`: its `position`), so what is predicted is
  the held-out item of their last test sample;
- `all`: every user with interactions, in `users.parquet`; the history is the user's whole sequence, so what
  is predicted is the item after everything they have seen.
Users come in the order of the prepared user ids. Each user is answered exactly as `Recommender.recommend(
history, k=k)` answers that history (same retrieval, re-ranking, window, template seed and exclusion rules,
`llmrec.serving.recommender`): the encoder's faiss index retrieves `retrieve_n` items of the whole catalog, the
LLM re-ranks them, items of the history are never recommended (unless `exclude_history=False`). A user the model
cannot answer (every item already seen, or no prompt fits) gets no rows; the count is logged.

The table (`COLUMNS`; one row per user and rank, best first; `rank` 1..k):
    user            the dataset's own user id (`raw_id` of users.parquet): an int when every user's raw id is an
                    integer written canonically, else its text
    user_index      the prepared user id (`user_id` of the prepared tables)
    history_length  how many items the user's history holds (the model sees its last `history_window`)
    rank, id, index, title, score, ranked_by
                    as `Recommender.recommend` answers (`id` the dataset's item id, `index` the model's, `score`
                    the LLM's log-probability, null for an item ranked by the encoder after the LLM's)
The file's parquet metadata (key `llmrec`) records the format, split, k and user count.

Parts, resuming, several processes: users are cut into parts of `part_size` (in user order); each finished part
is written atomically to `<out>.parts/part-NNNNN.parquet` beside `run.json` (the options that decide the
output). A run that finds `<out>.parts` keeps its finished parts and computes only the missing ones, provided
its options are the same (else one line says which differ); the final file is the parts concatenated, written
atomically, and the parts folder is removed. With `--devices N` the missing parts are the work items of
`llmrec.training.sharding.shard_map` (part p to rank p mod N, each part once); rank 0 merges after every rank is
done. Parts do not depend on the process count, so the output of N processes is that of one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from llmrec.base.atomic import atomic_write, atomic_write_text
from llmrec.base.errors import CheckpointError, ConfigError, DataError
from llmrec.base.files import file_sha256, read_parquet
from llmrec.data.dataset import ProcessedDataset
from llmrec.data.sampling import final_position_mask
from llmrec.serving.recommender import Recommender, RequestError
from llmrec.training.sharding import Launch, shard_map

log = logging.getLogger(__name__)

UserSplit = Literal["test", "all"]
USER_SPLITS: tuple[str, ...] = ("test", "all")
COLUMNS: tuple[str, ...] = ("user", "user_index", "history_length", "rank", "id", "index", "title", "score",
                            "ranked_by")
FORMAT = "llmrec-all-users"
FORMAT_VERSION = 1
RUN_FILE = "run.json"
PART = re.compile(r"^part-(\d{5})\.parquet$")
DEFAULT_PART_SIZE = 256


def parts_folder(out: Path) -> Path:
    """Where the finished parts of `out` wait: `<out>.parts` (`recs.parquet.parts`)."""
    return out.with_name(out.name + ".parts")


def part_path(folder: Path, part: int) -> Path:
    return folder / f"part-{part:05d}.parquet"


def public_user_ids(raw: pd.Series) -> list[int | str]:
    """Users' raw ids as an answer shows them: ints when every one is an integer written canonically (as item
    ids, `llmrec.data.catalog.ItemIds`), else text."""
    text = [str(r) for r in raw]
    if text and all(re.fullmatch(r"-?\d+", t) and str(int(t)) == t for t in text):
        return [int(t) for t in text]
    return text


def user_histories(data: ProcessedDataset, split: UserSplit) -> pd.DataFrame:
    """The users `split` predicts for and their histories (module docstring), in prepared user id order:
    columns `user` (the dataset's id), `user_index` and `history` (prepared item ids, oldest first)."""
    if split not in USER_SPLITS:
        raise ConfigError(f"option --split: got {split!r}, expected one of {', '.join(USER_SPLITS)}")
    sequences = data.user_sequences()
    if split == "test":
        samples = data.split("test")
        last = samples[final_position_mask(samples)]
        cut = dict(zip(last["user_id"].astype(int), last["position"].astype(int)))
    else:
        cut = {u: len(s) for u, s in sequences.items()}
    users = data.users[data.users["user_id"].astype(int).isin(list(cut))].sort_values("user_id")
    index = users["user_id"].astype(np.int64).to_list()
    histories = [[int(i) for i in sequences[u][:cut[u]]] for u in index]
    return pd.DataFrame({"user": public_user_ids(users["raw_id"]), "user_index": index, "history": histories})


def check_catalog(rec: Recommender, data: ProcessedDataset) -> None:
    """The dataset must be the catalog the checkpoint was trained on (its histories are in its item ids)."""
    if data.catalog_fingerprint() != rec.facts.catalog_fingerprint:
        where = data.root or "the dataset"
        raise DataError(f"{where}: its catalog is not the one the checkpoint was trained on (catalog fingerprint "
                        f"{data.catalog_fingerprint()[:12]}, the checkpoint records "
                        f"{rec.facts.catalog_fingerprint[:12]}); pass the prepared folder it was trained on")


def check_sizes(rec: Recommender, k: int, part_size: int) -> None:
    """One line for a `k` or `part_size` no user could be answered with, before any user is."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= rec.n_items:
        raise ConfigError(f"option --k: got {k!r}, expected an integer in 1..{rec.n_items} (the catalog size)")
    if isinstance(part_size, bool) or not isinstance(part_size, (int, np.integer)) or part_size < 1:
        raise ConfigError(f"option --part-size: got {part_size!r}, expected an integer >= 1")


def recommend_users(rec: Recommender, users: pd.DataFrame, k: int = 10, exclude_history: bool = True
                    ) -> pd.DataFrame:
    """The top-k rows (`COLUMNS`) of `users` (`user_histories` rows), each answered as `rec.recommend` answers its
    history: one `rec.rank` call (one encoder pass, LLM passes of `rec.batch_size` prompts)."""
    rec.device = next(rec.lm.parameters()).device  # a sharded run may have moved the model to its rank's GPU
    rows: list[dict[str, Any]] = []
    unanswered: list[str] = []
    asked: list[tuple[Any, int, list[int]]] = []
    queries = []
    for user, index, history in zip(users["user"], users["user_index"], users["history"]):
        try:  # (an empty history, say: that user gets no rows, the others still do)
            queries.append(rec.query([rec.ids.public(i) for i in history], None, k, exclude_history))
            asked.append((user, int(index), list(history)))
        except RequestError as e:
            unanswered.append(f"user {user}: {e}")
    for (user, index, history), answer in zip(asked, rec.rank(queries)):
        if isinstance(answer, RequestError):
            unanswered.append(f"user {user}: {answer}")
            continue
        for item in answer.items:
            rows.append({"user": user, "user_index": index, "history_length": len(history), **item})
    if unanswered:
        log.warning("%d users have no answer (no rows), e.g. %s", len(unanswered), unanswered[0])
    return rows_table(rows)


def rows_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as the typed table of `COLUMNS` (an empty table keeps the columns)."""
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    for column in ("user_index", "history_length", "rank", "index"):
        table[column] = table[column].astype(np.int64)
    table["score"] = table["score"].astype(np.float64)
    return table


def _fingerprint(values: Any) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class AllUsersRun:
    """What decides the output of a run (`run.json` of the parts folder); a resumed run must have the same."""

    checkpoint: str  # resolved checkpoint folder
    checkpoint_sha256: str  # of its checkpoint.json
    data: str
    users_sha256: str  # the users and histories predicted for
    split: str
    k: int
    exclude_history: bool
    part_size: int
    retrieve_n: int
    batch_size: int
    options: dict[str, Any]  # the loading options that change the model's numbers (dtype, quantize, llm)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **self.__dict__}


def describe_run(rec: Recommender, data: ProcessedDataset, users: pd.DataFrame, split: str, k: int,
                 exclude_history: bool, part_size: int, options: dict[str, Any] | None = None) -> AllUsersRun:
    folder = rec.folder.resolve() if rec.folder is not None else None
    sha = file_sha256(folder / "checkpoint.json") if folder is not None else _fingerprint(rec.describe())
    return AllUsersRun(str(folder), sha, str(data.root.resolve()) if data.root else "",
                       _fingerprint([users["user"].tolist(), users["user_index"].tolist(), users["history"].tolist()]),
                       split, int(k), bool(exclude_history), int(part_size), int(rec.retrieve_n), int(rec.batch_size),
                       dict(options or {}))


def _open_parts(folder: Path, run: AllUsersRun, n_parts: int) -> list[int]:
    """Create or adopt the parts folder for `run`; the numbers of the parts already finished. Refuses (one line)
    a folder of a run with other options, or a folder holding files that are not ours."""
    wanted = run.to_dict()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file; the parts of this run go to a folder of that name: move it away")
    folder.mkdir(parents=True, exist_ok=True)
    run_file = folder / RUN_FILE
    names = [p.name for p in folder.iterdir()]
    if run_file.is_file():
        try:
            found = json.loads(run_file.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{run_file} is unreadable ({e}); delete {folder} to start over") from None
        if found != wanted:
            differ = [key for key in wanted if found.get(key) != wanted[key]]
            raise ConfigError(f"{folder} holds the parts of a run with other options ({', '.join(differ)} differ); "
                              f"rerun with the same options to resume it, or delete {folder} to start over")
    else:
        foreign = [n for n in names if not (PART.match(n) or n.startswith(".part-"))]
        if foreign:
            raise ConfigError(f"{folder} exists and holds {foreign[0]}, which is not a part of `llmrec predict "
                              f"--all-users`; move it away or pass another --out")
        atomic_write_text(run_file, json.dumps(wanted, indent=2) + "\n")
    for name in names:  # temporaries of a part interrupted while it was written
        if name.startswith(".part-") and name.endswith(".tmp"):
            (folder / name).unlink(missing_ok=True)
    return sorted(int(m.group(1)) for n in names if (m := PART.match(n)) and int(m.group(1)) < n_parts)


def _check_out(out: Path) -> None:
    """`out` may be replaced only when it is missing or a table this command wrote (its parquet metadata)."""
    if out.is_symlink() or out.is_dir():
        raise ConfigError(f"option --out: {out} is a folder or a link; give the path of a .parquet file")
    if out.exists() and _metadata(out).get("format") != FORMAT:
        raise ConfigError(f"option --out: {out} exists and was not written by `llmrec predict --all-users`; "
                          f"move it away or pass another path")


def _metadata(path: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    try:
        raw = (pq.read_schema(path).metadata or {}).get(b"llmrec")
        return json.loads(raw) if raw else {}
    except (OSError, ValueError):
        return {}


def write_table(path: Path, table: pd.DataFrame, facts: dict[str, Any]) -> Path:
    """`table` as parquet (atomic), `facts` in the file's metadata under `llmrec`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), b"llmrec": json.dumps(facts).encode()})
    return atomic_write(path, lambda tmp: pq.write_table(arrow, tmp))


def read_all_users(path: str | Path) -> pd.DataFrame:
    """A table `predict_all_users` wrote (its metadata in `attrs["llmrec"]`)."""
    path = Path(path)
    table = read_parquet(path, "re-run `llmrec predict --all-users`", CheckpointError)
    table.attrs["llmrec"] = _metadata(path)
    return table


def all_users_table(rec: Recommender, data: ProcessedDataset, split: UserSplit = "test", k: int = 10,
                    exclude_history: bool = True, part_size: int = DEFAULT_PART_SIZE) -> pd.DataFrame:
    """The table `predict_all_users` writes, made in this process and returned (nothing written): the users of
    `split` in parts of `part_size`, with a progress line."""
    check_sizes(rec, k, part_size)
    check_catalog(rec, data)
    users = user_histories(data, split)
    starts = list(range(0, len(users), part_size))
    parts = shard_map(lambda j: recommend_users(rec, users.iloc[starts[j]:starts[j] + part_size], k, exclude_history),
                      len(starts), Launch(), f"predicting {split} users", "users",
                      sizes=[min(part_size, len(users) - s) for s in starts])
    return pd.concat(parts, ignore_index=True) if parts else rows_table([])


def predict_all_users(rec: Recommender, data: ProcessedDataset, split: UserSplit, out: str | Path, k: int = 10,
                      exclude_history: bool = True, part_size: int = DEFAULT_PART_SIZE, launch: Launch | None = None,
                      options: dict[str, Any] | None = None) -> Path | None:
    """Write the top-k of every user of `split` to `out` in parts (module docstring); returns `out`, or None in a
    process other than rank 0 of a sharded `launch` (which writes its parts, not `out`). `options` are the
    loading options recorded for resuming (dtype, quantize, base model)."""
    out, launch = Path(out), launch or Launch()
    check_sizes(rec, k, part_size)
    _check_out(out)
    check_catalog(rec, data)
    users = user_histories(data, split)
    run = describe_run(rec, data, users, split, k, exclude_history, part_size, options)
    starts = list(range(0, len(users), part_size))
    folder = parts_folder(out)
    kept = _open_parts(folder, run, len(starts))
    todo = [p for p in range(len(starts)) if p not in set(kept)]
    log.info("predicting for %d users of %s in %d parts of %d: %d parts kept from an earlier run, %d to compute",
             len(users), split, len(starts), part_size, len(kept), len(todo))

    def work(j: int) -> None:
        p = todo[j]
        table = recommend_users(rec, users.iloc[starts[p]:starts[p] + part_size], k, exclude_history)
        write_table(part_path(folder, p), table, {"format": f"{FORMAT}-part", "part": p})

    shard_map(work, len(todo), launch, f"predicting {split} users", "users",
              sizes=[min(part_size, len(users) - starts[p]) for p in todo], model=rec.lm, gather=False)
    if launch.rank != 0:
        return None
    parts = [read_parquet(part_path(folder, p), f"delete {folder} and re-run", CheckpointError)
             for p in range(len(starts))]
    table = rows_table([]) if not parts else pd.concat(parts, ignore_index=True)
    facts = {"format": FORMAT, "format_version": FORMAT_VERSION, "split": split, "k": int(k),
             "users": len(users), "users_answered": int(table["user_index"].nunique()),
             "exclude_history": bool(exclude_history), "retrieve_n": int(rec.retrieve_n)}
    write_table(out, table, facts)
    for p in range(len(starts)):  # every file of the folder is ours (`_open_parts` refused any other)
        part_path(folder, p).unlink(missing_ok=True)
    (folder / RUN_FILE).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # something appeared in it meanwhile: leave it
        log.warning("kept %s: it holds files this run did not write", folder)
    log.info("wrote %s: %d rows, top %d of %d users", out, len(table), k, facts["users_answered"])
    return out


def recommend_all_users(rec: Recommender, data: ProcessedDataset | str | Path, split: UserSplit = "test",
                        k: int = 10, exclude_history: bool = True, out: str | Path | None = None,
                        part_size: int = DEFAULT_PART_SIZE) -> pd.DataFrame:
    """The Python API: the top `k` of every user of a prepared dataset (`data`: its folder or the loaded dataset,
    with the checkpoint's catalog), one row per user and rank (`COLUMNS`; which users and histories: module
    docstring); each user's rows are `rec.recommend(history, k=k)`. With `out` (a .parquet path) the table is
    also written there in parts, atomically and resumably, as `llmrec predict --all-users` does. One process
    (several: the command's `--devices`)."""
    if not isinstance(data, ProcessedDataset):
        data = ProcessedDataset.load(data)
    if out is None:
        return all_users_table(rec, data, split, k, exclude_history, part_size)
    written = predict_all_users(rec, data, split, out, k, exclude_history, part_size)
    assert written is not None  # one process: rank 0
    return read_all_users(written)
