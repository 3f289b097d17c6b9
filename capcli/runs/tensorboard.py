"""``--tensorboard``: the feed's figures as TensorBoard event files, for users who watch runs in
TensorBoard (over ``ssh -L 6006:localhost:6006``) or tools that read its files.

A :class:`TensorBoardSink` listens to the run's :class:`~capcli.runs.feed.MetricsFeed`: every number of
a step or epoch line becomes a scalar tagged ``{stage}/{split or "step"}/{field}``
(``train/val/bleu4``, ``train/step/pairs_per_s``, ``a2c/train/reward``...) at the line's global
step, and a val line's sample captions become text (``{stage}/val/samples``). Events go to
``{output_folder}/tensorboard/{run}/``; a resumed run purges the events after the step it resumes
from, as the feed drops its lines. The ``tensorboard`` package is an optional extra: without it
``--tensorboard`` stops the command before anything is written, with one line saying how to get it.
"""

from __future__ import annotations

import math

from capcli.errors import CapcliError
from capcli.runs.feed import samples_of

INSTALL_HINT = "pip install 'capcli[tensorboard]'"
# bookkeeping, not figures
_NOT_SCALARS = frozenset({"time", "epoch", "step", "epochs"})


class TensorBoardMissing(CapcliError):
    """``--tensorboard`` without the tensorboard package."""


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TensorBoardMissing(f"--tensorboard needs the tensorboard package, which is not installed: "
                                 f"{INSTALL_HINT} (or run without --tensorboard)") from None
    return SummaryWriter


def check_available() -> None:
    """Raise :class:`TensorBoardMissing` now, before a run starts, when the package is not there."""
    _summary_writer()


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def samples_text(samples: list[dict]) -> str:
    """Markdown of a val line's samples: each image, its generated caption and its references."""
    blocks = []
    for s in samples:
        refs = "\n".join(f"  - {r}" for r in s["references"])
        blocks.append(f"**{s['image']}**\n\n- generated: *{s['generated']}*\n- references:\n{refs}")
    return "\n\n".join(blocks)


class TensorBoardSink:
    """Writes each feed line it is given (see the module docstring); call :meth:`close` at the end.

    Args:
        purge_step: on resume, the step resumed from: later events of the earlier run are dropped.
    """

    def __init__(self, folder: str, purge_step: int | None = None) -> None:
        self.folder = folder
        self.writer = _summary_writer()(log_dir=folder, purge_step=purge_step, flush_secs=10)

    def __call__(self, line: dict) -> None:
        event, step = line.get("event"), line.get("step")
        if event not in ("step", "epoch") or not _number(step):
            return
        prefix = f"{line.get('stage')}/{line.get('split') if event == 'epoch' else 'step'}"
        for key, value in line.items():
            if key not in _NOT_SCALARS and _number(value):
                self.writer.add_scalar(f"{prefix}/{key}", value, step, walltime=line.get("time"))
        samples = samples_of(line)
        if samples:
            self.writer.add_text(f"{line.get('stage')}/val/samples", samples_text(samples), step,
                                 walltime=line.get("time"))
        if event == "epoch":
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
