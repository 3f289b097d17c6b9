"""What a training run starts from, decided before anything is built: the data set's defaults,
the checkpoint it resumes, its architecture, and the warning a random encoder deserves."""

from __future__ import annotations

from dataclasses import fields, replace

from capcli.config import (
    ARCHITECTURE_FIELDS,
    RESNET_ENCODERS,
    SHAPES_TRAIN_DEFAULTS,
    ModelConfig,
    TrainConfig,
    is_shapes,
)
from capcli.data.hdf5 import PreparedData
from capcli.errors import CheckpointError
from capcli.model.captioner import with_preprocess
from capcli.paths import RunFiles, config_file, prepared_names
from capcli.runs.config import preflight_checks, saved_data_name
from capcli.runs.log import nothing_to_train
from capcli.runtime.progress import Progress
from capcli.store.checkpoint import Checkpoint
from capcli.store.files import read_checkpoint
from capcli.training.lifecycle import RunResult


def nothing_to_train_result(name: str, files: RunFiles, ckpt: Checkpoint | None, config: TrainConfig) -> RunResult:
    """The result of a call whose --epochs asks for no more epochs than the run has: nothing is written."""
    if ckpt is None:
        return RunResult("train", name, epochs_done=0, best_epoch=0, best_score=0.0, monitor=config.monitor,
                         best_bleu4=0.0, checkpoint="", best_checkpoint="",
                         stop_reason=nothing_to_train(0, config.epochs), seconds=0.0)
    state = ckpt.state
    return RunResult("train", name, epochs_done=state.epoch, best_epoch=state.best_epoch,
                     best_score=float(state.best_score), monitor=config.monitor, best_bleu4=float(state.best_bleu4),
                     checkpoint=files.checkpoint, best_checkpoint=files.best,
                     stop_reason=nothing_to_train(state.epoch, config.epochs), seconds=0.0)


def preflight(config: TrainConfig) -> str | None:
    """Check what can be checked before anything is read or written (a safe ``--run-name``; with
    ``--tensorboard``, the package) and return the prepared data to train on: ``--data-name``; when resuming
    a named run without it, the data its saved configuration names (so ``--resume --run-name X``
    finds it among several data sets).

    Raises:
        InputError: an unsafe run name.
        TensorBoardMissing: ``--tensorboard`` without the tensorboard package.
    """
    preflight_checks(config.run_name, config.tensorboard)
    if config.data_name is None and config.resume and config.run_name:
        saved = saved_data_name(config_file(config.output_folder, config.run_name))
        return saved if saved in prepared_names(config.data_folder) else None
    return config.data_name


def run_named(config: TrainConfig, prepared: PreparedData) -> TrainConfig:
    """``config`` with its run's name: ``--run-name``, else the prepared data's name (the seed's file names)."""
    return replace(config, run_name=config.run_name or prepared.name)


def model_config_for(ckpt: Checkpoint | None, options: dict, given: frozenset, vocab_size: int) -> ModelConfig:
    """The checkpoint's architecture on resume (a given option that conflicts with it is an error)."""
    if ckpt is None:
        return with_preprocess(ModelConfig(vocab_size=vocab_size, **options))
    saved = ckpt.model_config
    for field in ARCHITECTURE_FIELDS:
        if field in given and options.get(field) != getattr(saved, field):
            flag = "--" + field.replace("_", "-")
            raise CheckpointError(f"{flag} {options.get(field)} conflicts with the checkpoint being resumed "
                                  f"({field} = {getattr(saved, field)}); drop {flag} or start a new run")
    if saved.vocab_size != vocab_size:
        raise CheckpointError(f"the checkpoint's vocabulary ({saved.vocab_size}) differs from the data's "
                              f"({vocab_size}); resume on the data it was trained on")
    return saved


def resumable(path: str) -> Checkpoint:
    """A training checkpoint that ``train`` can continue, checked before anything is built from it."""
    from capcli.store.files import model_from_checkpoint

    ckpt = read_checkpoint(path)
    model_from_checkpoint(ckpt)  # weights that fit the architecture
    ckpt.check_resumable("train")
    return ckpt


def kept_on_resume(config: TrainConfig, ckpt: Checkpoint | None, given: frozenset) -> TrainConfig:
    """A resumed run keeps the --monitor it selects BEST on (runs from before --monitor: bleu4), and
    the --fine-tune-depth it tuned with unless another is given.

    Raises:
        CheckpointError: ``--monitor`` given with another score than the resumed run's.
    """
    if ckpt is None:
        return config
    saved = ckpt.train_config.monitor if ckpt.train_config else "bleu4"
    if "monitor" in given and config.monitor != saved:
        raise CheckpointError(f"--monitor {config.monitor} conflicts with the run being resumed (its BEST is picked "
                              f"on {saved}); drop --monitor or start a new run")
    depth = config.fine_tune_depth if "fine_tune_depth" in given or not ckpt.train_config \
        else ckpt.train_config.fine_tune_depth
    return replace(config, monitor=saved, fine_tune_depth=depth)


def dataset_defaults(prepared: PreparedData, config: TrainConfig, model_options: dict,
                      given: frozenset) -> tuple[TrainConfig, dict]:
    """The shapes data set trains with ``SHAPES_TRAIN_DEFAULTS`` (see config.py) for every option
    not in ``given`` (an encoder after ResNet keeps its own grid); other data sets keep the options
    as they are. The encoder starts from
    ImageNet weights unless told otherwise, except on shapes (synthetic scenes, nothing to download)."""
    shapes = is_shapes(prepared.name)
    if config.pretrained is None:
        config = replace(config, pretrained=config.pretrained_weights is not None or not shapes)
    if not shapes:
        return config, model_options
    defaults = {k: v for k, v in SHAPES_TRAIN_DEFAULTS.items() if k not in given}
    if model_options.get("encoder") not in (None, *RESNET_ENCODERS):  # a grid of its own: not pooled to 8
        defaults.pop("encoded_size", None)
    model_fields = {f.name for f in fields(ModelConfig)}
    config = replace(config, **{k: v for k, v in defaults.items() if k not in model_fields})
    return config, {**model_options, **{k: v for k, v in defaults.items() if k in model_fields}}


def warn_random_encoder(config: TrainConfig, name: str, ckpt: Checkpoint | None, progress: Progress) -> None:
    if ckpt is None and not config.pretrained and not is_shapes(name):
        frozen = "frozen " if not config.fine_tune_encoder else ""
        progress.message(f"warning: --no-pretrained: the {frozen}encoder starts from random weights, so on real "
                         "photos its captions will be poor (drop --no-pretrained to start from ImageNet weights)")
