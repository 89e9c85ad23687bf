"""The `llmrec` command line: one entry point, one subcommand per pipeline stage (docs/design.md §2).

Each subcommand is a config dataclass plus a run function in the module that owns the stage; `COMMANDS` reaches
them through one small loader per command (a plain `from ... import`), so the module is imported only when its
subcommand runs and `llmrec --help` and `llmrec prepare` stay fast. Errors the user
can fix (`LlmrecError`) are printed as one clear message with exit status 2, never as a traceback; so are
the parser's own errors (an unknown flag, a value of the wrong type). Flags must be spelled in full: argparse's
prefix matching (`--candidate 5` for `--candidates 5`) is switched off, so a mistyped flag is refused instead
of silently meaning another option. Every command also takes `--threads N` (declared once, in `CommonOptions`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn

from llmrec.base.config import add_options, option, resolve_config
from llmrec.base.device import check_device, set_threads
from llmrec.base.errors import LlmrecError


class Stage(NamedTuple):
    """What a subcommand runs: its config dataclass and `run(config)` (an int is the exit status)."""

    config: type
    run: Callable[[Any], int | None]


@dataclass(frozen=True)
class Command:
    """A subcommand: `load()` imports the module that owns the stage and returns its `Stage`; `help` is the
    one-line summary `llmrec --help` shows without importing anything."""

    load: Callable[[], Stage]
    help: str


# One loader per command: a plain import of the config class and the run function, so that readers and tools
# (go to definition, the import-layer test, grep) follow each command to its code, while the import itself waits
# until the command runs (most stage modules import torch, which costs seconds; `llmrec --help` needs none).
def _prepare() -> Stage:
    from llmrec.data.prepare import PrepareConfig, run_prepare

    return Stage(PrepareConfig, run_prepare)


def _train_encoder() -> Stage:
    from llmrec.encoders.train import TrainEncoderConfig, run_train_encoder

    return Stage(TrainEncoderConfig, run_train_encoder)


def _train_llm() -> Stage:
    from llmrec.llm.train import TrainLLMConfig, run_train_llm

    return Stage(TrainLLMConfig, run_train_llm)


def _evaluate() -> Stage:
    from llmrec.commands.evaluate import EvaluateConfig, run_evaluate

    return Stage(EvaluateConfig, run_evaluate)


def _train_sdpo() -> Stage:
    from llmrec.preference.train import TrainSDPOConfig, run_train_sdpo

    return Stage(TrainSDPOConfig, run_train_sdpo)


def _rerank() -> Stage:
    from llmrec.fairness.rerank_command import RerankConfig, run_rerank

    return Stage(RerankConfig, run_rerank)


def _report() -> Stage:
    from llmrec.fairness.report import ReportConfig, run_report

    return Stage(ReportConfig, run_report)


def _predict() -> Stage:
    from llmrec.serving.predict import PredictConfig, run_predict

    return Stage(PredictConfig, run_predict)


def _serve() -> Stage:
    from llmrec.serving.serve import ServeConfig, run_serve

    return Stage(ServeConfig, run_serve)


def _demo() -> Stage:
    from llmrec.commands.demo import DemoConfig, run_demo

    return Stage(DemoConfig, run_demo)


COMMANDS: dict[str, Command] = {
    "prepare": Command(_prepare, "turn raw interaction logs into canonical tables, splits and candidate sets"),
    "train-encoder": Command(_train_encoder,
                             "train an ID-based sequential encoder (SASRec, GRU4Rec, Caser) or MostPop"),
    "train-llm": Command(_train_llm, "fine-tune an LLM recommender with hybrid prompts, curriculum and LoRA"),
    "evaluate": Command(_evaluate,
                        "rank candidates with a trained LLM recommender (score, generate or constrained)"),
    "train-sdpo": Command(_train_sdpo,
                          "preference-train an SFT recommender with S-DPO (several negatives per prompt) or a "
                          "DPO-family variant"),
    "rerank": Command(_rerank,
                      "re-rank saved score-mode rankings for item-side fairness (IFairLRS), alpha chosen on valid"),
    "report": Command(_report, "accuracy and item-side fairness of several models as report.md with figures"),
    "predict": Command(_predict, "the next items for one history from a trained checkpoint, as a table or JSON"),
    "serve": Command(_serve,
                     "answer next-item requests over HTTP (FastAPI + uvicorn; binds 127.0.0.1 by default)"),
    "demo": Command(_demo, "run every stage on MovieLens-100K at a small, documented scale"),
}


@dataclass
class CommonOptions:
    """Options of every command. They change how fast a command runs, not what it computes, so they are
    flags only (not YAML keys) and are not written into an output's config.yaml."""

    threads: int | None = option(None, "CPU threads torch may use (torch.set_num_threads); default: torch's "
                                       "own choice, one per core. On a busy machine a small number (1-4) can be "
                                       "many times faster", min=1, max=4096)


def _declares_common_options(config: type) -> bool:
    """Whether a stage's config declares the common options itself, as YAML keys too (`serve` takes `threads`:
    a server's thread count is part of its deployment); its own fields then make the flags."""
    own = {f.name for f in dataclasses.fields(config)}
    return all(f.name in own for f in dataclasses.fields(CommonOptions))


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line with exit status 2, like every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _out_of_memory(e: BaseException) -> bool:
    """A failed allocation (host or GPU): sizes the user chose are too large for this machine."""
    text = str(e)
    return (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in text or "out of memory" in text.lower())


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only `command`'s stage module is imported (`Command.load`) to build its options."""
    from llmrec import __version__

    parser = _Parser(prog="llmrec", description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"llmrec {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.set_defaults(subparsers={})
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help, allow_abbrev=False)
        parser.get_default("subparsers")[name] = p
        if name == command:
            config = cmd.load().config
            add_options(p, config)
            if not _declares_common_options(config):
                add_options(p, CommonOptions, config_flag=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # report it as the subcommand's error, so the hint points at the right --help
        parser.get_default("subparsers").get(args.command, parser).error(
            f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.command is None:
        parser.print_help()
        return 0
    stage = COMMANDS[args.command].load()
    try:
        config = resolve_config(stage.config, args, args.config)
        common = resolve_config(CommonOptions, args)
        if isinstance(getattr(config, "device", None), str):
            check_device(config.device)  # before any data is read or any model built
        set_threads(common.threads)
        result = stage.run(config)
    except LlmrecError as e:
        print(f"llmrec {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        print(f"llmrec {args.command}: error: out of memory ({first}); use smaller sizes (--batch-size, "
              f"--eval-batch-size, the model's sizes) or a machine with more memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"llmrec {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
