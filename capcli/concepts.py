"""Concept pretraining: the encoder learns to see what the captions name before it learns to caption.

An encoder trained from random weights learns slowly from the caption loss alone: each caption
rewards seeing its few content words, through a decoder that is itself still learning to read
the features. So a new run may first train the encoder on a task taken from the training captions
themselves (``--concept-epochs``): for each image, which *concepts* appear in any of its captions,
a concept being a word or a pair of adjacent words (``red star``, ``black dog``) that occurs in at
least :data:`MIN_IMAGES` training images. A linear layer on the mean of the encoder's features
predicts them all at once (binary cross-entropy per concept) and is thrown away afterwards.

Word pairs matter: colour-specific shape detectors (``red star``) are learnt several times faster
than colour-blind ones (``star``), and a caption needs both colour and shape. Nothing beyond the
captions is used, so it works on any data set; it pays where no pretrained encoder exists, as on
the shapes set (figures in docs/performance.md).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from capcli.config import TrainConfig
from capcli.data.datasets import Images
from capcli.data.hdf5 import PreparedData
from capcli.data.vocab import END, PAD, START, UNK
from capcli.device import Precision
from capcli.features import encode_images
from capcli.progress import SILENT, Progress

MIN_IMAGES = 5  # a concept must occur in this many training images
IMAGES_PER_BATCH = 16
Concept = tuple[int, ...]  # one word id, or two adjacent ones


def _concepts_of(row: Sequence[int], special: frozenset[int]) -> set[Concept]:
    words = [w for w in row if w not in special]
    return {(w,) for w in words} | set(zip(words, words[1:]))


def concept_targets(rows: Sequence[Sequence[int]], cpi: int, word_map: dict[str, int],
                    min_images: int = MIN_IMAGES) -> tuple[list[Concept], torch.Tensor]:
    """(the concepts, in a fixed order; (images, concepts) 0/1 targets) from caption rows, ``cpi`` per image."""
    special = frozenset(word_map[w] for w in (START, END, PAD, UNK) if w in word_map)
    per_image = []
    for i in range(len(rows) // cpi):
        found: set[Concept] = set()
        for row in rows[i * cpi:(i + 1) * cpi]:
            found |= _concepts_of(row, special)
        per_image.append(found)
    counts = Counter(c for found in per_image for c in found)
    concepts = sorted(c for c, n in counts.items() if n >= min_images)
    index = {c: k for k, c in enumerate(concepts)}
    targets = torch.zeros(len(per_image), len(concepts))
    for i, found in enumerate(per_image):
        targets[i, [index[c] for c in found if c in index]] = 1.0
    return concepts, targets


def pretrain_encoder(encoder: nn.Module, prepared: PreparedData, word_map: dict[str, int], config: TrainConfig,
                     device: torch.device, precision: Precision, progress: Progress = SILENT) -> float:
    """Train ``encoder`` (its trainable weights) for ``config.concept_epochs`` on the training images'
    concepts, :data:`IMAGES_PER_BATCH` images a batch at ``config.concept_lr``; returns the last epoch's mean loss."""
    epochs, images_per_batch = config.concept_epochs, IMAGES_PER_BATCH
    rows, _ = prepared.captions("TRAIN")
    cpi, _ = prepared.images_meta("TRAIN")
    concepts, targets = concept_targets(rows, cpi, word_map)
    images = Images(prepared.path("IMAGES", "TRAIN"), "images")
    head = nn.Linear(encoder.dim, len(concepts)).to(device)
    params = [p for p in encoder.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=config.concept_lr)
    generator = torch.Generator().manual_seed(config.seed)
    encoder.train()
    started, mean = time.monotonic(), float("nan")
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator).tolist()
        batches = [order[i:i + images_per_batch] for i in range(0, len(order), images_per_batch)]
        task = progress.task(f"concepts {epoch + 1}/{epochs}", len(batches), "batch")
        total = 0.0
        for step, (x, index) in enumerate(DataLoader(images, batch_sampler=batches), 1):
            features = encode_images(encoder, x, device, precision, train=True)  # (batch, H, W, C)
            with precision.autocast():
                logits = head(features.mean(dim=(1, 2)))
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets[index].to(device))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.item()
            task.show(f"loss {total / step:.4f}")
            task.advance()
        task.close()
        mean = total / max(len(batches), 1)
    progress.message(f"concepts: {epochs} epoch(s) on {len(concepts)} concepts of {len(images)} training images, "
                     f"loss {mean:.4f} ({time.monotonic() - started:.0f} s); now captioning")
    return mean
