"""`llmrec serve`: answer next-item requests over HTTP (FastAPI + uvicorn, `pip install 'llmrec[serve]'`).

    llmrec serve --ckpt DIR [--host 127.0.0.1] [--port 8000] [--batch-size 16] [--batch-wait-ms 5] [--threads N]
    llmrec serve --config serve.yaml           # any option below as a YAML key (`threads` too); flags win

Loads the checkpoint once (verifying its manifest), binds `--host:--port` (loopback by default; `--port 0` picks
a free port), prints `llmrec serve: ... on http://HOST:PORT ...` and serves the API of
`llmrec.serving.server` until SIGINT/SIGTERM, which answers the requests in flight and then exits with status 0
(timeouts and shutdown: `llmrec.serving.lifecycle`). Set `$LLMREC_TOKEN` to require
`Authorization: Bearer <token>` on every endpoint but `/health` and the docs.

`threads` is an option of this command (a YAML key too), not only the flag every command shares: how many CPU
threads the model uses is part of how a server is deployed. One model pass runs at a time, in one worker thread
beside the event loop that parses HTTP; on a machine shared with the clients, fewer torch threads than cores can
serve more requests per second (`bench/serving.py batching` measures it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llmrec.base.config import check_config, option
from llmrec.base.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    ckpt: Path | None = option(None, "checkpoint folder (a `llmrec train-llm` or `llmrec train-sdpo` output)")
    host: str = option("127.0.0.1", "address to listen on; anything but loopback exposes the model to the network "
                                    "(then set $LLMREC_TOKEN)")
    port: int = option(8000, "TCP port (0: any free port, printed at start)", min=0, max=65535)
    batch_size: int = option(16, "micro-batching: most requests answered by one model pass (1: one at a time)",
                             min=1, max=4096)
    batch_wait_ms: float = option(5.0, "micro-batching: longest wait for more requests to join a batch, in ms",
                                  min=0, max=10000)
    max_body_bytes: int = option(1 << 20, "largest request body in bytes (larger: 413)", min=64, max=1 << 30)
    max_history: int = option(1000, "most history items per request (the model sees the most recent ones)",
                              min=1, max=1_000_000)
    max_candidates: int = option(200, "most candidates per request", min=1, max=1_000_000)
    max_batch_users: int = option(64, "most histories per POST /recommend/batch", min=1, max=1_000_000)
    max_k: int = option(100, "largest k of a request (also capped at the catalog size)", min=1, max=1_000_000)
    retrieve_n: int | None = option(None, "items retrieved from the whole catalog before re-ranking (default: as "
                                          "many candidates as the model was trained with)", min=1)
    graceful_timeout_s: float = option(30.0, "on SIGINT/SIGTERM, how long requests in flight may take to finish",
                                       min=0, max=86400)
    idle_timeout_s: float = option(5.0, "close a connection with no request under way (new, or kept alive after an "
                                        "answer) after this many seconds of silence", min=0, min_exclusive=True,
                                   max=86400)
    header_timeout_s: float = option(10.0, "close a connection whose request line and headers are not complete "
                                           "this many seconds after it opened (or after the previous answer)",
                                     min=0, min_exclusive=True, max=86400)
    body_timeout_s: float = option(30.0, "answer 408 and close when a request body has not fully arrived this "
                                         "many seconds after its headers", min=0, min_exclusive=True, max=86400)
    access_log: bool = option(False, "log every request (uvicorn's access log)")
    verify: bool = option(True, "check every file of the checkpoint against its manifest before loading")
    llm: str | None = option(None, "base model folder of a LoRA checkpoint whose base moved (default: the recorded "
                                   "one)")
    device: Literal["auto", "cpu", "gpu", "cuda"] = option("auto", "where to run (auto: a GPU if present)")
    dtype: Literal["float32", "bfloat16", "float16"] = option("float32", "weights dtype")
    quantize: Literal["none", "int8"] = option("none", "CPU only: rank with dynamic int8 linear layers (LoRA "
                                                       "adapters merged first)")
    threads: int | None = option(None, "CPU threads torch may use for the model (unset: torch's own choice, one "
                                       "per core; on a machine shared with the clients, fewer can serve more "
                                       "requests/s)", min=1, max=4096)


def run_serve(config: ServeConfig) -> int:
    check_config(config)
    if config.ckpt is None:
        raise ConfigError("serve needs --ckpt DIR (a `llmrec train-llm` or `llmrec train-sdpo` output)")
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError("llmrec serve needs FastAPI and uvicorn: pip install 'llmrec[serve]'") from None
    import torch

    from llmrec.base.device import set_threads, torch_device
    from llmrec.llm.quantize import check_quantize, quantized
    from llmrec.serving.lifecycle import Timeouts
    from llmrec.serving.recommender import Recommender
    from llmrec.serving.server import LOOPBACK, TOKEN_ENV, Limits, bind_socket, create_app, read_token, uvicorn_server

    set_threads(config.threads)  # (the `--threads` flag sets it too; from a YAML file only this does)
    started = time.perf_counter()
    token = read_token()
    if config.host not in LOOPBACK and token is None:
        log.warning("listening on %s without a token: anyone who can reach this machine can query the model "
                    "(set $%s)", config.host, TOKEN_ENV)
    sock = bind_socket(config.host, config.port)  # before the slow load: a taken port fails at once
    try:
        check_quantize(config.quantize, torch_device(config.device), config.dtype)  # before the slow load
        rec = Recommender.from_pretrained(config.ckpt, torch_device(config.device), dtype=config.dtype,
                                          llm=config.llm, verify=config.verify, retrieve_n=config.retrieve_n,
                                          batch_size=config.batch_size)
        rec.lm = quantized(rec.lm, config.quantize)  # the same builder, encoder and index: only the linears change
        limits = Limits(config.max_body_bytes, config.max_history, config.max_candidates, config.max_batch_users,
                        config.max_k)
        app = create_app(rec, limits, token, config.batch_size, config.batch_wait_ms)
        server = uvicorn_server(app, config.graceful_timeout_s, config.access_log,
                                timeouts=Timeouts(config.idle_timeout_s, config.header_timeout_s,
                                                  config.body_timeout_s))
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"llmrec serve: {config.ckpt} on http://{shown}:{port} (API docs /docs, health /health; loaded in "
          f"{time.perf_counter() - started:.1f} s; micro-batches of up to {config.batch_size}, "
          f"{config.batch_wait_ms:g} ms wait at most; {torch.get_num_threads()} torch threads"
          f"{'; bearer token required' if token else ''})", flush=True)
    server.run(sockets=[sock])  # returns after a graceful stop on SIGINT/SIGTERM
    return 0
