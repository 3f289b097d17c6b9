"""Every file name capcli writes or reads in a run folder or a prepared-data folder, and the way back
from a file name to the run or data set it belongs to.

A run (output folder + run name, e.g. ``shapes_5_5``) has ``checkpoint_{name}.pth.tar`` and
``BEST_{name}.pth.tar`` from ``train``, ``A2C_{name}.pth.tar`` and ``BEST_A2C_{name}.pth.tar`` from
``a2c``, one ``metrics_{name}.jsonl`` feed for both, the seed's ``bleu_scores_{name}.json`` and
``training_metrics_{name}.json``, the configuration each stage started with (``config_{name}.json``,
``config_A2C_{name}.json``), ``{name}.lock``, and with ``--tensorboard`` ``tensorboard/{name}/``. The
run's name is ``--run-name``, by default the prepared data's name. Every checkpoint has a small
metadata sidecar ``{checkpoint without .pth.tar}.meta.json``, and ``capcli export`` turns one into an
inference bundle, the folder ``{checkpoint without .pth.tar}.bundle`` holding ``model.safetensors``,
``word_map.json``, ``config.json`` and ``README.md``. Prepared data (``capcli prep``) is
``WORDMAP_{name}.json``, per split ``{SPLIT}_IMAGES_{name}.hdf5``, ``{SPLIT}_CAPTIONS_{name}.json`` and
``{SPLIT}_CAPLENS_{name}.json``, ``{SPLIT}_REFERENCES_{name}.json`` (every raw reference caption
of each image, for evaluation; absent from folders prepared before it existed or by the tutorial's
code), and ``MANIFEST_{name}.json``; readers also accept the
a-PyTorch-Tutorial-to-Image-Captioning name ``{dataset}_{cpi}_cap_per_img_{mwf}_min_word_freq``.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

SPLITS = ("TRAIN", "VAL", "TEST")
CHECKPOINT_EXT = ".pth.tar"
META_EXT = ".meta.json"
BUNDLE_EXT = ".bundle"
# the files of an inference bundle, by role (nothing else is ever in one)
BUNDLE_FILES = {"weights": "model.safetensors", "word_map": "word_map.json", "config": "config.json",
                "card": "README.md"}
_FEED_PREFIX, _FEED_EXT = "metrics_", ".jsonl"
_WORDMAP_PREFIX, _JSON = "WORDMAP_", ".json"


# --- a run's files ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunFiles:
    """The files one stage (``train`` or ``a2c``) of a run writes."""

    checkpoint: str  # the latest state, to resume from
    best: str  # the best validation score so far
    feed: str  # the metrics feed, shared by both stages
    lock: str
    config: str  # the run's configuration as it started (JSON)
    bleu: str | None = None  # train only: the seed's JSON summaries
    metrics: str | None = None


def train_files(output_folder: str, name: str) -> RunFiles:
    return RunFiles(checkpoint=_in(output_folder, f"checkpoint_{name}{CHECKPOINT_EXT}"),
                    best=_in(output_folder, f"BEST_{name}{CHECKPOINT_EXT}"),
                    feed=feed_file(output_folder, name), lock=lock_file(output_folder, name),
                    config=config_file(output_folder, name), bleu=_in(output_folder, f"bleu_scores_{name}.json"),
                    metrics=_in(output_folder, f"training_metrics_{name}.json"))


def a2c_files(output_folder: str, name: str) -> RunFiles:
    return RunFiles(checkpoint=_in(output_folder, f"A2C_{name}{CHECKPOINT_EXT}"),
                    best=_in(output_folder, f"BEST_A2C_{name}{CHECKPOINT_EXT}"),
                    feed=feed_file(output_folder, name), lock=lock_file(output_folder, name),
                    config=config_file(output_folder, name, "a2c"))


def config_file(output_folder: str, name: str, stage: str = "train") -> str:
    """The configuration a run's stage started with: ``config_{name}.json`` (train) or
    ``config_A2C_{name}.json``."""
    return _in(output_folder, f"config_{'A2C_' if stage == 'a2c' else ''}{name}.json")


def feed_file(output_folder: str, name: str) -> str:
    return _in(output_folder, f"{_FEED_PREFIX}{name}{_FEED_EXT}")


def lock_file(output_folder: str, name: str) -> str:
    return _in(output_folder, f"{name}.lock")


def tensorboard_folder(output_folder: str, name: str, stage: str = "train") -> str:
    """``--tensorboard``: the run's event files, ``tensorboard/{name}/`` (train) and ``tensorboard/{name}/a2c/``
    (for ``tensorboard --logdir {output_folder}/tensorboard``: one TensorBoard run per stage)."""
    folder = _in(_in(output_folder, "tensorboard"), name)
    return _in(folder, "a2c") if stage == "a2c" else folder


def feed_pattern(output_folder: str) -> str:
    """The glob of every run's feed in ``output_folder`` (also shown to users waiting for one)."""
    return _in(output_folder, f"{_FEED_PREFIX}*{_FEED_EXT}")


def run_feeds(output_folder: str) -> dict[str, str]:
    """Run name → path of its feed in ``output_folder``, by name (regular files only: a FIFO or a
    folder by that name is not a run's feed)."""
    return {run_name_of_feed(p): p for p in sorted(glob.glob(feed_pattern(output_folder))) if os.path.isfile(p)}


def run_name_of_feed(path: str) -> str:
    """``model_outputs/metrics_shapes_5_5.jsonl`` → ``shapes_5_5``."""
    return os.path.basename(path).removeprefix(_FEED_PREFIX).removesuffix(_FEED_EXT)


def checkpoint_files(output_folder: str) -> list[str]:
    """Every checkpoint in ``output_folder``, sorted by name."""
    return sorted(glob.glob(_in(output_folder, f"*{CHECKPOINT_EXT}")))


def best_checkpoint_pattern(output_folder: str) -> str:
    return _in(output_folder, f"BEST_*{CHECKPOINT_EXT}")


def best_checkpoints(output_folder: str) -> list[str]:
    """The ``BEST_`` checkpoints (train and A2C) in ``output_folder``, sorted by name."""
    return sorted(glob.glob(best_checkpoint_pattern(output_folder)))


def is_best(path: str) -> bool:
    return os.path.basename(path).startswith("BEST_")


def checkpoint_stem(path: str) -> str:
    """``model_outputs/BEST_shapes_5_5.pth.tar`` → ``BEST_shapes_5_5`` (names evaluation files); a
    bundle ``BEST_shapes_5_5.bundle`` → ``BEST_shapes_5_5_bundle``, so its evaluation files never
    replace those of the checkpoint it came from."""
    name = os.path.basename(os.path.normpath(path))
    if name.endswith(BUNDLE_EXT):
        return name.removesuffix(BUNDLE_EXT) + "_bundle"
    return name.removesuffix(CHECKPOINT_EXT)


def checkpoint_meta_file(path: str) -> str:
    """The metadata sidecar of a checkpoint: ``BEST_x.pth.tar`` → ``BEST_x.meta.json``."""
    return path.removesuffix(CHECKPOINT_EXT) + META_EXT


def bundle_folder(checkpoint: str) -> str:
    """Where ``capcli export`` writes a checkpoint's bundle by default: ``BEST_x.pth.tar`` → ``BEST_x.bundle``."""
    return checkpoint.removesuffix(CHECKPOINT_EXT) + BUNDLE_EXT


def bundle_file(folder: str, role: str) -> str:
    """A file of the bundle in ``folder``; ``role`` is a key of :data:`BUNDLE_FILES`."""
    return _in(folder, BUNDLE_FILES[role])


def bundle_of(path: str) -> str | None:
    """The bundle folder ``path`` names (the folder itself or its ``model.safetensors``), or None
    when ``path`` names a file of another kind (a checkpoint)."""
    if os.path.isdir(path):
        return os.path.normpath(path)
    if os.path.basename(path) == BUNDLE_FILES["weights"]:
        return os.path.dirname(os.path.normpath(path)) or "."
    return None


def evaluation_files(output_folder: str, stem: str) -> list[str]:
    """The ``evaluation_{stem}_{split}.json`` files of one model in ``output_folder``, sorted."""
    return sorted(glob.glob(_in(glob.escape(output_folder), f"evaluation_{glob.escape(stem)}_*.json")))


def evaluation_file(output_folder: str, stem: str) -> str:
    return _in(output_folder, f"evaluation_{stem}.json")


def results_file(output_folder: str, stem: str, beam: int) -> str:
    return _in(output_folder, f"results_{stem}_beam{beam}.json")


def picture_file(output_folder: str, kind: str, image_name: str | None = None) -> str:
    """The pictures of ``caption`` and the demo: ``{kind}.png``, or ``{kind}_{image_name}.png`` for one of
    several images, ``kind`` being ``caption_result``, ``attention_visualization`` or ``caption_comparison``."""
    return _in(output_folder, f"{kind}_{image_name}.png" if image_name else f"{kind}.png")


def chart_files(output_folder: str, name: str) -> list[str]:
    """``capcli metrics --save-png``: loss, top-5 and BLEU-4 charts, then all four together."""
    return [_in(output_folder, f"{kind}_{name}.png")
            for kind in ("loss_plot", "accuracy_plot", "bleu_scores", "training_visualization")]


# --- prepared data ---------------------------------------------------------------------------


def data_file(folder: str, name: str, kind: str, split: str | None = None) -> str:
    """``kind`` is IMAGES, CAPTIONS, CAPLENS, REFERENCES (with a split), WORDMAP or MANIFEST."""
    return _in(folder, data_file_names(name)[f"{split}_{kind}" if split else kind])


def references_file(folder: str, name: str, split: str) -> str:
    """``{SPLIT}_REFERENCES_{name}.json``: every raw reference caption of each image, tokenised (newer
    preps write it; evaluation and validation fall back on the caption rows without it)."""
    return data_file(folder, name, "REFERENCES", split)


def data_file_names(name: str) -> dict[str, str]:
    """Every file name prep writes for ``name``, keyed by role (``WORDMAP``, ``TRAIN_IMAGES``...)."""
    files = {"WORDMAP": f"{_WORDMAP_PREFIX}{name}{_JSON}"}
    for split in SPLITS:
        files[f"{split}_IMAGES"] = f"{split}_IMAGES_{name}.hdf5"
        files[f"{split}_CAPTIONS"] = f"{split}_CAPTIONS_{name}{_JSON}"
        files[f"{split}_CAPLENS"] = f"{split}_CAPLENS_{name}{_JSON}"
        # a JSON list, one entry per image in HDF5 order: all its reference captions, each the
        # coco_tokenize tokens joined by single spaces (not sampled, not length-filtered, no <unk>)
        files[f"{split}_REFERENCES"] = f"{split}_REFERENCES_{name}{_JSON}"
    files["MANIFEST"] = f"MANIFEST_{name}{_JSON}"
    return files


def prepared_names(folder: str) -> list[str]:
    """The names of the data sets prepared in ``folder`` (one per word map), sorted."""
    return sorted(os.path.basename(p).removeprefix(_WORDMAP_PREFIX).removesuffix(_JSON)
                  for p in glob.glob(_in(folder, f"{_WORDMAP_PREFIX}*{_JSON}")))


def name_candidates(name: str) -> list[str]:
    """``name`` and, for ``dataset_cpi_mwf``, the tutorial's long form of it."""
    if name.count("_") < 2:
        return [name]
    dataset, cpi, mwf = name.rsplit("_", 2)
    return [name, f"{dataset}_{cpi}_cap_per_img_{mwf}_min_word_freq"]


def features_file(folder: str, split: str, name: str, key: str) -> str:
    """The frozen-encoder feature cache of one split (``key``: encoder weights + image size)."""
    return _in(folder, f"FEATURES_{split}_{name}_{key}.hdf5")


def shapes_source(output_folder: str) -> tuple[str, str]:
    """(Karpathy JSON, image folder) of the generated shapes scenes under ``output_folder``."""
    folder = _in(output_folder, "shapes")
    return _in(folder, "dataset_shapes.json"), _in(folder, "images")


def _in(folder: str, file: str) -> str:
    return os.path.join(folder, file)
