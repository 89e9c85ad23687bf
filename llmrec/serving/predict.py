"""`llmrec predict`: the next items for one history, from the shell (docs/design.md §9).

    llmrec predict --ckpt DIR --history 50,172,133 [--candidates 7,12 'Heat (1995)'] [--k 10] [--json]

Items are item ids (a comma-separated list of numbers is a list of ids) or exact catalog titles, one title per
argument (titles often hold commas: 'Usual Suspects, The (1995)'). Without `--candidates` the whole catalog is
searched: the encoder retrieves as many items as the model was trained to rank, the LLM re-ranks them
(`llmrec.serving.recommender`). Prints a table (rank, id, title, score) or, with `--json`, the same JSON as
`POST /recommend` of `llmrec serve`. The flag is `--k` (the config layer makes one `--flag` per option).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmrec.base.config import check_config, option
from llmrec.base.device import torch_device
from llmrec.base.errors import ConfigError

ID_LIST = re.compile(r"^\s*\d+(\s*,\s*\d+)*\s*,?\s*$")


@dataclass
class PredictConfig:
    ckpt: Path | None = option(None, "checkpoint folder (a `llmrec train-llm` or `llmrec train-sdpo` output)")
    history: list[str] = option(help="the user's items, oldest first: ids separated by commas (50,172,133) and/or "
                                     "exact titles, one per argument", factory=list)
    candidates: list[str] | None = option(None, "items to rank, written like --history (default: the whole "
                                                "catalog: retrieve with the encoder, re-rank with the LLM)")
    k: int = option(10, "how many items to print (at most the catalog size)", min=1)
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


def parse_items(values: list[str]) -> list[int | str]:
    """Command-line items: `"50,172"` -> [50, 172]; anything else is one exact title."""
    out: list[int | str] = []
    for value in values:
        if ID_LIST.match(value):
            out += [int(x) for x in value.split(",") if x.strip()]
        else:
            out.append(value)
    return out


def format_table(items: list[dict[str, Any]]) -> str:
    """A fixed-width table: rank, id, title, score (titles cut at 60 characters)."""
    width = min(max([len("title")] + [len(i["title"]) for i in items]), 60)
    lines = [f"{'rank':>4}  {'id':>6}  {'title':<{width}}  {'score':>10}"]
    for i in items:
        title = i["title"] if len(i["title"]) <= width else i["title"][:width - 3] + "..."
        lines.append(f"{i['rank']:>4}  {i['id']:>6}  {title:<{width}}  {i['score']:>10.4f}")
    return "\n".join(lines)


def run_predict(config: PredictConfig) -> int:
    check_config(config)
    if config.ckpt is None or not config.history:
        raise ConfigError("predict needs --ckpt DIR and --history ITEMS (ids like 50,172,133 or exact titles)")
    from llmrec.llm.quantize import check_quantize, quantized
    from llmrec.serving.recommender import Recommender, RequestError

    history = parse_items(config.history)
    candidates = parse_items(config.candidates) if config.candidates is not None else None
    check_quantize(config.quantize, torch_device(config.device), config.dtype)  # before the slow load
    rec = Recommender.from_pretrained(config.ckpt, torch_device(config.device), dtype=config.dtype, llm=config.llm,
                                      verify=config.verify, retrieve_n=config.retrieve_n)
    rec.lm = quantized(rec.lm, config.quantize)  # the same builder, encoder and index: only the LM's linears change
    try:
        items = rec.recommend(history, candidates, config.k, config.exclude_history)
    except RequestError as e:
        flag = (e.field or "history").split("[")[0].replace("_", "-")
        raise ConfigError(f"option --{flag}: {e}") from None
    if config.json:
        print(json.dumps({"items": items, "retrieved": candidates is None}, indent=2))
        return 0
    where = (f"the whole catalog ({rec.n_items} items): {max(config.retrieve_n or rec.retrieve_n, config.k)} "
             f"retrieved by the encoder, re-ranked by the LLM" if candidates is None else
             f"{len(candidates)} given candidates")
    print(f"top {len(items)} next items after a history of {len(history)} ({where}):")
    print(format_table(items))
    return 0
