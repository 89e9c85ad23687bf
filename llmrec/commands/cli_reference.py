"""The command-line reference, docs/cli.md, generated from the CLI's own `--help` so that it stays true.

    python -m llmrec.commands.cli_reference          # rewrite the reference section of docs/cli.md in place
docs/cli.md holds the output between `<!-- CLI-REFERENCE:START -->` and `<!-- CLI-REFERENCE:END -->`; a test
fails when they differ, so a changed option cannot leave the documentation behind.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

START, END = "<!-- CLI-REFERENCE:START -->", "<!-- CLI-REFERENCE:END -->"
REFERENCE_FILE = "docs/cli.md"  # relative to the repository root
WIDTH = "110"  # argparse wraps help at $COLUMNS: fixed, so the text does not depend on the terminal


def cli_reference() -> str:
    """Markdown: `llmrec --help`, then each command's `--help`, in the order of `llmrec.commands.cli.COMMANDS`."""
    from llmrec.commands.cli import COMMANDS, build_parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parts = ["```text", build_parser().format_help().replace("__main__.py", "llmrec").rstrip(), "```"]
        for name in COMMANDS:
            parser = build_parser(name)
            sub = parser.get_default("subparsers")[name]
            parts += ["", f"#### `llmrec {name}`", "", "```text", sub.format_help().rstrip(), "```"]
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved
    return "\n".join(parts) + "\n"


def replace_section(text: str, body: str) -> str:
    """`text` with the part between the markers replaced by `body`."""
    if START not in text or END not in text:
        raise ValueError(f"{REFERENCE_FILE} has no {START} ... {END} section")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{body}{END}{tail}"


def main() -> int:
    reference = Path(__file__).resolve().parents[2] / REFERENCE_FILE
    reference.write_text(replace_section(reference.read_text(encoding="utf-8"), cli_reference()), encoding="utf-8")
    print(f"updated the CLI reference in {reference}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
