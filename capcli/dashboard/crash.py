"""How the dashboard ends on an unexpected error: the traceback goes to a log file, the user gets
one line (``capcli dashboard`` prints :attr:`Dashboard.error_message <capcli.dashboard.app.Dashboard>`)
and the app exits with return code 1.

Textual has no public hook that sees every error, so the dashboard reports them where its own code
is entered: failed workers (``on_worker_state_changed``), actions (``run_action``) and, through
:func:`guarded`, its message handlers and timers. The error is then raised again, so that Textual
ends the app as it does for any unhandled error (and ``App.run_test`` raises it in tests).
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
import traceback

from capcli import safeio

ERROR_LOG = "dashboard_error.log"


def write_error_log(folder: str, error: BaseException) -> str:
    """Write the traceback of ``error`` to ``folder``/dashboard_error.log, or to a new temporary
    file when that folder is missing or not writable; returns the file's path.

    Raises:
        OSError: not even a temporary file could be written.
    """
    text = f"capcli dashboard, {time.strftime('%Y-%m-%d %H:%M:%S')}\n" + "".join(traceback.format_exception(error))
    if os.path.isdir(folder):
        path = os.path.join(folder, ERROR_LOG)
        try:
            with safeio.atomic_write(path, text=True) as f:
                f.write(text)
            return path
        except OSError:
            pass  # a folder this user may only read: the temporary file below instead
    fd, path = tempfile.mkstemp(prefix="capcli-dashboard-", suffix=".log")
    with open(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def crash_message(folder: str, error: BaseException) -> str:
    """Log ``error`` (:func:`write_error_log`) and say so in one line: its type, the first line
    of its message and where its traceback is."""
    try:
        where = f"traceback in {write_error_log(folder, error)}"
    except OSError as exc:
        where = f"no log written: {exc}"
    summary = (str(error).strip().splitlines() or [""])[0]
    return (f"the dashboard stopped on an unexpected error: {type(error).__name__}"
            f"{': ' + summary if summary else ''} ({where})")


def guarded(handler):
    """Decorate a method of a dashboard widget (or of the app) that Textual calls: a message
    handler, a timer's callback, a screen's result callback. An error in it is reported through
    the app's ``crashed`` first, then raised again for Textual to end the app."""

    @functools.wraps(handler)
    def call(self, *args, **kwargs):
        try:
            return handler(self, *args, **kwargs)
        except Exception as error:
            self.app.crashed(error)
            raise

    return call
