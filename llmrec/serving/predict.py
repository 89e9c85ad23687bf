"""`llmrec predict`: the next items for one history, from the shell (docs/design.md §9).

    llmrec predict --ckpt DIR --history 50,172,133 [--candidates 7,12 'Heat (1995)'] [--k 10] [--json]
    llmrec predict --ckpt DIR --all-users --split test|all --out recs.parquet [--k 10] [--devices N]

Items are the dataset's own item ids (`raw_id` of the prepared items.parquet: 50 in MovieLens, B00001 in a custom
log) or exact catalog titles, one title per argument (titles often hold commas: 'Usual Suspects, The (1995)').
A comma-separated list of numbers is a list of ids (so is `-5`: an id, never a title); other text is an id when
the catalog has it, else a title, else a comma-separated list of ids (B00001,B00002). Without `--candidates` the
whole catalog is searched: the encoder retrieves as many items as the model was trained to rank, the LLM re-ranks
them, and ranks beyond them (a `--k` larger than that) follow the encoder's order (`llmrec.serving.recommender`
has the rules). Prints a table (rank, id, title, score; `-` for an item the LLM did not score) or, with `--json`,
the same JSON as `POST /recommend` of `llmrec serve`. The flag is `--k` (the config layer makes one `--flag` per
option).

`--all-users` answers every user of a prepared dataset (`--data`, default: the one the checkpoint's config.yaml
records) instead of one history: `--split test` (each user with a test sample, their history before their last
one) or `--split all` (every user, their whole history); one row per user and rank in `--out` (a .parquet
file), written in parts of `--part-size` users that a rerun after a kill keeps, optionally over `--devices N`
processes: `llmrec.serving.all_users` has the rules and the columns. `--history`, `--candidates` and `--json`
belong to one history; `--data`, `--split`, `--out`, `--part-size`, `--batch-size`, `--devices`, `--num-nodes`
and `--strategy` to `--all-users`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llmrec.base.config import check_config, option
from llmrec.base.device import torch_device
from llmrec.base.errors import ConfigError
from llmrec.training.options import Strategy, trainer_option

if TYPE_CHECKING:  # imported when a command runs: `llmrec predict --help` does not pay for torch
    from llmrec.serving.recommender import Recommender, RequestError

ID_LIST = re.compile(r"^\s*[+-]?\d+(\s*,\s*[+-]?\d+)*\s*,?\s*$")


@dataclass
class PredictConfig:
    ckpt: Path | None = option(None, "checkpoint folder (a `llmrec train-llm` or `llmrec train-sdpo` output)")
    history: list[str] = option(help="the user's items, oldest first: the dataset's item ids separated by commas "
                                     "(50,172,133 or B001,B002) and/or exact titles, one per argument",
                                factory=list)
    candidates: list[str] | None = option(None, "items to rank, written like --history (default: the whole "
                                                "catalog: retrieve with the encoder, re-rank with the LLM)")
    k: int = option(10, "how many items to print (at most the catalog size); the top items do not depend on it",
                    min=1)
    json: bool = option(False, "print JSON (as `POST /recommend` answers) instead of a table")
    exclude_history: bool = option(True, "never recommend an item of the history")
    retrieve_n: int | None = option(None, "items retrieved from the whole catalog before re-ranking (default: as "
                                          "many candidates as the model was trained with)", min=1)
    verify: bool = option(True, "check every file of the checkpoint against its manifest before loading")
    llm: str | None = option(None, "base model folder of a LoRA checkpoint whose base moved (default: the recorded "
                                   "one)")
    device: Literal["auto", "cpu", "gpu", "cuda"] = option("auto", "where to run (auto: a GPU if present)")
    dtype: Literal["float32", "bfloat16", "float16"] = option("float32", "weights dtype")
    quantize: Literal["none", "int8"] = option("none", "CPU only: rank with dynamic int8 linear layers (LoRA "
                                                       "adapters merged first)")
    all_users: bool = option(False, "predict for every user of a prepared dataset (--data, --split) into --out "
                                    "instead of one --history")
    data: Path | None = option(None, "--all-users: the prepared dataset folder (default: the one the checkpoint "
                                     "was trained on, from its config.yaml)")
    split: Literal["test", "all"] | None = option(None, "--all-users: `test` (users with a test sample, their "
                                                        "history before their last one) or `all` (every user, "
                                                        "their whole history); default test")
    out: Path | None = option(None, "--all-users: the .parquet file to write (one row per user and rank)")
    part_size: int = option(256, "--all-users: users per part file (a rerun after a kill keeps finished parts)",
                            min=1)
    batch_size: int = option(16, "--all-users: prompts per model pass", min=1)
    devices: int = trainer_option("devices", help="--all-users: processes per machine the parts are split over "
                                                  "(CPU: gloo processes, GPU: one per GPU); the output equals a "
                                                  "one-process run's")
    num_nodes: int = trainer_option("num_nodes", help="--all-users: machines taking part (torchrun, SLURM)")
    strategy: Strategy = trainer_option("strategy", help="--all-users: Lightning's distribution strategy (auto: "
                                                         "ddp when more than one process; fsdp/deepspeed are "
                                                         "refused: every process holds the whole model)")


def parse_items(values: list[str]) -> list[int | str]:
    """Command-line items: `"50,172"` -> [50, 172] (ids; `"-5"` too); anything else stays text, an id or a title
    (`expand_id_lists` splits `"B001,B002"` once the catalog is known)."""
    out: list[int | str] = []
    for value in values:
        if ID_LIST.match(value):
            out += [int(x) for x in value.split(",") if x.strip()]
        else:
            out.append(value)
    return out


def expand_id_lists(rec: Recommender, items: list[int | str]) -> list[int | str]:
    """Text that is no item's id or title but a comma-separated list of ids (`"B001,B002"`) -> those ids."""
    from llmrec.serving.recommender import RequestError

    out: list[int | str] = []
    for item in items:
        if isinstance(item, str) and "," in item:
            try:
                rec.item_id(item)
            except RequestError:
                parts = [p.strip() for p in item.split(",") if p.strip()]
                if parts and all(rec.ids.find(p) is not None for p in parts):
                    out += parts
                    continue
        out.append(item)
    return out


def format_table(items: list[dict[str, Any]]) -> str:
    """A fixed-width table: rank, id, title, score (titles cut at 60 characters; `-`: not scored by the LLM)."""
    width = min(max([len("title")] + [len(i["title"]) for i in items]), 60)
    id_width = max([6] + [len(str(i["id"])) for i in items])
    lines = [f"{'rank':>4}  {'id':>{id_width}}  {'title':<{width}}  {'score':>10}"]
    for i in items:
        title = i["title"] if len(i["title"]) <= width else i["title"][:width - 3] + "..."
        score = f"{i['score']:>10.4f}" if i["score"] is not None else f"{'-':>10}"
        lines.append(f"{i['rank']:>4}  {i['id']!s:>{id_width}}  {title:<{width}}  {score}")
    return "\n".join(lines)


def option_error(e: RequestError) -> ConfigError:
    """A request error as the command line says it: the flag at fault, the message in its words (`--no-...`)."""
    field = e.field or "history"
    name = field.split("[")[0].split(".")[0]
    message = e.text("cli")
    if field == name and message.startswith(f"{name}: "):  # `option --k: got 0, ...`, not `option --k: k: ...`
        message = message[len(name) + 2:]
    return ConfigError(f"option --{name.replace('_', '-')}: {message}")


def check_all_users(config: PredictConfig) -> None:
    """One line for an option that does not go with `--all-users` (or that needs it), before any loading."""
    defaults = PredictConfig()
    if config.all_users:
        for name in ("history", "candidates", "json"):
            if getattr(config, name) != getattr(defaults, name):
                raise ConfigError(f"option --{name}: applies to one history, not to --all-users (which answers "
                                  f"every user of --data)")
        if config.ckpt is None or config.out is None:
            raise ConfigError("predict --all-users needs --ckpt DIR and --out FILE.parquet")
        return
    for name in ("data", "split", "out", "part_size", "batch_size", "devices", "num_nodes", "strategy"):
        if getattr(config, name) != getattr(defaults, name):
            raise ConfigError(f"option --{name.replace('_', '-')}: applies to --all-users only")


def recorded_data(ckpt: Path) -> Path:
    """The prepared dataset a checkpoint was trained on, as its config.yaml records it."""
    from llmrec.base.config import load_yaml_mapping

    recorded = load_yaml_mapping(Path(ckpt) / "config.yaml").get("data") if (Path(ckpt) / "config.yaml").is_file() \
        else None
    if not recorded:
        raise ConfigError(f"predict --all-users: {ckpt}/config.yaml records no dataset; pass --data DIR")
    return Path(str(recorded))


def run_all_users(config: PredictConfig) -> int:
    """`--all-users`: every user of the dataset to `--out` (`llmrec.serving.all_users`)."""
    assert config.ckpt is not None and config.out is not None
    from llmrec.data.dataset import ProcessedDataset
    from llmrec.llm.quantize import check_quantize, quantized
    from llmrec.serving.all_users import predict_all_users
    from llmrec.serving.recommender import Recommender
    from llmrec.training.distributed import set_process_threads
    from llmrec.training.sharding import Launch, check_launch

    launch = Launch(config.device, config.devices, config.num_nodes, config.strategy)
    if launch.sharded:
        check_launch(launch, "predict")  # one line before the slow load (FSDP on CPU, ...)
        set_process_threads(launch.local_processes)
    check_quantize(config.quantize, torch_device(config.device), config.dtype)
    data = ProcessedDataset.load(config.data if config.data is not None else recorded_data(config.ckpt))
    rec = Recommender.from_pretrained(config.ckpt, launch.torch_device(), dtype=config.dtype, llm=config.llm,
                                      verify=config.verify, retrieve_n=config.retrieve_n,
                                      batch_size=config.batch_size)
    rec.lm = quantized(rec.lm, config.quantize)
    options = {"dtype": config.dtype, "quantize": config.quantize, "llm": config.llm}
    written = predict_all_users(rec, data, config.split or "test", config.out, config.k, config.exclude_history,
                                config.part_size, launch, options)
    if written is not None:
        print(f"wrote {written}")
    return 0


def run_predict(config: PredictConfig) -> int:
    check_config(config)
    check_all_users(config)
    if config.all_users:
        return run_all_users(config)
    if config.ckpt is None or not config.history:
        raise ConfigError("predict needs --ckpt DIR and --history ITEMS (ids like 50,172,133 or exact titles)")
    from llmrec.llm.quantize import check_quantize, quantized
    from llmrec.serving.recommender import Recommender, RequestError

    check_quantize(config.quantize, torch_device(config.device), config.dtype)  # before the slow load
    rec = Recommender.from_pretrained(config.ckpt, torch_device(config.device), dtype=config.dtype, llm=config.llm,
                                      verify=config.verify, retrieve_n=config.retrieve_n)
    rec.lm = quantized(rec.lm, config.quantize)  # the same builder, encoder and index: only the LM's linears change
    history = expand_id_lists(rec, parse_items(config.history))
    candidates = expand_id_lists(rec, parse_items(config.candidates)) if config.candidates is not None else None
    try:
        answer = rec.answer_many([history], [candidates], config.k, config.exclude_history)[0]
    except RequestError as e:
        raise option_error(e) from None
    items = answer.items
    if config.json:
        print(json.dumps({"items": items, "retrieved": candidates is None}, indent=2))
        return 0
    where = (f"the whole catalog ({rec.n_items} items): {answer.llm_ranked} retrieved by the encoder, re-ranked by "
             f"the LLM" if candidates is None else f"{len(candidates)} given candidates")
    if candidates is not None and answer.tail_by is not None:
        where += f", {answer.llm_ranked} of them ranked by the LLM (as many as its prompt holds)"
    rest = [i["rank"] for i in items if i["ranked_by"] != "llm"]
    if rest:
        order = "the encoder's order" if answer.tail_by == "encoder" else "the given order"
        where += f"; ranks {rest[0]}-{rest[-1]} follow {order}"
    print(f"top {len(items)} next items after a history of {len(history)} ({where}):")
    print(format_table(items))
    return 0
