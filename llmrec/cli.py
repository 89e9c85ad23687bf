"""The `llmrec` command line: one entry point, one subcommand per pipeline stage (DESIGN.md §2).

Each subcommand is a config dataclass plus a run function in the module that owns the stage; the module is
imported only when its subcommand runs, so `llmrec --help` and `llmrec prepare` stay fast. Errors the user
can fix (`LlmrecError`) are printed as one clear message with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from llmrec.config import add_options, resolve_config
from llmrec.errors import LlmrecError


@dataclass(frozen=True)
class Command:
    """Where a subcommand lives: `module` defines the dataclass `config` and the function `run(config)`."""

    module: str
    config: str
    run: str
    help: str


COMMANDS: dict[str, Command] = {
    "prepare": Command("llmrec.data.prepare", "PrepareConfig", "run_prepare",
                       "turn raw interaction logs into canonical tables, splits and candidate sets"),
    "train-encoder": Command("llmrec.encoders.train", "TrainEncoderConfig", "run_train_encoder",
                             "train an ID-based sequential encoder (SASRec, GRU4Rec, Caser) or MostPop"),
    "train-llm": Command("llmrec.llm.train", "TrainLLMConfig", "run_train_llm",
                         "fine-tune an LLM recommender with hybrid prompts, curriculum and LoRA"),
    "evaluate": Command("llmrec.llm.evaluate", "EvaluateConfig", "run_evaluate",
                        "rank candidates with a trained LLM recommender (score, generate or constrained)"),
    "demo": Command("llmrec.demo", "DemoConfig", "run_demo",
                    "run every stage on MovieLens-100K at a small, documented scale"),
}


def _available() -> dict[str, Command]:
    """Commands whose module exists (stages land issue by issue).

    Looks for the module's file instead of calling `find_spec`, which would import the parent packages
    (and torch with them) just to print the command list.
    """
    root = Path(__file__).parent
    out = {}
    for name, cmd in COMMANDS.items():
        rel = Path(*cmd.module.split(".")[1:])
        if (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file():
            out[name] = cmd
    return out


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only `command`'s module is imported to build its options."""
    from llmrec import __version__

    parser = argparse.ArgumentParser(prog="llmrec", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"llmrec {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in _available().items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        if name == command:
            module = importlib.import_module(cmd.module)
            add_options(p, getattr(module, cmd.config))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.command is None:
        parser.print_help()
        return 0
    cmd = COMMANDS[args.command]
    module = importlib.import_module(cmd.module)
    try:
        config = resolve_config(getattr(module, cmd.config), args, args.config)
        result = getattr(module, cmd.run)(config)
    except LlmrecError as e:
        print(f"llmrec {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"llmrec {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
