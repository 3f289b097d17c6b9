"""Building the encoder and decoder from a :class:`~capcli.config.ModelConfig`."""

from __future__ import annotations

from capcli.config import ModelConfig
from capcli.errors import CapcliError
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
