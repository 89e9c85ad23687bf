"""User-facing errors.

Every error a user can cause by bad input is an `LlmrecError` (or a subclass). The CLI prints its message
and exits with status 2 instead of a traceback, so the message must name the file, line or field at fault
and say what was expected.
"""


class LlmrecError(Exception):
    """Bad input or a missing prerequisite that the user can fix; the message says how."""


class ConfigError(LlmrecError):
    """A config file or command-line option is invalid."""


class DataError(LlmrecError):
    """Raw or processed data are missing, malformed or inconsistent."""


class CheckpointError(LlmrecError):
    """A checkpoint folder is missing, malformed, or does not match the data or model it is used with."""


class TrainingDiverged(LlmrecError):
    """The training loss or a trainable weight became nan/inf; the run stopped and saved nothing."""
