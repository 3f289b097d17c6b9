"""Object pretraining for the shapes set: the encoder learns to recognise what is drawn before it
learns to caption, as encoders of real photos start from ImageNet classification.

An encoder trained from random weights learns slowly from the caption loss alone: each caption
rewards seeing its few content words, through a decoder that is itself still learning to read the
features, and on the shapes set after three epochs of 8,000 scenes fewer than one caption in three
named the right shapes. So a new shapes run may first train the encoder (``--concept-epochs``) to
tell which of the 24 kinds of object (colour × shape) each *training* image holds, from the
generator's own record of what it drew (``dataset_shapes.json``): a linear layer on the mean of
the features, binary cross-entropy per kind, thrown away afterwards. Three such epochs recognise
the exact set of kinds in 9 validation images of 10.

Targets taken from the captions themselves (their words and word pairs) were tried first and
learnt far slower: most of those concepts are the templates' free choices ("the picture", "circle
to"), whose noise drowns the colour-shape pairs (figures in docs/performance.md).
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.data import DataLoader

from capcli.config import TrainConfig
from capcli.data.datasets import Images
from capcli.data.hdf5 import PreparedData
from capcli.data.shapes import COLOURS, SHAPES
from capcli.errors import InputError
from capcli.evaluation.content import split_drawn
from capcli.runtime.device import Precision
from capcli.runtime.progress import SILENT, Progress
from capcli.training.features import encode_images
from capcli.training.samples import image_names

IMAGES_PER_BATCH = 16


def object_targets(prepared: PreparedData) -> tuple[list[tuple[str, str]], torch.Tensor]:
    """(the 24 kinds of object, (training images, kinds) 0/1 targets) from the shapes generator's record.

    Raises:
        InputError: ``prepared`` is not the shapes set with its generator file beside it.
    """
    count = len(Images(prepared.path("IMAGES", "TRAIN"), "images"))
    drawn = split_drawn(prepared.folder, prepared.name, image_names(prepared, "TRAIN", count))
    if drawn is None:
        raise InputError(f"--concept-epochs needs the shapes set's record of what it drew ({prepared.name} in "
                         f"{prepared.folder} has none); leave it at 0 for other data sets")
    kinds = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    index = {kind: k for k, kind in enumerate(kinds)}
    targets = torch.zeros(count, len(kinds))
    for i, objects in enumerate(drawn):
        targets[i, [index[(colour, shape)] for _, colour, shape in objects]] = 1.0
    return kinds, targets


def pretrain_encoder(encoder: nn.Module, prepared: PreparedData, config: TrainConfig, device: torch.device,
                     precision: Precision, progress: Progress = SILENT) -> float:
    """Train ``encoder`` (its trainable weights) for ``config.concept_epochs`` on the kinds of object in
    the training images, :data:`IMAGES_PER_BATCH` images a batch at ``config.concept_lr``; returns the
    last epoch's mean loss."""
    epochs, images_per_batch = config.concept_epochs, IMAGES_PER_BATCH
    kinds, targets = object_targets(prepared)
    images = Images(prepared.path("IMAGES", "TRAIN"), "images")
    head = nn.Linear(encoder.dim, len(kinds)).to(device)
    params = [p for p in encoder.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=config.concept_lr)
    generator = torch.Generator().manual_seed(config.seed)
    encoder.train()
    started, mean = time.monotonic(), float("nan")
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator).tolist()
        batches = [order[i:i + images_per_batch] for i in range(0, len(order), images_per_batch)]
        if len(batches) > 1 and len(batches[-1]) == 1:  # BatchNorm trains on 2 values a channel at least
            batches[-2] += batches.pop()  # (one image's 1 × 1 last stage: 32-pixel images on a ResNet-18)
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
    progress.message(f"concepts: {epochs} epoch(s) on the {len(kinds)} kinds of object in {len(images)} training "
                     f"images, loss {mean:.4f} ({time.monotonic() - started:.0f} s); now captioning")
    return mean
