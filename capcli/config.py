"""Frozen configuration dataclasses, one per concern.

Commands build these from their options and pass them to a service; they are saved into
checkpoints and manifests with ``dataclasses.asdict`` and never changed during a run.
"""

from __future__ import annotations

from dataclasses import dataclass

DATASETS = ("shapes", "flickr8k", "flickr30k", "coco")


@dataclass(frozen=True)
class PrepConfig:
    """Options of ``capcli prep``.

    ``json_path``/``csv_path`` name a real dataset's caption file; with neither, the synthetic
    ``shapes`` dataset is generated under ``output_folder/shapes``.
    """

    dataset: str = "shapes"
    json_path: str | None = None
    csv_path: str | None = None
    image_folder: str | None = None
    output_folder: str = "data_output"
    captions_per_image: int = 5
    min_word_freq: int = 5
    max_len: int = 50
    image_size: int = 256
    workers: int = 1
    seed: int = 42
    num_images: int = 2000
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    force: bool = False

    @property
    def name(self) -> str:
        """The base name of every output file, e.g. ``flickr8k_5_5``."""
        return f"{self.dataset}_{self.captions_per_image}_{self.min_word_freq}"
