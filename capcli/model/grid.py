"""Image encoders after ResNet as one kind of module: a grid of feature vectors for the decoder.

torchvision's ConvNeXt, EfficientNetV2, RegNetY, Swin and ViT, and CLIP's image towers from
open_clip (:mod:`capcli.model.clip`), all become a :class:`GridEncoder`: images in [0, 1] in, a
grid (batch, H, W, C) out. Convolutional maps come as they are (average-pooled to the configured
grid where they are larger); a transformer's patch tokens are laid back on their grid, the class
token dropped. Each encoder first brings the images to its own input: resized, centre-cropped and
normalised as its weights were trained (:class:`~capcli.config.Preprocess`, recorded in the
model's config so that training, the feature cache and captioning all do the same).

With ``--fine-tune-encoder`` the last few *units* train: stages of a convolutional network or a
Swin, blocks of a ViT (``fine_tune_depth``; each backbone has a default).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from capcli.config import Preprocess

Unit = list[nn.Module]


class Backbone(nn.Module):
    """An encoder's network without its classifier: ``forward`` maps normalised images to a grid
    (batch, H, W, C); ``units`` lists what ``--fine-tune-encoder`` may train, first to last."""

    dim: int
    stride: int  # input pixels per grid cell
    default_depth: int  # units trained by default with --fine-tune-encoder

    def units(self) -> list[Unit]:
        raise NotImplementedError

    def stages(self) -> list[tuple[str, nn.Module]]:
        """Named parts in order, a Sequential's children one by one (``capcli arch``)."""
        named = []
        for name, part in self.named_children():
            children = part.named_children() if isinstance(part, nn.Sequential) else ()
            named += [(f"{name}.{n}", m) for n, m in children] or [(name, part)]
        return named


class GridEncoder(nn.Module):
    """A :class:`Backbone` with its input preparation and the pooling to at most ``encoded_size``."""

    def __init__(self, name: str, backbone: Backbone, preprocess: Preprocess, encoded_size: int) -> None:
        super().__init__()
        self.name, self.backbone, self.preprocess = name, backbone, preprocess
        self.dim = backbone.dim
        self.grid = min(preprocess.size // backbone.stride, encoded_size)
        self.register_buffer("mean", torch.tensor(preprocess.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocess.std).view(1, 3, 1, 1), persistent=False)
        self.set_fine_tune(False)
        self.kernels = None  # no CPU kernels for these: the textbook form runs

    def set_fine_tune(self, fine_tune: bool, depth: int | None = None) -> None:
        """Freeze everything; with ``fine_tune`` train the last ``depth`` units (default: the backbone's)."""
        units = self.backbone.units()[-(depth or self.backbone.default_depth):] if fine_tune else []
        train_only(self, [module for unit in units for module in unit])

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (batch, 3, S, S) → the encoder's normalised input: resized to
        ``resize``, centre-cropped to ``size`` (prepared images are square already)."""
        p = self.preprocess
        if images.shape[-2:] != (p.resize, p.resize):
            images = F.interpolate(images, size=(p.resize, p.resize), mode=p.interpolation, antialias=True,
                                   align_corners=False)
        if p.resize != p.size:
            top = (p.resize - p.size) // 2
            images = images[..., top:top + p.size, top:top + p.size]
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        grid = self.backbone(self.prepare(images))  # (batch, H, W, C)
        if grid.shape[1] > self.grid or grid.shape[2] > self.grid:
            pooled = F.adaptive_avg_pool2d(grid.permute(0, 3, 1, 2), (self.grid, self.grid))
            grid = pooled.permute(0, 2, 3, 1)
        return grid.contiguous()

    @torch.no_grad()
    def infer(self, images: torch.Tensor) -> torch.Tensor:
        """``forward`` without gradients (frozen features, captioning)."""
        return self(images)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return self.backbone.stages()

    @torch.no_grad()
    def calibrate_batchnorm(self, batches: Iterable[torch.Tensor]) -> None:
        """Re-estimate BatchNorm statistics from ``batches`` (for random weights; see
        :meth:`capcli.model.encoder.Encoder.calibrate_batchnorm`)."""
        recalibrate(self, (self.prepare(images) for images in batches), self.backbone)


def train_only(owner: nn.Module, modules: Iterable[nn.Module]) -> None:
    """Freeze every weight of ``owner`` but those of ``modules``."""
    for p in owner.parameters():
        p.requires_grad = False
    for module in modules:
        for p in module.parameters():
            p.requires_grad = True


@torch.no_grad()
def recalibrate(owner: nn.Module, inputs: Iterable[torch.Tensor], network: nn.Module) -> None:
    """Measure every BatchNorm's running mean and variance in ``owner`` by running ``network`` on
    ``inputs`` in training mode (a plain average over all of them); weights are not changed."""
    norms = [m for m in owner.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:  # a transformer: nothing to measure
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = owner.training
    owner.train()
    for x in inputs:
        network(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    owner.train(was_training)
