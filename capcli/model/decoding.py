"""Decoding strategies written over one decoder step, batched over images.

``beam_search`` keeps every live beam of every image in one tensor: each step runs the decoder
once on all rows, picks each image's best continuations, sets finished captions aside (the
image's beam shrinks by as many) and drops the rows of images that are done, so the work per
step follows the number of live beams. No image's beams depend on another's, so results equal
decoding each image alone, up to the rounding of matrix kernels chosen by row count (see
docs/performance.md). Greedy decoding is beam search with one beam. (Sampling for
reinforcement learning, which needs gradients, lives in ``capcli.training.a2c``.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from capcli.data.vocab import PAD, START, UNK


@dataclass
class Decoded:
    """One image's caption: word ids without ``<start>``/``<end>``, the summed log-probability of
    every generated word (``<end>`` included when reached), whether ``<end>`` was reached, and
    the attention over the encoder pixels for each word, (len(tokens), num_pixels), or None."""

    tokens: list[int]
    score: float
    finished: bool
    attention: torch.Tensor | None


def banned_words(word_map: dict[str, int]) -> tuple[int, ...]:
    """The ids no decoder may generate: ``<pad>``, ``<start>`` and ``<unk>`` (an unknown word is
    no word: scored against raw references it could only lose, and papers' decoders ban it too)."""
    return tuple(word_map[w] for w in (PAD, START, UNK) if w in word_map)


def _penalised(score: float, length: int, length_penalty: float) -> float:
    return score / (max(length, 1) ** length_penalty) if length_penalty else score


@torch.no_grad()
def beam_search(decoder, features: torch.Tensor, start: int, end: int, max_len: int, beam_size: int = 3,
                length_penalty: float = 0.0, banned: tuple[int, ...] = (), attention: bool = True) -> list[Decoded]:
    """Beam search over a batch of images (features (batch, 14, 14, C)); one result per image.

    Classic semantics: each image keeps its ``k`` best partial captions; a candidate ending with
    ``<end>`` is set aside and the image's beam shrinks by one; an image stops with ``k`` finished
    captions or after ``max_len`` words. The finished caption with the best summed log-probability
    (divided by length ** ``length_penalty`` when that is not 0) wins; with none finished, the best
    unfinished one. Word ids in ``banned`` (:func:`banned_words`) are never generated. With
    ``attention`` False the attention maps are not kept (``Decoded.attention`` is None).
    """
    if beam_size < 1:
        raise ValueError("beam_size must be at least 1")
    device, batch = features.device, features.shape[0]
    state = decoder.init_state(features, decoding=True)
    # one row per image to start: every beam would be the same <start>
    image_of = torch.arange(batch, device=device)  # the image each live row belongs to (rows grouped by image)
    scores = torch.zeros(batch, device=device)
    words = torch.full((batch,), start, dtype=torch.long, device=device)
    seqs = torch.empty(batch, 0, dtype=torch.long, device=device)  # (rows, words so far)
    alphas: torch.Tensor | None = None  # (rows, words so far, num_pixels)
    room = torch.full((batch,), beam_size, dtype=torch.long, device=device)  # beams still open per image
    done: list[list[Decoded]] = [[] for _ in range(batch)]
    best_open: list[Decoded | None] = [None] * batch
    for step in range(max_len):
        logits, alpha, state = decoder.step(words, state)
        logp = F.log_softmax(logits, dim=1, dtype=torch.float32).add_(scores.unsqueeze(1))  # (rows, vocab)
        if banned:
            logp[:, list(banned)] = float("-inf")
        if alpha is not None and attention:
            alpha = alpha.float().unsqueeze(1)  # (rows, 1, num_pixels)
            alphas = alpha if alphas is None else torch.cat([alphas, alpha], dim=1)
        row, word, score, image = _best_candidates(logp, image_of, room, beam_size)
        seqs = torch.cat([seqs.index_select(0, row), word.unsqueeze(1)], dim=1)
        alphas = None if alphas is None else alphas.index_select(0, row)
        ended = word == end
        _set_aside(done, best_open, seqs, alphas, score, image, ended, last=step == max_len - 1)
        room.index_add_(0, image[ended], torch.full_like(image[ended], -1))
        live = (~ended) & (room[image] > 0)
        if not bool(live.any()):
            break
        rows = live.nonzero(as_tuple=True)[0]
        state = state.select(row[rows])  # per-image tensors (the attention decoder's pixels) are not copied
        image_of, scores, words = image[rows], score[rows], word[rows]
        seqs = seqs.index_select(0, rows)
        alphas = None if alphas is None else alphas.index_select(0, rows)
    return [max(ds, key=lambda d: _penalised(d.score, len(d.tokens) + 1, length_penalty)) if ds else best_open[img]
            for img, ds in enumerate(done)]


def _best_candidates(logp: torch.Tensor, image_of: torch.Tensor, room: torch.Tensor, beam_size: int):
    """Each image's best continuations over all its rows, as many as it has room for, best first:
    (row, word, score, image) per candidate, grouped by image."""
    vocab = logp.shape[1]
    groups, group_of = torch.unique_consecutive(image_of, return_inverse=True)
    first_row = torch.searchsorted(image_of, groups)
    # each image's rows side by side: (images, beam_size * vocab), -inf where it has fewer rows
    if len(image_of) == len(groups) * beam_size:  # every image has all its rows: no gaps to fill
        table = logp
    else:
        slot = torch.arange(len(image_of), device=logp.device) - first_row[group_of]
        table = logp.new_full((len(groups), beam_size, vocab), float("-inf"))
        table[group_of, slot] = logp
    top, index = table.view(len(groups), -1).topk(min(beam_size, beam_size * vocab), dim=1)
    keep = (torch.arange(top.shape[1], device=logp.device) < room[groups].unsqueeze(1)) & torch.isfinite(top)
    g, j = keep.nonzero(as_tuple=True)  # chosen candidates, grouped by image, best first
    return first_row[g] + index[g, j] // vocab, index[g, j] % vocab, top[g, j], groups[g]


def _set_aside(done: list[list[Decoded]], best_open: list[Decoded | None], seqs: torch.Tensor,
               alphas: torch.Tensor | None, score: torch.Tensor, image: torch.Tensor, ended: torch.Tensor,
               last: bool) -> None:
    """Finished candidates go to their image's ``done``; at the ``last`` step each image's best
    open candidate is kept too, in case it finished none."""
    if last:
        for i in (~ended).nonzero(as_tuple=True)[0].tolist():
            img = int(image[i])
            if best_open[img] is None:  # candidates come best first within an image
                best_open[img] = Decoded(seqs[i].tolist(), float(score[i]), False,
                                         alphas[i].cpu() if alphas is not None else None)
    for i in ended.nonzero(as_tuple=True)[0].tolist():
        done[int(image[i])].append(Decoded(seqs[i, :-1].tolist(), float(score[i]), True,
                                           alphas[i, :-1].cpu() if alphas is not None else None))


def greedy(decoder, features: torch.Tensor, start: int, end: int, max_len: int,
           banned: tuple[int, ...] = (), attention: bool = True) -> list[Decoded]:
    """The most likely word at every step: beam search with one beam."""
    return beam_search(decoder, features, start, end, max_len, beam_size=1, banned=banned, attention=attention)
