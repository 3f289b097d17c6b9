"""User-facing errors.

Services raise these with messages written for the person at the terminal; ``cli.py`` is the
one place that turns them into an exit code. Anything else that escapes is a bug.
"""


class CapcliError(Exception):
    """A failure the user can act on; the message is shown as one line."""


class InputError(CapcliError):
    """A missing, unreadable or malformed input file or folder."""


class DataError(CapcliError):
    """Prepared data that is absent, inconsistent or unusable."""


class CheckpointError(CapcliError):
    """A checkpoint that is missing, unsafe or incompatible."""
