"""METEOR and SPICE for ``capcli evaluate``, through pycocoevalcap's own scorers (the ``coco`` extra)
and a Java runtime found on PATH or in JAVA_HOME.

Both are optional: what is missing (pycocoevalcap, Java) is said in one line, with how to get it,
and the other metrics still run. SPICE fetches the Stanford CoreNLP models on first use and does
not run on every Java release: any failure of a scorer becomes one line too (its chatter and the
JVM's go to a buffer, never to the terminal), and no Java process outlives its scorer.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from capcli.errors import CapcliError

JAVA_METRICS = ("meteor", "spice")
GET_COCO = "pip install 'capcli[coco]'"
GET_JAVA = "install a Java runtime (e.g. apt install default-jre) or set JAVA_HOME"
SEE_JAVA = "`capcli env` shows the Java found"
DOWNLOAD_TIMEOUT = 30.0  # seconds without an answer before SPICE's model download counts as offline


class JavaMetricError(CapcliError):
    """A METEOR or SPICE run failed; the message is one line."""


@dataclass
class JavaSetup:
    """What the Java metrics can use: the runtime, its version, and why a metric cannot run."""

    java: str | None = None  # the java executable
    version: str | None = None  # its first `java -version` line, e.g. openjdk version "17.0.15" 2025-04-15
    unavailable: dict[str, str] = field(default_factory=dict)  # metric → one line: what is missing, how to get it


def find_java() -> str | None:
    """``java`` on PATH, else ``$JAVA_HOME/bin/java``; None when neither is there."""
    found = shutil.which("java")
    if found:
        return found
    home = os.environ.get("JAVA_HOME")
    candidate = os.path.join(home, "bin", "java") if home else None
    return candidate if candidate and os.access(candidate, os.X_OK) else None


def java_version(java: str) -> str | None:
    """The first line ``java -version`` prints, or None when it does not run."""
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def coco_installed() -> bool:
    """Whether pycocoevalcap (the ``coco`` extra) can be imported."""
    return importlib.util.find_spec("pycocoevalcap") is not None


def java_setup(metrics: Sequence[str]) -> JavaSetup:
    """Whether each Java metric in ``metrics`` can run here, and the Java that would run it."""
    wanted = [m for m in JAVA_METRICS if m in metrics]
    setup = JavaSetup()
    if not wanted:
        return setup
    names = " and ".join(m.upper() for m in wanted)
    if not coco_installed():
        missing = f"pycocoevalcap is not installed ({GET_COCO})"
    else:
        setup.java = find_java()
        if setup.java is None:
            missing = f"no java on PATH or in JAVA_HOME ({GET_JAVA}; {SEE_JAVA})"
        else:
            setup.version = java_version(setup.java)
            missing = f"{setup.java} -version failed ({GET_JAVA}; {SEE_JAVA})" if setup.version is None else ""
    if missing:
        setup.unavailable.update(dict.fromkeys(wanted, f"{names} not run: {missing}"))
    return setup


def _coco_inputs(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> tuple[dict, dict]:
    """pycocoevalcap's form: image index → reference strings, image index → [hypothesis string]."""
    return ({i: list(refs) for i, refs in enumerate(references)},
            {i: [hyp] for i, hyp in enumerate(hypotheses)})


@contextlib.contextmanager
def _java_first(java: str) -> Iterator[None]:
    """pycocoevalcap starts ``java`` from PATH: put the found one first while a scorer starts."""
    old = os.environ.get("PATH")
    os.environ["PATH"] = os.path.dirname(java) + (os.pathsep + old if old else "")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = old


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def meteor(references: Sequence[Sequence[str]], hypotheses: dict[int, Sequence[str]], java: str) -> dict[int, float]:
    """Corpus METEOR 1.5 of each beam's captions (strings) against the references (strings).

    Raises:
        JavaMetricError: the METEOR process could not start or stopped answering.
    """
    from pycocoevalcap.meteor.meteor import Meteor

    try:
        with _java_first(java):
            scorer = Meteor()
    except OSError as exc:
        raise JavaMetricError(f"METEOR not run: {java} did not start ({exc}; {SEE_JAVA})") from None
    try:
        return {k: float(scorer.compute_score(*_coco_inputs(references, hyps))[0]) for k, hyps in hypotheses.items()}
    except (OSError, ValueError) as exc:  # the JVM died: no answer (b'' is no float) or a broken pipe
        scorer.meteor_p.kill()
        reason = _last_line(scorer.meteor_p.stderr.read().decode("utf-8", "replace")) or str(exc)
        raise JavaMetricError(f"METEOR failed: {reason}") from None
    finally:
        _close_meteor(scorer)


def _close_meteor(scorer) -> None:
    """End the METEOR JVM now (pycocoevalcap's ``__del__`` would, at some garbage collection, and
    would wait forever on the lock a failed computation left held)."""
    process = scorer.meteor_p
    for stream in (process.stdin, process.stdout, process.stderr):
        with contextlib.suppress(OSError):
            stream.close()
    process.kill()
    process.wait()
    if scorer.lock.locked():
        scorer.lock.release()


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """Everything printed meanwhile, by Python or by child processes, goes to the yielded buffer;
    socket operations time out after ``DOWNLOAD_TIMEOUT`` seconds."""
    buffer = io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    timeout = socket.getdefaulttimeout()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile("w+b") as log:
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
            with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
                yield buffer
        finally:
            socket.setdefaulttimeout(timeout)
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            log.seek(0)
            buffer.write(log.read().decode("utf-8", "replace"))


def spice(references: Sequence[Sequence[str]], hypotheses: dict[int, Sequence[str]], java: str) -> dict[int, float]:
    """Mean SPICE F-score of each beam's captions (strings) against the references (strings).

    Raises:
        JavaMetricError: the CoreNLP models could not be fetched (offline), SPICE failed on this
            Java, or its files could not be written.
    """
    from pycocoevalcap.spice.spice import Spice

    stage = "fetching the Stanford CoreNLP models"
    try:
        with _java_first(java), _quiet() as output:
            scorer = Spice()  # downloads CoreNLP into pycocoevalcap's folder on first use
            stage = "running SPICE"
            return {k: float(scorer.compute_score(*_coco_inputs(references, hyps))[0])
                    for k, hyps in hypotheses.items()}
    except subprocess.CalledProcessError as exc:
        reason = _last_line(output.getvalue()) or f"java exited with status {exc.returncode}"
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:  # URLError and timeouts are OSErrors
        reason = _last_line(str(getattr(exc, "reason", "") or exc)) or type(exc).__name__
    see = f"; {SEE_JAVA} and its version" if stage == "running SPICE" else ""  # SPICE runs on some Java releases only
    raise JavaMetricError(f"SPICE not run: {stage} failed ({reason}{see})")
