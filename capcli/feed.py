"""The metrics feed: one JSON object per line in ``model_outputs/metrics_{name}.jsonl``.

Every line carries ``time``, ``stage``, ``event``, ``split``, ``epoch``, ``step``, ``loss``,
``top5``, ``bleu4`` and ``lr`` (null where they do not apply) and is flushed as it is written,
so ``capcli metrics`` and the dashboard can follow a live run.
"""

from __future__ import annotations

import json
import math
import os
import time

FIELDS = ("time", "stage", "event", "split", "epoch", "step", "loss", "top5", "bleu4", "lr")


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsFeed:
    def __init__(self, path: str, stage: str) -> None:
        self.path, self.stage = path, stage
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(self, event: str, **values) -> dict:
        line = dict.fromkeys(FIELDS)
        line.update(time=round(time.time(), 3), stage=self.stage, event=event)
        line.update({k: _plain(v) for k, v in values.items()})
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
        return line

    def truncate_after(self, step: int, stage: str | None = None) -> None:
        """Drop lines of steps after ``step`` (work a resumed run is about to redo), only of
        ``stage`` when given; atomic rewrite."""
        if not os.path.exists(self.path):
            return
        kept = []
        with open(self.path, encoding="utf-8") as f:
            for raw in f:
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue  # a half-written last line from a killed run
                if (line.get("step") or 0) <= step or (stage is not None and line.get("stage") != stage):
                    kept.append(json.dumps(line) + "\n")
        partial = self.path + ".partial"
        with open(partial, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(partial, self.path)


def read_feed(path: str) -> list[dict]:
    """Complete lines of a feed; a half-written last line is ignored."""
    lines = []
    with open(path, encoding="utf-8") as f:
        for raw in f:
            if raw.endswith("\n"):
                try:
                    lines.append(json.loads(raw))
                except ValueError:
                    continue
    return lines
