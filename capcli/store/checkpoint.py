"""The checkpoint: a typed record of a run (:class:`Checkpoint`), and the only place that calls
``torch.save`` / ``torch.load``.

On disk a checkpoint is one flat dict of state dicts and plain Python data (no pickled classes,
numpy scalars or paths) with a format marker and version, written to a fresh temporary file,
fsynced and renamed (``capcli.safeio``), and always read with ``weights_only=True`` so that a
checkpoint file can never run code. A file that does not load gets one sentence of capcli's own
(``capcli.store.load_failure``); a field that is missing or of the wrong type gets one naming it.

Format version 2: ``stage`` (train or a2c), ``model_config``, ``train_config``, ``a2c_config``,
``word_map``, ``data`` (folder, name), ``image_size``, ``max_len``, ``run`` (the run's name),
the run state's fields (:class:`TrainState` / :class:`A2CState`) with ``epochs`` (one dict per
epoch, :class:`~capcli.store.epochs.EpochRecord`), ``encoder`` and ``decoder`` weights, the
optimiser, critic and scaler state dicts, and ``saved_at``. Version 1 (capcli 0.1) named the stage
``kind`` and kept the epochs as lists (``bleu_history``, ``history``); it is read into version 2's
shape.

``capcli.store.files`` saves a checkpoint with its metadata sidecar and reads a checkpoint or,
in its place, an inference bundle.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import asdict, dataclass, field

import torch

from capcli.config import A2CConfig, ModelConfig, TrainConfig
from capcli.errors import CheckpointError, os_error_message, shorten
from capcli.safeio import atomic_write, open_regular, restore_previous
from capcli.store.epochs import EpochRecord, records_from_legacy
from capcli.store.fields import (
    DataRef,
    data_ref,
    model_config_from,
    options_from,
    positive_whole,
    safe_name,
    validate_word_map,
)
from capcli.store.load_failure import load_failure
from capcli.text import visible

FORMAT = "capcli-checkpoint"
VERSION = 2


class _KeepWriteError:
    """The file ``torch.save`` writes through. PyTorch's zip writer turns a failed write (a full
    disk) into an opaque ``RuntimeError`` ("enforce fail ... unexpected pos"); the first
    ``OSError`` is kept here so that the user is told what happened."""

    def __init__(self, file) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.file.flush()


def write_checkpoint(path: str, checkpoint: Checkpoint) -> None:
    """Atomically write ``checkpoint`` to ``path`` (without its sidecar: ``store.files.save_checkpoint``).

    Raises:
        OSError: the write failed (a full disk); ``path`` keeps its previous content.
    """
    with atomic_write(path, sync=True) as f:
        out = _KeepWriteError(f)
        try:
            torch.save({"format": FORMAT, "version": VERSION, **checkpoint.to_dict()}, out)
        except RuntimeError:
            if out.error is not None:
                raise out.error from None
            raise


def read_checkpoint_file(path: str) -> Checkpoint:
    """Read the capcli checkpoint file ``path`` safely, every field checked (see
    :meth:`Checkpoint.from_dict`); a replacement cut short is restored first.

    Raises:
        CheckpointError: missing file, unsafe or corrupt content, not a capcli checkpoint, or a
            missing or malformed field.
    """
    restore_previous(path)
    return Checkpoint.from_dict(path, load_checkpoint(path))


def load_checkpoint(path: str) -> dict:
    """Read a capcli checkpoint file safely, as the dict it holds (its format marker checked).

    Raises:
        CheckpointError: missing file, unsafe or corrupt content, or not a capcli checkpoint.
    """
    try:
        file = open_regular(path, error=CheckpointError)  # a FIFO would block torch.load for ever
    except FileNotFoundError:
        raise CheckpointError(f"{visible(path)}: no such checkpoint") from None
    except OSError as exc:
        raise CheckpointError(os_error_message(_with_filename(exc, path))) from None
    try:
        with file, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols on its way to failing
            data = torch.load(file, map_location="cpu", weights_only=True)
    except OSError as exc:  # unreadable (permissions), not unparsable
        raise CheckpointError(os_error_message(_with_filename(exc, path))) from None
    except Exception as exc:  # the unpickler's refusal or a parse failure: many types, long texts
        raise CheckpointError(f"{path}: {load_failure(path, exc)}") from None
    _check_format(path, data)
    return data


def _with_filename(exc: OSError, path: str) -> OSError:
    return exc if exc.filename is not None else OSError(exc.errno, exc.strerror or str(exc), path)


def _check_format(path: str, data: object) -> None:
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a capcli checkpoint (it holds a {type(data).__name__}, "
                              "not capcli's dictionary)")
    if data.get("format") != FORMAT:
        if data and all(isinstance(v, torch.Tensor) for v in data.values()):
            what = "a bare state dict"
        else:
            what = f"keys {', '.join(shorten(k) for k in list(data)[:5])}" if data else "an empty dictionary"
        raise CheckpointError(f"{path}: not a capcli checkpoint (a PyTorch file without capcli's format "
                              f"marker: {what})")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{path}: not a capcli checkpoint (format version {shorten(repr(version))})")
    if version > VERSION:
        raise CheckpointError(f"{path}: written by a newer capcli (format {version}); upgrade capcli")


# --- the typed checkpoint ----------------------------------------------------------------------


@dataclass
class RunState:
    """Where a run is, as train and a2c both count it, and its epochs so far."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps in all
    epoch_step: int = 0  # steps of the epoch in progress (a resumed run skips them)
    best_epoch: int = 0
    epochs: list[EpochRecord] = field(default_factory=list)  # one per completed epoch


@dataclass
class TrainState(RunState):
    best_bleu4: float = 0.0  # the validation BLEU-4 of the best epoch
    since_improvement: int = 0
    best_score: float = 0.0  # the best epoch's score on the run's --monitor (BLEU-4 before it existed)


@dataclass
class A2CState(RunState):
    best_score: float = -math.inf


_MODEL_FIELDS = ("model_config", "encoder", "decoder", "word_map")
_STATE_DICTS = ("decoder_optimizer", "encoder_optimizer", "critic", "actor_optimizer", "critic_optimizer", "scaler")
# what resuming each stage needs besides the model (a2c keeps default counts when they are missing)
_SINCE_MONITOR = ("best_score",)  # older checkpoints lack it and still resume
_RESUME_NEEDS = {"train": (*(f.name for f in dataclasses.fields(TrainState) if f.name not in _SINCE_MONITOR),
                           "decoder_optimizer"),
                 "a2c": ("critic", "actor_optimizer", "critic_optimizer")}


@dataclass
class Checkpoint:
    """One saved run: the model, the data it knows, the run's state and the optimisers' states."""

    stage: str  # "train" or "a2c"
    model_config: ModelConfig
    word_map: dict[str, int]
    encoder: dict  # weights (state dicts)
    decoder: dict
    state: TrainState | A2CState
    image_size: int = 256
    max_len: int = 50
    data: DataRef = DataRef()
    run: str | None = None  # the run's name (--run-name; checkpoints from before it: the data's name)
    train_config: TrainConfig | None = None  # of the training run (an A2C checkpoint keeps its model's)
    a2c_config: A2CConfig | None = None
    decoder_optimizer: dict | None = None  # train
    encoder_optimizer: dict | None = None  # train, with a trained encoder
    critic: dict | None = None  # a2c
    actor_optimizer: dict | None = None
    critic_optimizer: dict | None = None
    scaler: dict | None = None
    saved_at: float | None = None
    # not saved: where it was read from, and what it lacks for resuming (see check_resumable)
    path: str = ""
    source: str = ""  # read from a bundle: the checkpoint it was exported from
    absent: frozenset[str] = frozenset()
    malformed: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """The flat layout of the format's current version."""
        return {
            "stage": self.stage, "model_config": asdict(self.model_config),
            "train_config": asdict(self.train_config) if self.train_config else None,
            "a2c_config": asdict(self.a2c_config) if self.a2c_config else None,
            "word_map": dict(self.word_map), "data": asdict(self.data), "image_size": self.image_size,
            "max_len": self.max_len, "run": self.run,
            **{f.name: getattr(self.state, f.name) for f in dataclasses.fields(self.state) if f.name != "epochs"},
            "epochs": [r.as_dict() for r in self.state.epochs], "encoder": self.encoder,
            "decoder": self.decoder,
            **{k: getattr(self, k) for k in _STATE_DICTS}, "saved_at": self.saved_at,
        }

    @classmethod
    def from_dict(cls, path: str, raw: dict) -> Checkpoint:
        """The checkpoint ``raw`` (loaded from ``path``), its model fields checked. A missing or
        malformed run-state field is only recorded: the model still captions, and
        :meth:`check_resumable` names it when a run tries to continue from it.

        Raises:
            CheckpointError: not a model checkpoint, or a malformed ``model_config``, word map,
                ``image_size`` or ``max_len``, naming the field.
        """
        missing = [k for k in _MODEL_FIELDS if k not in raw]
        if missing:
            raise CheckpointError(f"{path}: not a captioning model checkpoint (missing {', '.join(missing)})")
        config = model_config_from(path, raw["model_config"])
        validate_word_map(path, raw["word_map"], config.vocab_size)
        sizes = {key: positive_whole(path, key, raw.get(key, default))
                 for key, default in (("image_size", 256), ("max_len", 50))}
        stage = raw.get("stage", raw.get("kind", "train"))  # "kind" in format version 1
        if stage not in ("train", "a2c"):
            raise CheckpointError(f"{path}: stage is {shorten(repr(stage))}, expected train or a2c")
        if "epochs" not in raw and (legacy := records_from_legacy(stage, raw)) is not None:
            raw = {**raw, "epochs": [r.as_dict() for r in legacy]}  # written before EpochRecord
        state, absent, malformed = _run_state(A2CState if stage == "a2c" else TrainState, raw)
        if isinstance(state, TrainState) and "best_score" in absent:
            state.best_score = state.best_bleu4  # runs from before --monitor selected on BLEU-4
        state_dicts = {}
        for key in _STATE_DICTS:
            if isinstance(raw.get(key), dict):
                state_dicts[key] = raw[key]
            elif raw.get(key) is None:
                absent.add(key)
            else:
                malformed.append(f"{key} is not a state dict")
        return cls(stage, config, dict(raw["word_map"]), raw["encoder"], raw["decoder"], state, **sizes,
                   data=data_ref(path, raw.get("data")), run=safe_name(path, "run", raw.get("run")),
                   train_config=options_from(TrainConfig, raw.get("train_config"), path),
                   a2c_config=options_from(A2CConfig, raw.get("a2c_config"), path), **state_dicts,
                   saved_at=raw.get("saved_at"), path=path, absent=frozenset(absent), malformed=tuple(malformed))

    def check_resumable(self, stage: str) -> None:
        """Raise unless ``capcli {stage} --resume`` can continue from this checkpoint.

        Raises:
            CheckpointError: another stage's checkpoint, or one naming what it lacks.
        """
        if self.source:
            raise CheckpointError(f"{self.path}: an exported bundle holds no optimiser state and cannot be resumed; "
                                  f"resume from the checkpoint it came from ({self.source})")
        if stage == "train" and self.stage != "train":
            raise CheckpointError(f"{self.path}: a {self.stage} checkpoint; `capcli train` continues training "
                                  "checkpoints (`capcli a2c --resume` continues A2C runs)")
        missing = [k for k in _RESUME_NEEDS[stage] if k in self.absent]
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + list(self.malformed)
        if stage == "a2c" and not problems and self.stage != "a2c":
            problems = ["not an A2C checkpoint"]
        if problems:
            what = "training" if stage == "train" else "A2C"
            raise CheckpointError(f"{self.path}: cannot resume {what} from it ({'; '.join(problems)})")


_STATE_TYPES = {"int": ((int,), "count"), "float": ((int, float), "number"), "list": ((list,), "list"),
                "dict": ((dict,), "mapping")}


def _run_state(cls: type, raw: dict) -> tuple[RunState, set[str], list[str]]:
    """The run state in ``raw`` (defaults for what is missing), the fields missing, and the wrong ones."""
    values, absent, malformed = {}, set(), []
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            absent.add(f.name)
            continue
        value = raw[f.name]
        types, what = _STATE_TYPES[f.type.split("[")[0]]
        if not isinstance(value, types) or isinstance(value, bool) or (what == "count" and value < 0):
            malformed.append(f"{f.name} is not a {what}")
        elif f.name == "epochs":
            records = [EpochRecord.from_dict(r) for r in value]
            if None in records:
                malformed.append("epochs holds an entry without an epoch number")
            values[f.name] = [r for r in records if r is not None]
        else:
            values[f.name] = value
    return cls(**values), absent, malformed
