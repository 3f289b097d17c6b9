"""What a training run starts from, decided before anything is built: the data set's defaults,
the checkpoint it resumes, its architecture, and the warning a random encoder deserves."""

from __future__ import annotations

import os
from dataclasses import fields, replace

from capcli.checkpoint import load_checkpoint
from capcli.config import ARCHITECTURE_FIELDS, SHAPES_TRAIN_DEFAULTS, ModelConfig, TrainConfig, is_shapes
from capcli.data.hdf5 import PreparedData
from capcli.errors import CheckpointError
from capcli.progress import Progress


def model_config_for(ckpt: dict | None, options: dict, given: frozenset, vocab_size: int) -> ModelConfig:
    """The checkpoint's architecture on resume (a given option that conflicts with it is an error)."""
    if ckpt is None:
        return ModelConfig(vocab_size=vocab_size, **options)
    saved = ModelConfig(**ckpt["model_config"])
    for field in ARCHITECTURE_FIELDS:
        if field in given and options.get(field) != getattr(saved, field):
            flag = "--" + field.replace("_", "-")
            raise CheckpointError(f"{flag} {options.get(field)} conflicts with the checkpoint being resumed "
                                  f"({field} = {getattr(saved, field)}); drop {flag} or start a new run")
    if saved.vocab_size != vocab_size:
        raise CheckpointError(f"the checkpoint's vocabulary ({saved.vocab_size}) differs from the data's "
                              f"({vocab_size}); resume on the data it was trained on")
    return saved


_TRAIN_STATE = ("epoch", "step", "epoch_step", "best_bleu4", "best_epoch", "since_improvement", "bleu_history",
                "history", "decoder_optimizer")


def _resumable(path: str) -> dict:
    """A training checkpoint that ``train`` can continue, checked before anything is built from it."""
    from capcli.model.captioner import model_from_checkpoint

    ckpt = load_checkpoint(path)
    model_from_checkpoint(path, ckpt)  # architecture, word map and weights, each with its own sentence
    if ckpt.get("kind", "train") != "train":
        raise CheckpointError(f"{path}: a {ckpt['kind']} checkpoint; `capcli train` continues training checkpoints "
                              "(`capcli a2c --resume` continues A2C runs)")
    missing = [k for k in _TRAIN_STATE if k not in ckpt]
    wrong = [k for k in ("epoch", "step", "epoch_step", "best_epoch") if k in ckpt
             and (not isinstance(ckpt[k], int) or isinstance(ckpt[k], bool) or ckpt[k] < 0)]
    if missing or wrong:
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + [f"{k} is not a count" for k in wrong]
        raise CheckpointError(f"{path}: cannot resume training from it ({'; '.join(problems)})")
    return ckpt


def resume_source(config: TrainConfig, paths: dict) -> dict | None:
    if config.checkpoint:
        return _resumable(config.checkpoint)
    if config.resume:
        if not os.path.exists(paths["checkpoint"]):
            raise CheckpointError(f"--resume: no checkpoint at {paths['checkpoint']} (train without --resume first)")
        return _resumable(paths["checkpoint"])
    if os.path.exists(paths["checkpoint"]) and not config.overwrite:
        raise CheckpointError(f"{paths['checkpoint']} exists: continue it with --resume, or start over with "
                              "--overwrite (which replaces its checkpoints and metrics)")
    return None


def dataset_defaults(prepared: PreparedData, config: TrainConfig, model_options: dict,
                      given: frozenset) -> tuple[TrainConfig, dict]:
    """The shapes data set trains with ``SHAPES_TRAIN_DEFAULTS`` (see config.py) for every option
    not in ``given``; other data sets keep the options as they are. The encoder starts from
    ImageNet weights unless told otherwise, except on shapes (synthetic scenes, nothing to download)."""
    shapes = is_shapes(prepared.name)
    if config.pretrained is None:
        config = replace(config, pretrained=config.pretrained_weights is not None or not shapes)
    if not shapes:
        return config, model_options
    defaults = {k: v for k, v in SHAPES_TRAIN_DEFAULTS.items() if k not in given}
    model_fields = {f.name for f in fields(ModelConfig)}
    config = replace(config, **{k: v for k, v in defaults.items() if k not in model_fields})
    return config, {**model_options, **{k: v for k, v in defaults.items() if k in model_fields}}


def warn_random_encoder(config: TrainConfig, name: str, ckpt: dict | None, progress: Progress) -> None:
    if ckpt is None and not config.pretrained and not is_shapes(name):
        frozen = "frozen " if not config.fine_tune_encoder else ""
        progress.message(f"warning: --no-pretrained: the {frozen}encoder starts from random weights, so on real "
                         "photos its captions will be poor (drop --no-pretrained to start from ImageNet weights)")
