"""Writing files without following links or leaving torn files.

Every file capcli writes goes through here. A whole file (JSON, checkpoint, PNG, HDF5) is written
to a fresh temporary name in its destination folder, created exclusively (so a planted symlink
or an existing file at that name is never opened), then renamed over the final name: a rename
replaces a symlink at the final name instead of writing through it, and readers see the old
file or the new one, never half of one. Appends (the metrics feed) and lock files refuse a path
that is a symlink. Temporary files left by a killed writer are removed by the next write of the
same file.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import secrets
from collections.abc import Iterator
from typing import IO

from capcli.errors import CapcliError

_TEMP_SUFFIX = ".tmp"
# names earlier versions used: a fixed ``.partial`` suffix, mkstemp's ``.partial-*`` checkpoints
_OLD_TEMPS = ("{path}.partial", "{folder}/.partial-*.pth.tar")


def _temp_prefix(path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def remove_stale_temps(path: str) -> None:
    """Delete temporary files of ``path`` whose writing process is gone (and old fixed names).

    Only names inside ``path``'s folder are removed; ``os.remove`` on a symlink removes the link,
    never its target.
    """
    prefix = _temp_prefix(path)
    for temp in glob.glob(glob.escape(prefix) + "*" + _TEMP_SUFFIX):
        pid = temp[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(temp)
    folder = os.path.dirname(os.path.abspath(path))
    for pattern in _OLD_TEMPS:
        for temp in glob.glob(pattern.format(path=glob.escape(os.path.abspath(path)), folder=glob.escape(folder))):
            with contextlib.suppress(FileNotFoundError):
                os.remove(temp)


def _create_exclusive(path: str) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    return os.open(path, flags, 0o666)  # the umask applies, as for open()


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A fresh, empty temporary file next to ``path`` for a library that writes by name (h5py);
    renamed to ``path`` when the block ends without an error, removed otherwise."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temps(path)
    temp = f"{_temp_prefix(path)}{os.getpid()}.{secrets.token_hex(4)}{_TEMP_SUFFIX}"
    os.close(_create_exclusive(temp))
    try:
        yield temp
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
        if isinstance(exc, OSError) and exc.filename is None:  # a write through a file object
            raise OSError(exc.errno, exc.strerror or str(exc), path) from exc
        raise


@contextlib.contextmanager
def atomic_write(path: str, text: bool = False, sync: bool = False) -> Iterator[IO]:
    """An open file that becomes ``path`` when the block ends without an error.

    Args:
        text: open in UTF-8 text mode instead of binary.
        sync: fsync before the rename (checkpoints: survive a power cut, not only a kill).
    """
    with atomic_path(path) as temp:
        fd = os.open(temp, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        with open(fd, "w", encoding="utf-8") if text else open(fd, "wb") as f:
            yield f
            f.flush()
            if sync:
                os.fsync(f.fileno())


def open_append(path: str) -> IO:
    """Open ``path`` for appending text, creating it; a symlink there is refused."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CapcliError(f"{path} is a symbolic link; capcli does not write through links "
                              "(remove it or choose another --output-folder)") from None
        raise
    return open(fd, "a", encoding="utf-8")


def create_exclusive(path: str) -> int:
    """Create ``path`` only if nothing (not even a dangling symlink) is there; returns the descriptor.

    Raises:
        FileExistsError: something already has that name.
    """
    return _create_exclusive(path)
