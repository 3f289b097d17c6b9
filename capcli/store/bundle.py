"""Inference bundles (``capcli export``): a checkpoint's model without its run's state.

A bundle is a folder (``BEST_x.bundle`` next to ``BEST_x.pth.tar`` by default) of four files
(``capcli.paths.BUNDLE_FILES``):

- ``model.safetensors``: the encoder's and decoder's weights as named tensors ``encoder.*`` and
  ``decoder.*`` (safetensors holds no code); no optimiser, critic or scaler state;
- ``word_map.json``: word → id, as prep wrote it;
- ``config.json``: ``format`` ("capcli-bundle") and ``version`` (1), ``capcli_version``,
  ``exported_at``, ``stage`` (train or a2c), ``model_config``, ``image_size``, ``max_len``,
  ``data`` (name, folder), ``source`` (the checkpoint it came from: path, bytes, saved_at),
  ``training`` (epochs done and planned, step, best epoch and its scores, the monitor, each
  epoch's validation BLEU-4 and CIDEr-D), ``train_config`` / ``a2c_config`` (the run's options),
  ``tokenization`` and ``weights`` (file, tensor counts, bytes);
- ``README.md``: a model card (``capcli.store.model_card``).

It is written into a staging folder and renamed (``capcli.safeio.atomic_folder``); only a
previous bundle is ever replaced, swapped in one step so that a killed export leaves the old or
the new one at the same path. Sizes in ``config.json`` are checked against ``capcli.limits`` and
names against ``--run-name``'s rule before anything is built. :func:`read_bundle` gives the :class:`Checkpoint` that
``caption``, ``evaluate``, ``arch`` and the dashboard use, every part checked with one line naming
the file at fault; the weights are checked against ``model_config`` where a checkpoint's are
(``capcli.model.captioner``).
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import asdict, dataclass

import torch

from capcli import __version__
from capcli.config import A2CConfig, TrainConfig
from capcli.data.jsonfiles import MAX_DEPTH, read_json, write_json
from capcli.data.vocab import END, PAD, START, UNK
from capcli.errors import CheckpointError, InputError, first_line, shorten
from capcli.paths import BUNDLE_FILES, bundle_file, bundle_folder, bundle_of
from capcli.safeio import atomic_folder, atomic_write, open_regular
from capcli.store.checkpoint import A2CState, Checkpoint, TrainState, read_checkpoint_file
from capcli.store.epochs import EpochRecord, finite_number
from capcli.store.fields import data_ref, model_config_from, options_from, positive_whole, validate_word_map
from capcli.store.model_card import card_text, checkpoint_evaluations
from capcli.store.sidecar import best_scores

BUNDLE_FORMAT = "capcli-bundle"
BUNDLE_VERSION = 1
PARTS = ("encoder", "decoder")
_TRAINING_STATE = ("decoder_optimizer", "encoder_optimizer", "actor_optimizer", "critic_optimizer", "scaler")


@dataclass(frozen=True)
class ExportResult:
    checkpoint: str
    bundle: str
    checkpoint_bytes: int  # the checkpoint file
    bundle_bytes: int  # every file of the bundle
    weights_bytes: int  # the model's tensors
    optimizer_bytes: int  # the tensors of the checkpoint's optimiser and scaler states
    critic_bytes: int  # an A2C checkpoint's critic (training only)
    evaluations: tuple[str, ...]  # evaluation files whose test scores the card shows


def export_bundle(checkpoint_path: str, output: str | None = None) -> ExportResult:
    """Write the inference bundle of the checkpoint at ``checkpoint_path`` to ``output`` (by
    default ``{checkpoint without .pth.tar}.bundle``).

    Raises:
        CheckpointError: the checkpoint does not load, or its weights do not fit its config.
        InputError: ``checkpoint_path`` is already a bundle.
        CapcliError: ``output`` is a link, or something other than a previous bundle.
    """
    from capcli.model.captioner import model_from_weights

    if bundle_of(checkpoint_path) is not None:
        raise InputError(f"{checkpoint_path} is already a bundle; give the checkpoint it came from")
    ckpt = read_checkpoint_file(checkpoint_path)
    # weights that fit the architecture, checked before anything is written
    model_from_weights(ckpt.model_config, ckpt.encoder, ckpt.decoder, ckpt.path)
    target = os.path.normpath(output or bundle_folder(checkpoint_path))
    replaces = _previous_bundle(target)
    weights = {f"{part}.{k}": v.detach().clone().contiguous()  # safetensors refuses shared storage
               for part in PARTS for k, v in getattr(ckpt, part).items()}
    config = bundle_config(ckpt, weights)
    evaluations = checkpoint_evaluations(checkpoint_path)
    with atomic_folder(target, replaces=replaces) as staging:
        _write_weights(bundle_file(staging, "weights"), weights)
        write_json(bundle_file(staging, "word_map"), ckpt.word_map)
        write_json(bundle_file(staging, "config"), config)
        with atomic_write(bundle_file(staging, "card"), text=True) as f:
            f.write(card_text(os.path.basename(target), config, evaluations))
    return ExportResult(checkpoint_path, target, os.path.getsize(checkpoint_path),
                        sum(os.path.getsize(bundle_file(target, role)) for role in BUNDLE_FILES),
                        sum(v.nbytes for v in weights.values()),
                        sum(_tensor_bytes(getattr(ckpt, key)) for key in _TRAINING_STATE),
                        _tensor_bytes(ckpt.critic), tuple(e["file"] for e in evaluations))


def _tensor_bytes(value: object) -> int:
    """The bytes of every tensor in a (nested) state dict."""
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _previous_bundle(target: str) -> bool:
    """Whether ``target`` holds a previous bundle (to be replaced); False when nothing is there.

    Raises:
        CheckpointError: a link, a file, or a folder that is not (only) a capcli bundle.
    """
    if os.path.islink(target):
        raise CheckpointError(f"{target} is a symbolic link; capcli export does not write through links "
                              "(remove it or choose another --output)")
    if not os.path.lexists(target):
        return False
    refuse = f"{target} exists and is not a capcli bundle; choose another --output (export replaces only a bundle)"
    if not os.path.isdir(target):
        raise CheckpointError(refuse)
    entries = os.listdir(target)
    regular = all(stat.S_ISREG(os.lstat(os.path.join(target, e)).st_mode) for e in entries)
    if not regular or not set(entries) <= set(BUNDLE_FILES.values()) or BUNDLE_FILES["config"] not in entries:
        raise CheckpointError(refuse)
    try:
        config = read_json(bundle_file(target, "config"), CheckpointError, MAX_DEPTH)
    except CheckpointError:
        config = None  # a torn previous bundle is still ours to replace when it says so
    if not isinstance(config, dict) or config.get("format") != BUNDLE_FORMAT:
        raise CheckpointError(refuse)
    return True


def _write_weights(path: str, weights: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    data = save(weights, metadata={"format": BUNDLE_FORMAT})
    with atomic_write(path, sync=True) as f:
        f.write(data)


def _validation(ckpt: Checkpoint) -> list[dict]:
    """Each epoch's validation BLEU-4 and CIDEr-D (None where it was not measured)."""
    return [{"epoch": r.epoch, "bleu4": r.val_bleu4, "cider_d": r.val_cider_d} for r in ckpt.state.epochs]


def bundle_config(ckpt: Checkpoint, weights: dict[str, torch.Tensor]) -> dict:
    """The content of ``config.json`` for ``ckpt`` (see the module docstring)."""
    options = ckpt.a2c_config if ckpt.stage == "a2c" else ckpt.train_config
    word_map = ckpt.word_map
    return {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "capcli_version": __version__,
        "exported_at": time.time(), "stage": ckpt.stage, "model_config": asdict(ckpt.model_config),
        "image_size": ckpt.image_size, "max_len": ckpt.max_len, "data": asdict(ckpt.data),
        "source": {"checkpoint": os.path.abspath(ckpt.path), "checkpoint_bytes": os.path.getsize(ckpt.path),
                   "saved_at": ckpt.saved_at},
        "training": {"epochs_done": ckpt.state.epoch, "epochs_total": options.epochs if options else None,
                     "step": ckpt.state.step, **best_scores(ckpt), "validation": _validation(ckpt)},
        "train_config": asdict(ckpt.train_config) if ckpt.train_config else None,
        "a2c_config": asdict(ckpt.a2c_config) if ckpt.a2c_config else None,
        "tokenization": {
            "words": "lower-cased words, split as the COCO caption evaluation's PTB tokenizer splits them "
                     "(capcli.data.vocab.coco_tokenize); a word outside word_map.json is <unk>",
            "special": {t: word_map.get(t) for t in (PAD, UNK, START, END)}, "vocab_size": len(word_map),
            "caption": "<start> w1 ... wn <end>, n <= max_len; decoding never emits <pad>, <start> or <unk>"},
        "weights": {"file": BUNDLE_FILES["weights"], "bytes": sum(v.nbytes for v in weights.values()),
                    "tensors": {part: len(getattr(ckpt, part)) for part in PARTS},
                    "values": {part: sum(v.numel() for k, v in weights.items() if k.startswith(f"{part}."))
                                   for part in PARTS}},
    }


# --- reading ---------------------------------------------------------------------------------


def read_bundle(path: str) -> Checkpoint:
    """The model in the bundle ``path`` names (its folder or its ``model.safetensors``), as a
    :class:`Checkpoint` without run state (``source`` set: it never resumes).

    Raises:
        CheckpointError: a missing, torn or hand-edited file of the bundle, naming it.
    """
    folder = bundle_of(path) or path
    config_file = bundle_file(folder, "config")
    if not os.path.lexists(config_file):
        raise CheckpointError(f"{folder}: not a capcli checkpoint or bundle (a folder without "
                              f"{BUNDLE_FILES['config']})")
    config = read_json(config_file, CheckpointError, MAX_DEPTH)
    if not isinstance(config, dict) or config.get("format") != BUNDLE_FORMAT:
        raise CheckpointError(f"{config_file}: not a capcli bundle's config (no format marker {BUNDLE_FORMAT!r})")
    if not isinstance(config.get("version"), int) or config["version"] > BUNDLE_VERSION:
        raise CheckpointError(f"{config_file}: bundle version {shorten(repr(config.get('version')))}; "
                              "written by a newer capcli (upgrade capcli)")
    for key in ("model_config", "image_size", "max_len", "stage"):
        if key not in config:
            raise CheckpointError(f"{config_file}: no {key} (a torn or hand-edited bundle)")
    model_config = model_config_from(config_file, config["model_config"])
    word_map_file = bundle_file(folder, "word_map")
    word_map = read_json(word_map_file, CheckpointError, MAX_DEPTH)
    validate_word_map(word_map_file, word_map, model_config.vocab_size)
    sizes = {k: positive_whole(config_file, k, config[k]) for k in ("image_size", "max_len")}
    if config["stage"] not in ("train", "a2c"):
        raise CheckpointError(f"{config_file}: stage is {shorten(repr(config['stage']))}, expected train or a2c")
    encoder, decoder = _read_weights(bundle_file(folder, "weights"))
    data = data_ref(config_file, config.get("data"))
    source = config.get("source") if isinstance(config.get("source"), dict) else {}
    return Checkpoint(config["stage"], model_config, word_map, encoder, decoder, _state(config), **sizes, data=data,
                      train_config=options_from(TrainConfig, config.get("train_config"), config_file),
                      a2c_config=options_from(A2CConfig, config.get("a2c_config"), config_file),
                      path=folder, source=str(source.get("checkpoint") or folder))


def _read_weights(path: str) -> tuple[dict, dict]:
    """The encoder's and decoder's state dicts in ``model.safetensors``."""
    from safetensors.torch import load

    try:
        with open_regular(path, error=CheckpointError) as f:  # a FIFO would block for ever
            tensors = load(f.read())
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file (a torn bundle: export it again)") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: {exc.strerror or first_line(exc)}") from None
    except Exception as exc:  # safetensors' parse errors: torn or edited bytes
        raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(exc, 80)}); "
                              "a torn or hand-edited bundle: export it again") from None
    parts: dict[str, dict] = {part: {} for part in PARTS}
    for name, tensor in tensors.items():
        part, _, key = name.partition(".")
        if part not in parts or not key:
            raise CheckpointError(f"{path}: tensor {shorten(name)} is neither encoder.* nor decoder.* "
                                  "(a hand-edited bundle)")
        parts[part][key] = tensor
    return parts["encoder"], parts["decoder"]


def _state(config: dict) -> TrainState | A2CState:
    """The run figures a bundle keeps (epochs, best epoch and scores) as a run state."""
    training = config.get("training") if isinstance(config.get("training"), dict) else {}
    counts = {k: v for k in ("epoch", "step", "best_epoch")
              if isinstance(v := training.get("epochs_done" if k == "epoch" else k), int) and v >= 0}
    epochs = [EpochRecord.from_dict({"epoch": v.get("epoch"), "val_bleu4": v.get("bleu4"),
                                     "val_cider_d": v.get("cider_d")})
              for v in training.get("validation") or [] if isinstance(v, dict)]
    epochs = [r for r in epochs if r is not None]
    score = finite_number(training.get("best_score"))
    if config.get("stage") == "a2c":
        return A2CState(**counts, epochs=epochs, **({"best_score": score} if score is not None else {}))
    return TrainState(**counts, epochs=epochs, best_bleu4=finite_number(training.get("best_bleu4")) or 0.0,
                      best_score=score or 0.0)
