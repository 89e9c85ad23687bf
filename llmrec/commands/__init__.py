"""The top layer: the `llmrec` command line and the commands that run several stages (`evaluate`, `demo`).

Each pipeline stage's own command (its config dataclass and run function) lives in the stage's package; the
modules here only parse arguments, choose the stage and report its result.
"""
