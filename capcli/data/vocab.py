"""Tokenising captions, building the word map and encoding captions in the seed's layout.

Word map: ``<pad>`` = 0, words 1..V (most frequent first), then ``<unk>``, ``<start>``,
``<end>``. An encoded caption is ``<start> w… <end> <pad>…`` of length ``max_len + 2``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

PAD, UNK, START, END = "<pad>", "<unk>", "<start>", "<end>"

# Tokens of a raw caption, after lower-casing: numbers with inner points or commas ("3.5", "1,000"),
# words (letters and digits, joined by inner hyphens or apostrophes: "t-shirt", "o'clock"), or any
# other single character.
_TOKEN = re.compile(r"\d+(?:[.,]\d+)+|[^\W_]+(?:[-'][^\W_]+)*|\S")
# Suffixes the Penn Treebank tokenizer splits off a word: "dog's" -> "dog 's", "don't" -> "do n't".
_CLITIC = re.compile(r"(?<=[^\W_])(n't|'s|'re|'ve|'ll|'d|'m)$")
# Tokens the COCO caption evaluation removes after its PTB tokenizer (pycocoevalcap's PUNCTUATIONS:
# quotes, brackets, . ? ! , : ; - -- ...); here every token made only of these characters.
_DROPPED = frozenset(".?!,:;-'\"`()[]{}")
_NORMALISE = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
                            "\u2014": "-", "\u2026": "..."})


def coco_tokenize(text: str) -> list[str]:
    """The tokens of a raw caption as the COCO caption evaluation leaves them, in pure Python.

    The evaluation (pycocoevalcap) runs Stanford's PTB tokenizer with lower-casing and then drops
    the punctuation tokens. This does the same without Java: lower-case; numbers ("3.5", "1,000"),
    hyphenated words and words with an inner apostrophe stay whole; the clitics n't 's 're 've 'll
    'd 'm are split off ("dog's" -> "dog 's"); every other symbol is a token of its own ("$", "%",
    "&"); tokens made only of quotes, brackets or . ? ! , : ; - are dropped, and so are control
    characters (an escape sequence in a caption file never becomes a word). Curly quotes and dashes
    count as their plain forms. Every caption capcli reads from a raw text goes through here, for
    training and as an evaluation reference.

    Example:
        >>> coco_tokenize('A dog\'s "red" ball, (3.5 m) -- well-known!')
        ['a', 'dog', "'s", 'red', 'ball', '3.5', 'm', 'well-known']
    """
    tokens = []
    for token in _TOKEN.findall(text.translate(_NORMALISE).lower()):
        if all(ch in _DROPPED for ch in token) or not token.isprintable():  # punctuation; ESC and other controls
            continue
        clitic = _CLITIC.search(token)
        if clitic:
            tokens.extend((token[:clitic.start()], clitic.group()))
        else:
            tokens.append(token)
    return tokens


def build_word_map(captions: Iterable[Sequence[str]], min_word_freq: int) -> dict[str, int]:
    """Keep words seen at least ``min_word_freq`` times, most frequent first, ties by spelling."""
    counts = Counter(word for caption in captions for word in caption)
    words = sorted((w for w, n in counts.items() if n >= min_word_freq),
                   key=lambda w: (-counts[w], w))
    word_map = {PAD: 0}
    word_map.update({w: i + 1 for i, w in enumerate(words)})
    for token in (UNK, START, END):
        word_map[token] = len(word_map)
    return word_map


def encode(caption: Sequence[str], word_map: dict[str, int], max_len: int) -> list[int]:
    """``<start> w… <end>`` padded with ``<pad>`` to ``max_len + 2`` ids."""
    if len(caption) > max_len:
        raise ValueError(f"caption of {len(caption)} words is longer than max_len={max_len}")
    unk = word_map[UNK]
    ids = [word_map[START]] + [word_map.get(w, unk) for w in caption] + [word_map[END]]
    return ids + [word_map[PAD]] * (max_len + 2 - len(ids))


class Detokenizer:
    """Turns encoded ids back into words; build once per word map (it inverts the map)."""

    def __init__(self, word_map: dict[str, int], keep_special: bool = False) -> None:
        self.words = {i: w for w, i in word_map.items()}
        self.keep_special = keep_special

    def __call__(self, ids: Iterable[int]) -> list[str]:
        """Words up to ``<end>``; ``<start>``/``<pad>`` dropped unless ``keep_special``."""
        words = []
        for i in ids:
            word = self.words.get(int(i), UNK)
            if word == END:
                break
            if self.keep_special or word not in (PAD, START):
                words.append(word)
        return words


def decode(ids: Iterable[int], word_map: dict[str, int], keep_special: bool = False) -> list[str]:
    """Words of one encoded caption (for many captions, build a :class:`Detokenizer` once)."""
    return Detokenizer(word_map, keep_special)(ids)
