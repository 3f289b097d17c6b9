"""Building the encoder and decoder from a :class:`~capcli.config.ModelConfig` or a checkpoint."""

from __future__ import annotations

from capcli.config import ModelConfig
from capcli.errors import CapcliError, CheckpointError
from capcli.model.decoder import AttentionDecoder, PlainDecoder
from capcli.model.encoder import Encoder

DECODERS = {"attention": AttentionDecoder, "plain": PlainDecoder}


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
        CheckpointError: not a captioning model checkpoint, or weights that do not fit its architecture.
    """
    missing = [k for k in ("model_config", "encoder", "decoder", "word_map") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a captioning model checkpoint (missing {', '.join(missing)})")
    try:
        config = ModelConfig(**ckpt["model_config"])
        encoder, decoder = build_model(config)
        encoder.load_state_dict(ckpt["encoder"])
        decoder.load_state_dict(ckpt["decoder"])
    except (TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: the weights do not fit the saved architecture "
                              f"({str(exc).strip().splitlines()[0][:160]})") from None
    return config, encoder, decoder
