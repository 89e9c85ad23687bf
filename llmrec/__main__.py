"""`python -m llmrec` is the same entry point as the `llmrec` console script."""

from llmrec.commands.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
