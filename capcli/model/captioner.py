"""Building the encoder and decoder from a :class:`~capcli.config.ModelConfig`, empty or with saved
weights.

Saved weights are checked against the architecture on the meta device before anything is
allocated, so a hand-edited or foreign file gives one sentence naming the weight at fault, never a
PyTorch error (the file's other fields are checked where it is read, in ``capcli.store``).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from capcli.config import ModelConfig, Preprocess, encoder_problem
from capcli.errors import CapcliError, CheckpointError, shorten
from capcli.model import backbones, clip
from capcli.model.decoder import AttentionDecoder, PlainDecoder
from capcli.model.encoder import ENCODER_DIMS, Encoder
from capcli.model.grid import GridEncoder

DECODERS = {"attention": AttentionDecoder, "plain": PlainDecoder}


def preprocess_for(encoder: str) -> Preprocess | None:
    """The input encoder ``encoder``'s weights expect (None: a ResNet takes the prepared images)."""
    if encoder in ENCODER_DIMS:
        return None
    return clip.clip_preprocess(encoder) if clip.is_clip(encoder) else backbones.torchvision_preprocess(encoder)


def with_preprocess(config: ModelConfig) -> ModelConfig:
    """``config`` with its encoder's input recorded (a new model's; a saved one keeps its own)."""
    return config if config.preprocess is not None else replace(config, preprocess=preprocess_for(config.encoder))


def build_encoder(config: ModelConfig) -> Encoder | GridEncoder:
    """The encoder ``config`` names: a ResNet, a torchvision model or a CLIP tower, as a feature grid."""
    problem = encoder_problem(config.encoder)
    if problem:
        raise CapcliError(problem)
    if config.encoder in ENCODER_DIMS:
        return Encoder(config.encoder, config.encoded_size)
    build = clip.build_backbone if clip.is_clip(config.encoder) else backbones.build_backbone
    return GridEncoder(config.encoder, build(config.encoder), with_preprocess(config).preprocess, config.encoded_size)


def build_model(config: ModelConfig) -> tuple[Encoder | GridEncoder, AttentionDecoder | PlainDecoder]:
    encoder = build_encoder(config)
    if config.decoder not in DECODERS:
        raise CapcliError(f"unknown decoder {config.decoder!r} (choose from {', '.join(DECODERS)})")
    decoder = DECODERS[config.decoder](
        vocab_size=config.vocab_size, encoder_dim=encoder.dim, embed_dim=config.embed_dim,
        attention_dim=config.attention_dim, decoder_dim=config.decoder_dim, dropout=config.dropout,
        one_hot=config.one_hot)
    return encoder, decoder


def model_from_weights(config: ModelConfig, encoder_state: object, decoder_state: object,
                       path: str) -> tuple[Encoder, AttentionDecoder | PlainDecoder]:
    """The model ``config`` describes with the saved weights loaded, on the CPU (``path``: the file
    they came from, for messages).

    Raises:
        CheckpointError: an architecture that cannot be built, or weights that do not fit it.
    """
    try:
        with torch.device("meta"):  # shapes only, no memory: a hand-edited size is caught before it is allocated
            shapes = build_model(config)
    except CapcliError as exc:
        raise CheckpointError(f"{path}: model_config: {exc}") from None
    weights = (encoder_state, decoder_state)
    for part, module, state in zip(("encoder", "decoder"), shapes, weights):
        _check_weights(path, part, module, state)
    encoder, decoder = build_model(config)
    for part, module, state in zip(("encoder", "decoder"), (encoder, decoder), weights):
        _load_weights(path, part, module, state)
    return encoder, decoder


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
