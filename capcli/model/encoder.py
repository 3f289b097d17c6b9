"""ResNet encoder: torchvision's ResNet without pooling and classifier, pooled to 14 × 14 (``encoded_size``).

Input: float images in [0, 1], (batch, 3, H, W); ImageNet normalisation happens here.
Output: (batch, 14, 14, encoder_dim), 512 channels for resnet18/34, 2048 for the larger ones and 128
for ``resnet-small`` (the shapes set: 8 × 8).

``Encoder.infer`` is the inference path (frozen features, captioning): the forward pass without
gradients, or the CPU's fused form of it once ``capcli.model.cpu.enable`` set ``kernels``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from capcli.errors import CapcliError
from capcli.model.grid import recalibrate, train_only
from capcli.runtime.torch_compat import import_torchvision

SMALL = "resnet-small"  # no ImageNet weights: for small images trained from scratch (the shapes set)
ENCODER_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048, SMALL: 128}
WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights",
            "resnet101": "ResNet101_Weights", "resnet152": "ResNet152_Weights"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Encoder(nn.Module):
    def __init__(self, name: str = "resnet34", encoded_size: int = 14) -> None:
        super().__init__()
        if name not in ENCODER_DIMS:
            raise CapcliError(f"unknown encoder {name!r} (choose from {', '.join(ENCODER_DIMS)})")
        self.name, self.dim = name, ENCODER_DIMS[name]
        if name == SMALL:
            layers = small_resnet()
        else:  # children: conv1 bn1 relu maxpool layer1 layer2 layer3 layer4 (avgpool fc dropped)
            layers = list(torchvision_resnet(name)(weights=None).children())[:-2]
        # channels-last (NHWC) convolutions: faster on the CPU (docs/performance.md) and what GPU tensor cores want
        self.resnet = nn.Sequential(*layers).to(memory_format=torch.channels_last)
        self.pool = nn.AdaptiveAvgPool2d((encoded_size, encoded_size))
        self.grid = encoded_size  # the feature grid's side (the seed's 14: a ResNet's map is pooled to it)
        self.preprocess = None  # it takes the prepared images as they are (the others: capcli.model.grid)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.set_fine_tune(False)
        self.kernels = None  # capcli.model.cpu's fused inference, once enabled

    def set_fine_tune(self, fine_tune: bool, depth: int | None = None) -> None:
        """Freeze everything; with ``fine_tune`` train the last ``depth`` stages: by default stages
        2–4 (the seed's choice), or the whole of ``resnet-small``, which has no pretrained stem to
        keep."""
        children = list(self.resnet.children())  # conv1 bn1 relu maxpool, then the stages
        trained = children if self.name == SMALL and depth is None else children[4:][-(depth or 3):]
        train_only(self, trained if fine_tune else [])

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        return ((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.resnet(self._normalise(images)))  # (batch, encoder_dim, 14, 14), channels last
        return x.permute(0, 2, 3, 1)  # (batch, 14, 14, encoder_dim): contiguous

    @torch.no_grad()
    def infer(self, images: torch.Tensor) -> torch.Tensor:
        """``forward`` without gradients (frozen features, captioning)."""
        if self.kernels is not None and (fast := self.kernels.infer(self, images)) is not None:
            return fast
        return self(images)

    @torch.no_grad()
    def calibrate_batchnorm(self, batches: Iterable[torch.Tensor]) -> None:
        """Re-estimate every BatchNorm's running mean and variance from ``batches`` of images.

        An untrained ResNet's statistics are the identity (mean 0, variance 1), so in eval mode
        nothing normalises its activations and a random frozen encoder's features grow to values
        in the hundreds, which saturates the decoder. Statistics measured on real images give
        features of unit scale, as a trained network would. Weights are not changed.
        """
        recalibrate(self, (self._normalise(images) for images in batches), self.resnet)

    def stages(self) -> list[tuple[str, nn.Module]]:
        """Named top-level parts, in order (``capcli arch``): torchvision's names."""
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        return [(names[int(n)] if int(n) < len(names) else n, m) for n, m in self.resnet.named_children()] + \
            [("pool", self.pool)]


def small_resnet(width: int = 32, blocks: int = 2) -> list[nn.Module]:
    """A narrow three-stage ResNet in torchvision's layout (conv1 bn1 relu maxpool layer1–3): stages of
    ``blocks`` basic blocks at ``width``, 2×, 4× channels; output stride 16 (8 × 8 features from 128 pixels).

    Small synthetic images need neither ResNet-18's width nor its fourth stage, and train from scratch
    several times faster with this one (figures in docs/performance.md).
    """
    block = import_torchvision().models.resnet.BasicBlock
    layers: list[nn.Module] = [nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                               nn.MaxPool2d(3, 2, 1)]
    channels = width
    for stage in range(3):
        planes, stride = width * 2 ** stage, 1 if stage == 0 else 2
        shortcut = None
        if stride != 1 or channels != planes:
            shortcut = nn.Sequential(nn.Conv2d(channels, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers.append(nn.Sequential(block(channels, planes, stride, shortcut),
                                    *(block(planes, planes) for _ in range(blocks - 1))))
        channels = planes
    return layers


def torchvision_resnet(name: str):
    """torchvision's constructor of the ResNet ``name``."""
    return getattr(import_torchvision().models, name)
