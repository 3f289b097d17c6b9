"""``capcli demo``: the embedded end-to-end run on the synthetic shapes dataset.

For now it prepares the shapes dataset; training, evaluation and captioning join it as those
services land.
"""

from __future__ import annotations

from dataclasses import dataclass

from capcli.config import PrepConfig
from capcli.prep import PrepResult, run_prep
from capcli.progress import SILENT, Progress


@dataclass(frozen=True)
class DemoResult:
    prep: PrepResult


def run_demo(data_folder: str = "data_output", num_images: int = 2000, workers: int = 1,
             progress: Progress = SILENT) -> DemoResult:
    """Run every demo stage on the shapes dataset and return what each produced."""
    prep = run_prep(PrepConfig(output_folder=data_folder, num_images=num_images, workers=workers),
                    progress)
    return DemoResult(prep=prep)
