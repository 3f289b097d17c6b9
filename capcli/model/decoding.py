"""Decoding strategies written over one decoder step, batched over images.

``beam_search`` keeps every live beam of every image in one tensor: each step runs the decoder
once on all rows, picks each image's best continuations, sets finished captions aside (the
image's beam shrinks by as many) and drops the rows of images that are done, so the work per
step follows the number of live beams. No image's beams depend on another's: results equal
decoding each image alone up to the rounding of the matrix products, which BLAS libraries compute
with kernels chosen by row count (oneDNN on an AMX CPU, untrained models: in bf16 3 of 256 images
got another caption, scored within 0.36 of the first out of about −89; in fp32 none).
Greedy decoding is beam search with one beam. (Sampling for reinforcement learning, which needs
gradients, lives in ``capcli.a2c``.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Decoded:
    """One image's caption: word ids without ``<start>``/``<end>``, the summed log-probability of
    every generated word (``<end>`` included when reached), whether ``<end>`` was reached, and
    the attention over the encoder pixels for each word, (len(tokens), num_pixels), or None."""

    tokens: list[int]
    score: float
    finished: bool
    attention: torch.Tensor | None


def _reorder(state: tuple, index: torch.Tensor, keep: tuple[int, ...] = ()) -> tuple:
    """Rows of every state tensor picked by ``index``. Entries numbered in ``keep`` (one per image)
    stay as they are; a None entry (the identity row → image map) becomes ``index`` itself."""
    return tuple(t if i in keep else index if t is None else t.index_select(0, index) for i, t in enumerate(state))


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
    unfinished one. Word ids in ``banned`` (``<pad>``, ``<start>``) are never generated. With
    ``attention`` False the attention maps are not kept (``Decoded.attention`` is None).
    """
    if beam_size < 1:
        raise ValueError("beam_size must be at least 1")
    device, batch = features.device, features.shape[0]
    state = decoder.init_state(features)
    # one row per image to start: every beam would be the same <start>
    image_of = torch.arange(batch, device=device)  # the image each live row belongs to (rows grouped by image)
    scores = torch.zeros(batch, device=device)
    words = torch.full((batch,), start, dtype=torch.long, device=device)
    seqs = torch.empty(batch, 0, dtype=torch.long, device=device)
    alphas: torch.Tensor | None = None
    room = torch.full((batch,), beam_size, dtype=torch.long, device=device)  # beams still open per image
    done: list[list[Decoded]] = [[] for _ in range(batch)]
    best_open: list[Decoded | None] = [None] * batch
    for step in range(max_len):
        logits, alpha, state = decoder.step(words, state)
        logp = F.log_softmax(logits, dim=1, dtype=torch.float32).add_(scores.unsqueeze(1))  # (rows, vocab)
        if banned:
            logp[:, list(banned)] = float("-inf")
        vocab = logp.shape[1]
        if alpha is not None and attention:
            alpha = alpha.float().unsqueeze(1)
            alphas = alpha if alphas is None else torch.cat([alphas, alpha], dim=1)
        # lay each image's rows side by side: (images, beam_size * vocab), -inf where no row
        groups, group_of = torch.unique_consecutive(image_of, return_inverse=True)
        first_row = torch.searchsorted(image_of, groups)
        if len(image_of) == len(groups) * beam_size:  # every image has all its rows: no gaps to fill
            table = logp
        else:
            slot = torch.arange(len(image_of), device=device) - first_row[group_of]
            table = logp.new_full((len(groups), beam_size, vocab), float("-inf"))
            table[group_of, slot] = logp
        top, index = table.view(len(groups), -1).topk(min(beam_size, beam_size * vocab), dim=1)
        keep = (torch.arange(top.shape[1], device=device) < room[groups].unsqueeze(1)) & torch.isfinite(top)
        g, j = keep.nonzero(as_tuple=True)  # chosen candidates, grouped by image, best first
        row = first_row[g] + index[g, j] // vocab
        word = index[g, j] % vocab
        score = top[g, j]
        seqs = torch.cat([seqs.index_select(0, row), word.unsqueeze(1)], dim=1)
        if alphas is not None:
            alphas = alphas.index_select(0, row)
        image = groups[g]
        ended = word == end
        if step == max_len - 1:  # remember each image's best open caption in case none finishes
            for i in (~ended).nonzero(as_tuple=True)[0].tolist():
                img = int(image[i])
                if best_open[img] is None:  # candidates come best first within an image
                    best_open[img] = Decoded(seqs[i].tolist(), float(score[i]), False,
                                             alphas[i].cpu() if alphas is not None else None)
        for i in ended.nonzero(as_tuple=True)[0].tolist():
            img = int(image[i])
            done[img].append(Decoded(seqs[i, :-1].tolist(), float(score[i]), True,
                                     alphas[i, :-1].cpu() if alphas is not None else None))
        room.index_add_(0, image[ended], torch.full_like(image[ended], -1))
        live = (~ended) & (room[image] > 0)
        if not bool(live.any()):
            break
        rows = live.nonzero(as_tuple=True)[0]
        # state kept once per image (the attention decoder's pixels) is never copied
        state = _reorder(state, row[rows], getattr(decoder, "per_image_state", ()))
        image_of, scores, words = image[rows], score[rows], word[rows]
        seqs = seqs.index_select(0, rows)
        if alphas is not None:
            alphas = alphas.index_select(0, rows)
    results = []
    for img in range(batch):
        if done[img]:
            results.append(max(done[img], key=lambda d: _penalised(d.score, len(d.tokens) + 1, length_penalty)))
        else:
            results.append(best_open[img])
    return results


def greedy(decoder, features: torch.Tensor, start: int, end: int, max_len: int,
           banned: tuple[int, ...] = (), attention: bool = True) -> list[Decoded]:
    """The most likely word at every step: beam search with one beam."""
    return beam_search(decoder, features, start, end, max_len, beam_size=1, banned=banned, attention=attention)
