"""The command-line reference (docs/cli.md) is the CLI's own help, regenerated: a test keeps it current."""

from pathlib import Path

from llmrec.commands.cli import COMMANDS
from llmrec.commands.cli_reference import END, REFERENCE_FILE, START, cli_reference, replace_section

REFERENCE = Path(__file__).resolve().parents[1] / REFERENCE_FILE


def test_the_reference_page_is_the_current_help_of_every_command():
    generated = cli_reference()
    assert all(f"#### `llmrec {name}`" in generated for name in COMMANDS)
    assert "--threads" in generated and "--lr" in generated  # real option help, not just titles
    assert REFERENCE_FILE == "docs/cli.md"
    section = REFERENCE.read_text(encoding="utf-8").split(START, 1)[1].split(END, 1)[0]
    assert section.strip() == generated.strip(), \
        f"run `python -m llmrec.commands.cli_reference` to update {REFERENCE_FILE}"


def test_replace_section_keeps_the_text_around_it():
    text = f"before\n{START}\nold\n{END}\nafter\n"
    assert replace_section(text, "new\n") == f"before\n{START}\nnew\n{END}\nafter\n"
