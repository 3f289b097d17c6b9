"""Opening a file that must be a regular file, without ever blocking on a FIFO.

``open()`` of a FIFO waits for a writer, for ever; a device may never end. The name is opened
without blocking and the open descriptor itself is checked (no race with the name being swapped
between a check and the open), then switched back to ordinary blocking reads.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO


class NotRegularFile(OSError):
    """``path`` names a FIFO, a device, a socket or a folder."""

    def __init__(self, path: str, mode: int) -> None:
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        super().__init__(errno.EINVAL, f"{kind}, not a regular file", path)
        self.kind = kind


def open_regular_file(path: str) -> BinaryIO:
    """``path`` opened for binary reading, only if it is a regular file.

    Raises:
        NotRegularFile: a FIFO, device, socket or folder.
        OSError: it cannot be opened (absent: FileNotFoundError; permissions).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, mode)
        os.set_blocking(fd, True)
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
