"""A few validation images with their generated and reference captions, for the feed's val lines.

The same first images every epoch, so a watcher sees one caption improve; named as the prepared
data's manifest names them (their source file), else by position.
"""

from __future__ import annotations

from capcli.data.hdf5 import PreparedData
from capcli.data.jsonfiles import read_json
from capcli.errors import DataError
from capcli.runs.feed import MAX_SAMPLES


def image_names(prepared: PreparedData, split: str, count: int) -> list[str]:
    """The names of the split's first ``count`` images in HDF5 order (``val image 3`` without a manifest)."""
    try:
        entries = read_json(prepared.path("MANIFEST"), DataError).get("images", {}).get(split, [])
    except (DataError, AttributeError):
        entries = []
    names = [e.get("source") if isinstance(e, dict) else None for e in entries[:count]]
    return [n if isinstance(n, str) else f"{split.lower()} image {i + 1}"
            for i, n in enumerate(names + [None] * (count - len(names)))]


def validation_samples(names: list[str], hypotheses: list[list[str]], references: list[list[list[str]]],
                       count: int = MAX_SAMPLES) -> list[dict]:
    """``samples`` of a val line: ``{"image", "generated", "references"}`` for the first ``count`` images."""
    return [{"image": name, "generated": " ".join(hyp), "references": [" ".join(r) for r in refs]}
            for name, hyp, refs in zip(names[:count], hypotheses, references)]
