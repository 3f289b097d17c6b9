"""Reading the fields of a checkpoint or a bundle's config: each checked for type and range, a
bad one named in one line (:class:`~capcli.errors.CheckpointError`) before anything is built from it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from capcli.config import ModelConfig, Preprocess, encoder_problem, name_problem
from capcli.data.vocab import END, PAD, START
from capcli.errors import CheckpointError, shorten
from capcli.limits import LIMITS, check_limit
from capcli.store.epochs import finite_number
from capcli.text import visible


@dataclass(frozen=True)
class DataRef:
    """The prepared data a model was trained on."""

    folder: str | None = None
    name: str | None = None


def options_from(cls: type, raw: object, path: str = ""):
    """A saved options dict as its config class, fields it no longer has left out, its batch size
    within :data:`capcli.limits.LIMITS` (a resumed run uses it).

    Raises:
        CheckpointError: a batch size that is not a whole number within its limit.
    """
    if not isinstance(raw, dict):
        return None
    known = {f.name for f in dataclasses.fields(cls)}
    if "batch_size" in raw:
        positive_whole(path, "batch_size", raw["batch_size"])
    if "name" in raw and "data_name" not in raw:  # the data set's field before 0.2
        raw = {**raw, "data_name": raw["name"]}
    return cls(**{k: v for k, v in raw.items() if k in known})


def safe_name(path: str, key: str, value: object) -> str | None:
    """A run or data set name read from a file, checked as ``--run-name`` is: it becomes part of the
    names of files capcli writes, so no path separator, ``..`` or control character (None: absent).

    Raises:
        CheckpointError: a name that is not safe.
    """
    if not isinstance(value, str) or value == "":
        return None
    if name_problem(value) is not None:
        raise CheckpointError(f"{path}: {key} {visible(shorten(repr(value)))} is not a safe name (letters, digits, "
                              "'-', '_' and '.', not starting with '.'); a hand-edited or foreign file")
    return value


def data_ref(path: str, raw: object) -> DataRef:
    """The ``data`` field (folder, name) of a checkpoint or bundle, its name checked (:func:`safe_name`)."""
    data = raw if isinstance(raw, dict) else {}
    folder = data.get("folder") if isinstance(data.get("folder"), str) else None
    return DataRef(folder, safe_name(path, "data name", data.get("name")))


def positive_whole(path: str, key: str, value: object) -> int:
    """``value``, a whole number within :data:`capcli.limits.LIMITS` when ``key`` is there."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CheckpointError(f"{path}: {key} is {shorten(repr(value))}, not a positive whole number")
    return check_limit(path, key, value) if key in LIMITS else value


_FIELD_TYPES = {"int": int, "str": str, "float": (int, float), "bool": bool}  # ModelConfig's annotations
_POSITIVE = ("vocab_size", "embed_dim", "attention_dim", "decoder_dim", "encoded_size")


def _of_type(value: object, annotation: str) -> bool:
    expected = _FIELD_TYPES.get(annotation)
    if expected is None:
        return True
    return isinstance(value, expected) and (expected is bool or not isinstance(value, bool))


def model_config_from(path: str, raw: object) -> ModelConfig:
    """``raw`` as a :class:`ModelConfig`, every field of the right type and range."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: model_config is a {type(raw).__name__}, not a mapping of fields")
    fields = {f.name: f.type for f in dataclasses.fields(ModelConfig)}
    unknown = [shorten(k) for k in raw if k not in fields]
    if unknown:
        raise CheckpointError(f"{path}: model_config has unknown field(s) {', '.join(unknown)} "
                              "(written by a newer capcli, or edited)")
    if "vocab_size" not in raw:
        raise CheckpointError(f"{path}: model_config has no vocab_size")
    for name, value in raw.items():
        if not _of_type(value, fields[name]):
            raise CheckpointError(f"{path}: model_config field {name} is {type(value).__name__} "
                                  f"{shorten(repr(value))}, expected {fields[name]}")
        if name in _POSITIVE and value < 1:
            raise CheckpointError(f"{path}: model_config field {name} is {value}, expected a positive number")
        if name in LIMITS:  # checked before anything is built from it (10^9: a storage-size error)
            check_limit(path, name, value)
    if not 0 <= raw.get("dropout", 0.0) < 1:
        raise CheckpointError(f"{path}: model_config field dropout is {raw['dropout']}, expected 0 <= dropout < 1")
    problem = encoder_problem(raw.get("encoder", ModelConfig.encoder))
    if problem:
        raise CheckpointError(f"{path}: model_config: {problem}")
    return ModelConfig(**{**raw, "preprocess": preprocess_from(path, raw.get("preprocess"))})


def preprocess_from(path: str, raw: object) -> Preprocess | None:
    """The saved input preparation of an encoder (None: a ResNet's, or a model from before it was saved)."""
    if raw is None:
        return None
    what = f"{path}: model_config field preprocess"
    if not isinstance(raw, dict) or set(raw) != {f.name for f in dataclasses.fields(Preprocess)}:
        raise CheckpointError(f"{what} is not a mapping of size, resize, mean, std and interpolation")
    sizes_ok = all(isinstance(raw[k], int) and not isinstance(raw[k], bool) and 16 <= raw[k] <= 4096
                   for k in ("size", "resize")) and raw["size"] <= raw["resize"]
    triples_ok = all(isinstance(raw[k], (list, tuple)) and len(raw[k]) == 3 and
                     all(finite_number(x) is not None for x in raw[k]) for k in ("mean", "std"))
    if not sizes_ok or not triples_ok or min(raw["std"]) <= 0 or raw["interpolation"] not in ("bilinear", "bicubic"):
        raise CheckpointError(f"{what} is out of range: {shorten(repr(raw))}")
    return Preprocess(raw["size"], raw["resize"], tuple(map(float, raw["mean"])), tuple(map(float, raw["std"])),
                      raw["interpolation"])


def validate_word_map(path: str, word_map: object, vocab_size: int) -> None:
    """A mapping of words to ids below ``vocab_size`` holding ``<start>``, ``<end>`` and ``<pad>``."""
    if not isinstance(word_map, dict) or not word_map:
        raise CheckpointError(f"{path}: the word map is not a mapping of words to ids")
    for token in (START, END, PAD):
        if token not in word_map:
            raise CheckpointError(f"{path}: word map has no {token} (a hand-edited or foreign checkpoint)")
    for word, index in word_map.items():
        if not isinstance(word, str) or not isinstance(index, int) or isinstance(index, bool) \
                or not 0 <= index < vocab_size:
            raise CheckpointError(f"{path}: word map entry {shorten(repr(word))}: {shorten(repr(index))} is not "
                                  f"a word with an id below vocab_size {vocab_size}")
