"""The one table of sizes capcli accepts, wherever they come from.

A size read from a checkpoint, a bundle's config or a sidecar is checked here before anything is
built from it (a hand-set ``decoder_dim`` of 10^9 would otherwise end in a storage-size error, a
``max_len`` of 10^6 run for minutes); an option with the same meaning takes its range from here
too (:func:`int_range`), so ``caption`` and ``evaluate`` cap the beam alike. No torch import:
``capcli --help`` reads this table.
"""

from __future__ import annotations

from dataclasses import dataclass

from capcli.errors import CapcliError, CheckpointError
from capcli.text import visible


@dataclass(frozen=True)
class Limit:
    minimum: int
    maximum: int
    what: str


LIMITS = {
    "beam": Limit(1, 100, "beam width"),
    "max_len": Limit(1, 1000, "longest caption, in words"),
    "image_size": Limit(16, 2048, "image side, in pixels"),
    "embed_dim": Limit(1, 8192, "word embedding size"),
    "attention_dim": Limit(1, 8192, "attention size"),
    "decoder_dim": Limit(1, 8192, "LSTM hidden size"),
    "encoded_size": Limit(1, 64, "encoded image grid side"),
    "vocab_size": Limit(1, 500_000, "vocabulary size"),
    "batch_size": Limit(1, 65_536, "batch size"),
}


def int_range(key: str, minimum: int | None = None):
    """The ``click.IntRange`` of the option with ``key``'s meaning (``minimum``: a lower one, such
    as 0 where 0 means "the default")."""
    import click

    limit = LIMITS[key]
    return click.IntRange(limit.minimum if minimum is None else minimum, limit.maximum)


def limit_problem(key: str, value: int) -> str | None:
    """Why ``value`` cannot be ``key`` (None when it can)."""
    limit = LIMITS[key]
    if limit.minimum <= value <= limit.maximum:
        return None
    return f"{key} {value} is outside {limit.minimum}..{limit.maximum} ({limit.what})"


def check_limit(path: str, key: str, value: int, error: type[CapcliError] = CheckpointError) -> int:
    """``value`` if ``key`` accepts it, else ``error`` naming the file ``path`` it was read from."""
    problem = limit_problem(key, value)
    if problem:
        raise error(f"{visible(path)}: {problem}; a hand-edited or foreign file")
    return value
