"""Building the encoder and decoder from a :class:`~capcli.config.ModelConfig` or a checkpoint.

A checkpoint's contents are checked before anything is built from them, so a hand-edited or
foreign file gives one sentence naming the field at fault, never a PyTorch error.
"""

from __future__ import annotations

import dataclasses

import torch

from capcli.config import ModelConfig
from capcli.data.vocab import END, PAD, START
from capcli.errors import CapcliError, CheckpointError, shorten
from capcli.model.decoder import AttentionDecoder, PlainDecoder
from capcli.model.encoder import Encoder

DECODERS = {"attention": AttentionDecoder, "plain": PlainDecoder}
_FIELD_TYPES = {"int": int, "str": str, "float": (int, float), "bool": bool}  # ModelConfig's annotations
_POSITIVE = ("vocab_size", "embed_dim", "attention_dim", "decoder_dim", "encoded_size")


def build_model(config: ModelConfig) -> tuple[Encoder, AttentionDecoder | PlainDecoder]:
    encoder = Encoder(config.encoder, config.encoded_size)
    if config.decoder not in DECODERS:
        raise CapcliError(f"unknown decoder {config.decoder!r} (choose from {', '.join(DECODERS)})")
    decoder = DECODERS[config.decoder](
        vocab_size=config.vocab_size, encoder_dim=encoder.dim, embed_dim=config.embed_dim,
        attention_dim=config.attention_dim, decoder_dim=config.decoder_dim, dropout=config.dropout,
        one_hot=config.one_hot)
    return encoder, decoder


def model_from_checkpoint(path: str, ckpt: dict) -> tuple[ModelConfig, Encoder, AttentionDecoder | PlainDecoder]:
    """The model saved in ``ckpt`` (loaded from ``path``), on the CPU.

    Raises:
        CheckpointError: not a captioning model checkpoint, a malformed ``model_config`` or word
            map, or weights that do not fit its architecture.
    """
    missing = [k for k in ("model_config", "encoder", "decoder", "word_map") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a captioning model checkpoint (missing {', '.join(missing)})")
    config = _model_config(path, ckpt["model_config"])
    check_word_map(path, ckpt["word_map"], config.vocab_size)
    for key in ("image_size", "max_len"):
        value = ckpt.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CheckpointError(f"{path}: {key} is {shorten(repr(value))}, not a positive whole number")
    try:
        with torch.device("meta"):  # shapes only, no memory: a hand-edited size is caught before it is allocated
            shapes = build_model(config)
    except CapcliError as exc:
        raise CheckpointError(f"{path}: model_config: {exc}") from None
    for part, module in zip(("encoder", "decoder"), shapes):
        _check_weights(path, part, module, ckpt[part])
    encoder, decoder = build_model(config)
    _load_weights(path, "encoder", encoder, ckpt["encoder"])
    _load_weights(path, "decoder", decoder, ckpt["decoder"])
    return config, encoder, decoder



def _of_type(value: object, annotation: str) -> bool:
    expected = _FIELD_TYPES.get(annotation)
    if expected is None:
        return True
    return isinstance(value, expected) and (expected is bool or not isinstance(value, bool))


def _model_config(path: str, raw: object) -> ModelConfig:
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
    if not 0 <= raw.get("dropout", 0.0) < 1:
        raise CheckpointError(f"{path}: model_config field dropout is {raw['dropout']}, expected 0 <= dropout < 1")
    return ModelConfig(**raw)


def check_word_map(path: str, word_map: object, vocab_size: int) -> None:
    """A mapping of words to ids below ``vocab_size`` holding ``<start>``, ``<end>`` and ``<pad>``.

    Raises:
        CheckpointError: naming the first problem.
    """
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


def _check_weights(path: str, part: str, module: torch.nn.Module, state: object) -> None:
    """``state``'s names and shapes are those of ``module``'s weights."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: the {part} weights are a {type(state).__name__}, not a state dict")
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [shorten(k) for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{path}: the {part} weights do not fit model_config ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]})")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or value.shape != expected[key].shape:
            got = f"has shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) \
                else f"is a {type(value).__name__}"
            raise CheckpointError(f"{path}: the {part} weight {key} {got}, which does not fit model_config "
                                  f"(it needs shape {tuple(expected[key].shape)})")


def _load_weights(path: str, part: str, module: torch.nn.Module, state: dict) -> None:
    """Load ``state`` (checked by :func:`_check_weights`) into ``module``."""
    try:
        module.load_state_dict(state)
    except RuntimeError:
        raise CheckpointError(f"{path}: the {part} weights could not be loaded into the model "
                              "model_config describes") from None
