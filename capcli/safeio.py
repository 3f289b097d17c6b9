"""Writing files without following links or leaving torn files.

Every file capcli writes goes through here. A whole file (JSON, checkpoint, PNG, HDF5) is written
to a fresh temporary name in its destination folder, created exclusively (so a planted symlink
or an existing file at that name is never opened), then renamed over the final name: a rename
replaces a symlink at the final name instead of writing through it, and readers see the old
file or the new one, never half of one. Appends (the metrics feed) and lock files refuse a path
that is a symlink. A folder of files (an export bundle) is written into a fresh staging folder and
renamed the same way; a previous folder is swapped out in one step (``renameat2`` exchange), or,
where the system cannot, kept under a name that readers and the next writer restore, so that a
kill never leaves neither. Temporary files and staging folders left by a killed writer are removed
by the next process that writes into the same folder, and errors name the final path, never the
hidden temporary one.

Every file capcli reads is opened with :func:`open_regular`: a FIFO (which would block the reader
for ever), a device or a folder is refused in one line.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from typing import IO

from capcli.errors import CapcliError
from capcli.text import visible

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]  # temps of other hosts are never touched
# .{name}.{host}-{pid}.{random}.tmp
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]{1,9})\.[0-9a-f]{8}\.tmp$")
_OLD_CHECKPOINT_TEMP = re.compile(r"^\.partial-.*\.pth\.tar$")  # what earlier versions' mkstemp made
_cleaned_folders: set[str] = set()
_NO_LINKS = os.O_NOFOLLOW | os.O_CLOEXEC


def temp_path(path: str, pid: int | None = None) -> str:
    """A fresh temporary name for ``path``, in its folder, tagged with this host and ``pid``."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{_HOST}-{os.getpid() if pid is None else pid}.{secrets.token_hex(4)}.tmp")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine may still be running (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's live process (or no pid of this machine): leave it
    return True


def _stale(folder: str, entry: str) -> bool:
    found = _TEMP.match(entry)
    if found:
        return found["host"] == _HOST and not pid_alive(int(found["pid"]))
    if _OLD_CHECKPOINT_TEMP.match(entry):  # no owner to ask: only links (never made by capcli) and old files
        info = os.lstat(os.path.join(folder, entry))
        return stat.S_ISLNK(info.st_mode) or time.time() - info.st_mtime > 3600
    return False


def remove_stale_temps(path: str) -> None:
    """Delete the temporary files in ``path``'s folder whose writer (a process of this host) is
    gone, once per folder and process, and the fixed ``{path}.partial`` name earlier versions used.

    Only names inside the folder are removed; ``os.remove`` on a symlink removes the link,
    never its target.
    """
    folder = os.path.dirname(os.path.abspath(path))
    with contextlib.suppress(FileNotFoundError):
        if os.path.islink(path + ".partial") or os.path.isfile(path + ".partial"):
            os.remove(path + ".partial")
    if folder in _cleaned_folders:
        return
    _cleaned_folders.add(folder)
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        with contextlib.suppress(FileNotFoundError):
            if entry.startswith(".") and _stale(folder, entry):
                _remove(os.path.join(folder, entry))


def _remove(path: str) -> None:
    """Remove a file, a link (never its target) or a staging folder with what is in it."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def create_exclusive(path: str) -> int:
    """Create ``path`` only if nothing (not even a dangling symlink) is there; returns the descriptor.

    Raises:
        FileExistsError: something already has that name.
    """
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_LINKS, 0o666)  # the umask applies


def open_no_links(path: str, flags: int) -> int:
    """``os.open`` that refuses a symlink at ``path`` with one line instead of following it."""
    try:
        return os.open(path, flags | _NO_LINKS, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CapcliError(f"{path} is a symbolic link; capcli does not write through links "
                              "(remove it or choose another --output-folder)") from None
        raise


def _as_final(exc: BaseException, temp: str, path: str) -> OSError | None:
    """``exc`` naming the final ``path`` where it names the hidden ``temp`` (or a file in it), so
    that messages name the file the user knows; None when ``exc`` is no ``OSError`` or names
    another file."""
    if not isinstance(exc, OSError):
        return None
    name = exc.filename if isinstance(exc.filename, str) else None
    if name is not None and name != temp and not name.startswith(temp + os.sep):
        return None
    text = (exc.strerror or str(exc)).replace(temp, path)  # h5py puts the name in its text
    return OSError(exc.errno, text, path + name[len(temp):] if name is not None else path)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A fresh, empty temporary file next to ``path`` for a library that writes by name (h5py);
    renamed to ``path`` when the block ends without an error, removed otherwise."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temps(path)
    temp = temp_path(path)
    os.close(create_exclusive(temp))
    try:
        yield temp
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
        renamed = _as_final(exc, temp, path)
        if renamed is not None:
            raise renamed from exc
        raise


@contextlib.contextmanager
def atomic_write(path: str, text: bool = False, sync: bool = False) -> Iterator[IO]:
    """An open file that becomes ``path`` when the block ends without an error.

    Args:
        text: open in UTF-8 text mode instead of binary.
        sync: fsync before the rename (checkpoints: survive a power cut, not only a kill).
    """
    with atomic_path(path) as temp:
        fd = os.open(temp, os.O_WRONLY | _NO_LINKS)
        with open(fd, "w", encoding="utf-8") if text else open(fd, "wb") as f:
            yield f
            f.flush()
            if sync:
                os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_folder(path: str, replaces: bool = False) -> Iterator[str]:
    """A fresh, empty staging folder next to ``path``, renamed to ``path`` when the block ends
    without an error and removed otherwise. Readers never see a half-filled folder at ``path``.

    Args:
        replaces: ``path`` may hold a previous folder (the caller has checked it is one of its
            own), which is moved aside and removed once the new one is in place. A link at
            ``path`` is always refused.

    Raises:
        CapcliError: ``path`` is a symbolic link, or something is there and ``replaces`` is not set.
    """
    if os.path.islink(path):
        raise CapcliError(f"{path} is a symbolic link; capcli does not write through links "
                          "(remove it or choose another path)")
    restore_previous(path)  # a replacement killed half-way (without rename-exchange) left it aside
    if os.path.lexists(path) and not replaces:
        raise CapcliError(f"{path} exists; remove it or choose another path")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temps(path)
    staging = temp_path(path)
    os.mkdir(staging)  # fails if anything (even a link) has the name
    try:
        yield staging
        if os.path.lexists(path):
            _replace_folder(staging, path)
        else:
            os.rename(staging, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
        renamed = _as_final(exc, staging, path)
        if renamed is not None:
            raise renamed from exc
        raise


def open_regular(path: str, text: bool = False, error: type[CapcliError] = CapcliError,
                 links: bool = True) -> IO:
    """Open ``path`` for reading only if it is a regular file: a FIFO (opening one blocks until a
    writer comes, for ever), a device or a folder is refused with one line naming ``path``.

    The file is opened without blocking, checked with ``fstat`` on that very descriptor (no race
    with a swap of the name), then switched back to blocking reads.

    Args:
        text: UTF-8 text instead of bytes.
        error: the error raised for what is not a regular file.
        links: follow a symlink at ``path`` (False: refuse it, where links are refused already).

    Raises:
        error: not a regular file (or a link, with ``links=False``).
        OSError: the file cannot be opened (absent, permissions).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if links else os.O_NOFOLLOW))
    except OSError as exc:
        if exc.errno == errno.ELOOP and not links:
            raise error(f"{visible(path)} is a symbolic link; capcli does not read through it here") from None
        raise
    try:
        refuse_irregular(fd, path, error)
        os.set_blocking(fd, True)
        return open(fd, encoding="utf-8") if text else open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def refuse_irregular(fd: int, path: str, error: type[CapcliError] = CapcliError) -> None:
    """Raise ``error`` naming ``path`` unless the open descriptor ``fd`` is a regular file."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise error(f"{visible(path)}: not a regular file (a FIFO, device or folder); capcli reads only "
                    "regular files here (remove it or give the file itself)")


def previous_path(path: str) -> str:
    """Where a folder being replaced waits (where rename-exchange is missing) until its successor is in place."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.previous")


def restore_previous(path: str) -> None:
    """Put back the folder a replacement of ``path`` killed half-way left aside: readers and the
    next writer find it at ``path`` again. Nothing happens when ``path`` exists."""
    previous = previous_path(path)
    if os.path.lexists(path) or not os.path.isdir(previous) or os.path.islink(previous):
        return
    with contextlib.suppress(OSError):  # a read-only folder, or another process restored it first
        os.rename(previous, path)


def _exchange(first: str, second: str) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system
    or its file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_cwd, exchange = -100, 2
    if renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), second)


def _replace_folder(staging: str, path: str) -> None:
    """Put the folder ``staging`` at ``path`` in place of the folder there, with no moment in
    which ``path`` is absent for good: swapped in one step where the system can, else the old
    folder waits under :func:`previous_path` (restored by readers and the next writer if a kill
    comes before the new one is in place) and is removed once the new one is."""
    if _exchange(staging, path):
        shutil.rmtree(staging)  # now the previous folder
        return
    previous = previous_path(path)
    if os.path.lexists(previous):
        _remove(previous)  # a previous replacement's leftover: path itself is in place
    os.rename(path, previous)  # a folder cannot be renamed over a non-empty one
    try:
        os.rename(staging, path)
    except BaseException:
        os.rename(previous, path)  # the previous folder stays
        raise
    shutil.rmtree(previous)


def open_append(path: str) -> IO:
    """Open ``path`` for appending text, creating it; a symlink there is refused."""
    return open(open_no_links(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a", encoding="utf-8")
