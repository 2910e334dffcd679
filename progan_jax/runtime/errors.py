"""The base of every error that is the user's to fix, and the errors several modules share.

A `UserError` is a wrong config value, a data set not in place, a full disk, a workdir that
another run holds: its message says what is wrong and what to do, so `main.py` prints it and
exits with status 1, without a traceback. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake or a situation the user can fix; the message says how."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the field (`config.<field>: ...`)."""


class DataSetMissingError(UserError, RuntimeError):
    """The configured data set is not where it should be; the message says how to place it."""


class MissingFileError(UserError, FileNotFoundError):
    """A file the run needs is not there (a checkpoint, the Inception weights)."""
