"""One process at a time on a run: ``{output_folder}/{name}.lock``.

``train`` and ``a2c`` hold the lock of their run (output folder + run name) while they write its
checkpoints and feed. The lock is an ``flock`` on that file, so it is taken atomically and freed
by the kernel when its process dies, however it dies; the file records the holder's PID, host
and start time for the refusal message and for readers that ask whether a run is live, and the
process's own start (``pid_start``: ``/proc/PID/stat`` field 22 and the boot's id on Linux, ``ps``
elsewhere), so that a PID the system has since given to an unrelated process does not show a run
that is over as running (locks written before it have none and are read as before). A file left
by a dead holder is taken over with a note. Lock files are read as regular files only (a FIFO
would block) and through the JSON reader's depth check.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

from capcli.data.jsonfiles import MAX_DEPTH, parse_json
from capcli.errors import CapcliError
from capcli.safeio import open_no_links, open_regular, pid_alive, refuse_irregular
from capcli.text import visible


class RunLocked(CapcliError):
    """Another live process holds the run."""


def process_start(pid: int) -> str | None:
    """When process ``pid`` of this machine started, as an opaque text that differs for a later
    process given the same PID (None: unknown, or no such process).

    Linux: the boot's id and field 22 of ``/proc/PID/stat`` (clock ticks since boot); elsewhere
    ``ps -o lstart=``.
    """
    if os.path.isdir("/proc/self"):
        try:
            with open_regular(f"/proc/{pid}/stat", text=True) as f:
                fields = f.read().rpartition(")")[2].split()  # the name, in parentheses, may hold spaces
            with open_regular("/proc/sys/kernel/random/boot_id", text=True) as f:
                boot = f.read().strip()
        except (OSError, CapcliError):
            return None
        return f"{boot}:{fields[19]}" if len(fields) > 19 else None
    try:
        done = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True,
                              timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def holder_live(holder: dict | None) -> bool:
    """Whether the holder a lock file names may still be running: another host's holder is taken at
    its word; one of this host is live when its PID is, and, where the lock recorded the process's
    start (``pid_start``; older locks have none), when that PID still names the same process."""
    if not holder or holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int) \
            or isinstance(holder.get("pid"), bool):
        return holder is not None
    if not pid_alive(holder["pid"]):
        return False
    recorded = holder.get("pid_start")
    if not isinstance(recorded, str):
        return True
    now = process_start(holder["pid"])
    return now is None or now == recorded  # None: another user's process we cannot read, or just gone


def read_holder(path: str) -> dict | None:
    """What the lock file says about its last holder (None: empty, unreadable, or a holder of this
    host whose PID now names another process: the run it held is over)."""
    holder = _read_record(path)
    pid = holder.get("pid") if holder else None
    reused = isinstance(pid, int) and isinstance(holder.get("pid_start"), str) and pid_alive(pid) \
        and not holder_live(holder)
    return None if reused else holder


def _read_record(path: str) -> dict | None:
    try:
        with open_regular(path, text=True, links=False) as f:
            data = parse_json(f.read() or "null", path, max_depth=MAX_DEPTH)
    except (OSError, ValueError, CapcliError):  # absent, unreadable, not JSON, too deep, a FIFO or a link
        return None
    return data if isinstance(data, dict) else None


def _wait_for_holder(path: str, seconds: float = 2.0) -> dict | None:
    """The holder's record. A holder that has just taken the lock writes it a moment later, so an
    empty record, or one of a process that is gone (the previous holder), is read again."""
    deadline = time.monotonic() + seconds
    while not holder_live(holder := read_holder(path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return holder if holder_live(holder) else None


def _refusal(path: str, holder: dict | None) -> str:
    who = f"PID {visible(holder.get('pid'))}" if holder else "another process"
    if holder and holder.get("host") not in (None, socket.gethostname()):
        who += f" on {visible(holder['host'])}"
    since = f" since {time.strftime('%H:%M:%S', time.localtime(holder['started']))}" \
        if holder and isinstance(holder.get("started"), (int, float)) else ""
    return (f"this run is in use by {who}{since} ({path}); wait for it to finish, stop it, or use "
            "another --output-folder or run")


@contextlib.contextmanager
def run_lock(path: str, note: Callable[[str], None] = lambda text: None) -> Iterator[str]:
    """Hold the run's lock (``capcli.paths.lock_file``) for the block.

    Args:
        note: told when a lock left by a process that is gone is taken over.

    Raises:
        RunLocked: another live process holds it (naming its PID).
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = open_no_links(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK)
    try:
        refuse_irregular(fd, path, RunLocked)
        os.set_blocking(fd, True)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunLocked(_refusal(path, _wait_for_holder(path))) from None
        previous = _read_record(path)
        if previous and previous.get("pid") not in (None, os.getpid()):
            note(f"took over {path} from PID {visible(previous['pid'])}, which is no longer running")
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": round(time.time(), 3),
                  "pid_start": process_start(os.getpid())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # an empty, unlocked file: nobody holds the run
    finally:
        os.close(fd)
