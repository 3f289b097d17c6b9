"""User-facing errors.

Services raise these with messages written for the person at the terminal; ``cli.py`` is the
one place that turns them into an exit code. Anything else that escapes is a bug.
"""

import errno


class CapcliError(Exception):
    """A failure the user can act on; the message is shown as one line."""

    # True where the process cannot end normally after it: the error boundary prints the line,
    # flushes and ends the process at once (os._exit), skipping interpreter teardown.
    ends_process_at_once = False


class InputError(CapcliError):
    """A missing, unreadable or malformed input file or folder."""


class DataError(CapcliError):
    """Prepared data that is absent, inconsistent or unusable."""


class CheckpointError(CapcliError):
    """A checkpoint that is missing, unsafe or incompatible."""


class Interrupted(CapcliError):
    """SIGINT/SIGTERM stopped a command; ``exit_code`` is 128 + the signal, as shells expect."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


_OS_HINTS = {
    errno.ENOSPC: "no space left on the device; free some space or write to another folder",
    errno.EDQUOT: "disk quota exceeded; free some space or write to another folder",
    errno.EROFS: "read-only file system; choose a writable folder",
    errno.EACCES: "permission denied; check the permissions or choose another folder",
    errno.EPERM: "operation not permitted; check the permissions or choose another folder",
    errno.ELOOP: "a symbolic link where capcli writes; remove it or choose another folder",
    errno.ENOENT: "no such file or folder",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOTDIR: "a part of the path is not a folder",
}


def first_line(exc: object, limit: int = 160) -> str:
    """The first line of an exception's (or any object's) text, for quoting in one line."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def shorten(value: object, limit: int = 40) -> str:
    """``value``'s text on one line, cut to ``limit`` characters (for quoting file contents)."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def os_error_message(exc: OSError) -> str:
    """One line for a failure of the machine rather than of capcli: the file and what to do."""
    reason = _OS_HINTS.get(exc.errno) or exc.strerror or first_line(exc)
    return f"{exc.filename}: {reason}" if exc.filename is not None else reason


def out_of_memory_message(exc: BaseException) -> str | None:
    """The user's line for torch running out of GPU (or CPU) memory; None for any other error."""
    text = str(exc)
    on_gpu = type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in text
    if not on_gpu and "DefaultCPUAllocator: can't allocate memory" not in text:
        return None
    where = "the GPU" if on_gpu else "the machine"
    see = " (`capcli env` shows each GPU's memory)" if on_gpu else ""
    return (f"{where} ran out of memory ({first_line(exc, 120)}); use a smaller --batch-size, "
            f"--precision bf16 or fp16 on a GPU, or a smaller --encoder; checkpoints already saved are kept{see}")
