"""Frozen configuration dataclasses, one per concern.

Commands build these from their options and pass them to a service; they are saved into
checkpoints and manifests with ``dataclasses.asdict`` and never changed during a run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Names the CLI offers as choices, kept here (no torch import) so `capcli --help` stays instant.
# The model's tables (capcli.model.encoder.ENCODER_DIMS, capcli.model.backbones.FAMILIES,
# capcli.model.captioner.DECODERS) hold the same names; tests check that they agree.
RESNET_ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet-small")
TORCHVISION_ENCODERS = (  # torchvision's model names
    "convnext_tiny", "convnext_small", "convnext_base", "convnext_large",
    "efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l",
    "regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf", "regnet_y_3_2gf", "regnet_y_8gf", "regnet_y_16gf",
    "regnet_y_32gf",
    "swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b",
    "vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32",
)
ENCODER_NAMES = RESNET_ENCODERS + TORCHVISION_ENCODERS
CLIP_PREFIX = "clip:"  # clip:ARCH or clip:ARCH:TAG, open_clip's model name and pretrained tag
DECODER_NAMES = ("attention", "plain")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SPLITS = ("test", "val", "train")
REWARDS = ("cider", "bleu4")  # capcli a2c --reward
MONITORS = ("bleu4", "cider")  # capcli train --monitor: the validation score that picks BEST
MONITOR_LABELS = {"bleu4": "BLEU-4", "cider": "CIDEr-D"}
BASELINES = ("critic", "greedy")  # capcli a2c --baseline


# `capcli prep --dataset NAME`: the prefix of every prepared file, so letters, digits, "-", "_" and
# "." only, and not starting with "." (no hidden files, no "..", no path separators).
DATASET_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def encoder_problem(name: str) -> str | None:
    """Why ``name`` is no encoder capcli builds (None: it is one). A CLIP name is checked against
    open_clip's models where the model is built."""
    if name in ENCODER_NAMES:
        return None
    if name.startswith(CLIP_PREFIX) and re.fullmatch(r"[A-Za-z0-9._-]+(:[A-Za-z0-9._-]+)?", name[len(CLIP_PREFIX):]):
        return None
    return (f"unknown encoder {name!r}: choose a ResNet (resnet18...resnet152), a torchvision model "
            "(convnext_tiny, efficientnet_v2_s, regnet_y_1_6gf, swin_t, vit_b_16...) or clip:ARCH "
            "(e.g. clip:ViT-B-32); `capcli arch --help` lists them")


def dataset_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a dataset (None when it can)."""
    if DATASET_NAME.fullmatch(name):
        return None
    return (f"{name!r} is not a safe dataset name: use letters, digits, '-', '_' and '.' "
            "(up to 100, not starting with '.')")


def name_problem(name: str) -> str | None:
    """Why ``name``, read from a checkpoint, sidecar or bundle, cannot name a run or data set (None
    when it can): the same rule as ``--run-name`` and ``prep --dataset``."""
    if DATASET_NAME.fullmatch(name):
        return None
    return "not a safe name: use letters, digits, '-', '_' and '.' (up to 100, not starting with '.')"


def run_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a run (``--run-name``: the middle of every run file's name), None when it can."""
    if DATASET_NAME.fullmatch(name):
        return None
    return (f"--run-name {name!r}: not a safe run name; use letters, digits, '-', '_' and '.' "
            "(up to 100, not starting with '.')")


def is_shapes(name: str) -> bool:
    """Whether the prepared data set ``name`` (``{dataset}_{cpi}_{min_word_freq}``) is the synthetic one."""
    return name.rsplit("_", 2)[0] == "shapes"

# The shapes dataset's own defaults (any option given wins): no pretrained weights can be assumed
# offline, so a narrow ResNet (``resnet-small``) is trained from scratch on 128-pixel images: first
# on the kinds of object drawn (capcli/training/concepts.py), then with the decoder, one caption of each image a
# step, from those that name every object with its size (capcli/evaluation/content.py: complete_rows). Figures
# and how to reproduce them: docs/performance.md.
SHAPES_IMAGE_SIZE = 128
SHAPES_IMAGES = 10_000  # prep's default: enough scenes for an encoder trained from scratch to tell the shapes apart
SHAPES_TRAIN_DEFAULTS = {
    "encoder": "resnet-small", "encoded_size": 8, "fine_tune_encoder": True, "encoder_lr": 1e-3, "decoder_lr": 1e-3,
    "embed_dim": 256, "attention_dim": 256, "decoder_dim": 256, "batch_size": 160, "captions_per_step": 1,
    "concept_epochs": 3, "complete_captions": True, "epochs": 8, "patience_lr": 1, "lr_decay": 0.5,
}

# `capcli a2c` on a shapes model: an epoch is 8,000 scenes, so four epochs (about 3 minutes on 2
# cores) instead of ten, at a five times higher actor learning rate, sampling at temperature 0.5
# with no entropy bonus (the best caption of a scene is one template: nothing to keep exploring
# for), the encoder trained too (spatial relations are what is left to learn); any option given
# wins. docs/performance.md has the runs behind these.
SHAPES_A2C_DEFAULTS = {"epochs": 4, "actor_lr": 1e-4, "temperature": 0.5, "entropy_weight": 0.0,
                       "freeze_encoder": False}


@dataclass(frozen=True)
class PrepConfig:
    """Options of ``capcli prep``.

    ``captions`` (and the older ``json_path``/``csv_path``) name a real dataset's caption files,
    their format told from their content (:mod:`capcli.data.sources`); with none, the synthetic
    ``shapes`` dataset is generated under ``output_folder/shapes``. ``split_lists`` are files of
    image names, one per line, whose file name says the split (``Flickr_8k.trainImages.txt``).
    """

    dataset: str | None = "shapes"  # None: the caption files' own name (``prep._with_dataset``)
    json_path: str | None = None
    csv_path: str | None = None
    captions: tuple[str, ...] = ()
    split_lists: tuple[str, ...] = ()
    image_column: str | None = None
    caption_column: str | None = None
    image_folder: str | None = None
    output_folder: str = "data_output"
    captions_per_image: int = 5
    min_word_freq: int = 5
    max_len: int = 50
    image_size: int = 256
    workers: int = 1
    seed: int = 42
    num_images: int = SHAPES_IMAGES
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    force: bool = False

    @property
    def caption_files(self) -> tuple[str, ...]:
        """Every caption file given (``json_path`` and ``csv_path``, set by callers of old, first)."""
        return tuple(p for p in (self.json_path, self.csv_path, *self.captions) if p)

    @property
    def name(self) -> str:
        """The base name of every output file, e.g. ``flickr8k_5_5``."""
        return f"{self.dataset}_{self.captions_per_image}_{self.min_word_freq}"


@dataclass(frozen=True)
class Preprocess:
    """How an encoder takes images in [0, 1], as its weights were trained: resized to ``resize``
    (prepared images are square), centre-cropped to ``size``, normalised with ``mean`` and ``std``."""

    size: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # or bicubic


@dataclass(frozen=True)
class ModelConfig:
    """Architecture; saved in every checkpoint and used to rebuild the model from it."""

    vocab_size: int
    encoder: str = "resnet34"
    decoder: str = "attention"
    embed_dim: int = 512
    attention_dim: int = 512
    decoder_dim: int = 512
    dropout: float = 0.5
    one_hot: bool = False
    encoded_size: int = 14  # the grid side the encoder's features are pooled to (at most)
    preprocess: Preprocess | None = None  # None: a ResNet, which takes the prepared images as they are


ARCHITECTURE_FIELDS = ("encoder", "decoder", "embed_dim", "attention_dim", "decoder_dim", "one_hot")


@dataclass(frozen=True)
class TrainConfig:
    """Options of ``capcli train``."""

    data_folder: str = "data_output"
    data_name: str | None = None  # the prepared data set (--data-name): None for the only one
    output_folder: str = "model_outputs"
    run_name: str | None = None  # every run file's name: None for the data's name
    tensorboard: bool = False  # also write the feed's scalars as TensorBoard events
    epochs: int = 120
    batch_size: int = 64
    decoder_lr: float = 4e-4
    encoder_lr: float = 1e-4
    grad_clip: float = 5.0
    alpha_c: float = 1.0
    teacher_forcing: float = 1.0
    fine_tune_encoder: bool = False
    fine_tune_depth: int | None = None  # stages / blocks trained with fine_tune_encoder (None: the encoder's default)
    pretrained: bool | None = None  # None: ImageNet weights on real data sets, none on shapes
    pretrained_weights: str | None = None
    resume: bool = False
    checkpoint: str | None = None
    overwrite: bool = False
    workers: int = 0
    precision: str = "auto"
    compile: bool = False
    device: str = "auto"
    seed: int = 42
    feature_cache: bool = True
    save_every: float = 0.0
    patience_lr: int = 10
    patience_stop: int = 20
    lr_decay: float = 0.8
    max_val_images: int = 0
    monitor: str = "bleu4"  # the validation score that decides BEST, learning-rate decay and early stopping
    captions_per_step: int = 0  # 0: every caption of each image in a batch; k: k of them at random
    concept_epochs: int = 0  # shapes: a new run first trains the encoder on the kinds of object drawn (concepts.py)
    concept_lr: float = 2e-3
    complete_captions: bool = False  # shapes: train on the captions that name every object drawn, with its size


@dataclass(frozen=True)
class A2CConfig:
    """Options of ``capcli a2c``; saved in A2C checkpoints, and a resumed run takes the ones not given from there."""

    checkpoint: str | None = None
    data_folder: str | None = None  # None: where the model's training data was
    data_name: str | None = None  # None: the data the model was trained on
    output_folder: str = "model_outputs"
    run_name: str | None = None  # None: the trained model's run (its data's name before --run-name)
    tensorboard: bool = False
    overwrite: bool = False
    epochs: int = 10
    batch_size: int = 32  # images per batch
    temperature: float = 1.0
    entropy_weight: float = 0.01
    entropy_annealing: bool = True
    value_loss_weight: float = 0.5
    freeze_encoder: bool = True
    gamma: float = 1.0
    reward: str = "cider"
    reward_clip: float = 0.0
    baseline: str = "critic"
    actor_lr: float = 2e-5
    critic_lr: float = 1e-3
    encoder_lr: float = 1e-5
    grad_clip: float = 5.0
    max_len: int = 0  # 0: the training data's
    resume: bool = False
    device: str = "auto"
    precision: str = "auto"
    seed: int = 42
    max_val_images: int = 0
