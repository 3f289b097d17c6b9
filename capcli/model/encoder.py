"""ResNet encoder: torchvision's ResNet without pooling and classifier, pooled to 14 × 14 (``encoded_size``).

Input: float images in [0, 1], (batch, 3, H, W); ImageNet normalisation happens here.
Output: (batch, 14, 14, encoder_dim), 512 channels for resnet18/34, 2048 for the larger ones and 128
for ``resnet-small`` (the shapes set: 8 × 8).

``Encoder.infer`` is the inference path (frozen features, captioning): the forward pass without
gradients, or the CPU's fused form of it once ``capcli.model.cpu.enable`` set ``kernels``.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
from collections.abc import Iterable
from http.client import HTTPException
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import nn

from capcli.errors import CapcliError, first_line, os_error_message
from capcli.runtime.torch_compat import import_torchvision
from capcli.safeio import open_regular

SMALL = "resnet-small"  # no ImageNet weights: for small images trained from scratch (the shapes set)
ENCODER_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048, SMALL: 128}
_WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights",
            "resnet101": "ResNet101_Weights", "resnet152": "ResNet152_Weights"}
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class Encoder(nn.Module):
    def __init__(self, name: str = "resnet34", encoded_size: int = 14) -> None:
        super().__init__()
        if name not in ENCODER_DIMS:
            raise CapcliError(f"unknown encoder {name!r} (choose from {', '.join(ENCODER_DIMS)})")
        self.name, self.dim = name, ENCODER_DIMS[name]
        if name == SMALL:
            layers = small_resnet()
        else:  # children: conv1 bn1 relu maxpool layer1 layer2 layer3 layer4 (avgpool fc dropped)
            layers = list(_torchvision_resnet(name)(weights=None).children())[:-2]
        # channels-last (NHWC) convolutions: faster on the CPU (docs/performance.md) and what GPU tensor cores want
        self.resnet = nn.Sequential(*layers).to(memory_format=torch.channels_last)
        self.pool = nn.AdaptiveAvgPool2d((encoded_size, encoded_size))
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.set_fine_tune(False)
        self.kernels = None  # capcli.model.cpu's fused inference, once enabled

    def set_fine_tune(self, fine_tune: bool) -> None:
        """Freeze everything; with ``fine_tune`` train ResNet stages 2–4 (the seed's choice), or the
        whole of ``resnet-small``, which has no pretrained stem to keep."""
        for p in self.parameters():
            p.requires_grad = False
        if fine_tune:
            for stage in list(self.resnet.children())[5 if self.name != SMALL else 0:]:
                for p in stage.parameters():
                    p.requires_grad = True

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
        norms = [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a plain average over all batches
        was_training = self.training
        self.train()
        for images in batches:
            self.resnet(self._normalise(images))
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        self.train(was_training)


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


def _torchvision_resnet(name: str):
    """torchvision's constructor of the ResNet ``name``."""
    return getattr(import_torchvision().models, name)


def imagenet_url(name: str) -> str:
    """The address of torchvision's ImageNet weights (``IMAGENET1K_V1``) for encoder ``name``."""
    return getattr(import_torchvision().models, _WEIGHTS[name]).IMAGENET1K_V1.url


def _cache_path(url: str) -> str:
    # torch.hub.load_state_dict_from_url's naming: <hub dir>/checkpoints/<the URL's file name>
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))


def hub_weights_path(name: str) -> str:
    """Where torchvision's ImageNet weights for ``name`` live in the torch hub cache."""
    return _cache_path(imagenet_url(name))


def load_pretrained(encoder: Encoder, weights_file: str | None = None, progress: bool = True) -> str:
    """Load ImageNet weights into ``encoder`` from ``weights_file``, or torchvision's download.

    Without ``weights_file`` the weights come through torch.hub, as torchvision's
    ``WeightsEnum.get_state_dict`` fetches them: from the hub cache
    (``$TORCH_HOME/hub/checkpoints``), downloaded there first when absent, the SHA-256 prefix in
    the file name checked, the file moved into place only once complete.

    Args:
        encoder: the encoder whose ResNet receives the weights (the classifier is dropped).
        weights_file: a state dict saved with ``torch.save``, for machines without internet.
        progress: show torch.hub's download progress bar (on stderr).

    Returns:
        The file the weights came from.

    Raises:
        CapcliError: a missing, corrupt or unfitting file, or a failed download (naming the
            cache path, the address and ``--pretrained-weights FILE``).
    """
    if encoder.name == SMALL:
        raise CapcliError(f"{SMALL} has no ImageNet weights; train it from scratch with --no-pretrained")
    if weights_file:
        path, state = weights_file, _load_file(weights_file)
    else:
        path, state = _download(encoder.name, progress)
    if not isinstance(state, dict):
        raise CapcliError(f"{path}: not a state dict of ResNet weights ({type(state).__name__})")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    resnet = _torchvision_resnet(encoder.name)(weights=None)
    del resnet.fc
    try:
        resnet.load_state_dict(state)
    except RuntimeError as exc:
        raise CapcliError(f"{path}: weights do not fit {encoder.name}: {str(exc).splitlines()[0]}") from None
    encoder.resnet.load_state_dict(nn.Sequential(*list(resnet.children())[:-1]).state_dict())
    return path


def _load_file(path: str) -> dict:
    if not os.path.exists(path):
        raise CapcliError(f"pretrained weights not found: {path}")
    try:
        with open_regular(path) as f:  # a FIFO or a folder: one line, never a hang
            return torch.load(f, map_location="cpu", weights_only=True)
    except CapcliError:
        raise
    except Exception as exc:  # a corrupt or unsafe file: report it, never run it
        raise CapcliError(f"{path}: not a loadable weights file ({type(exc).__name__})") from None


def _download(name: str, progress: bool) -> tuple[str, dict]:
    """The cache path and state dict of torchvision's ImageNet weights for ``name``."""
    url = imagenet_url(name)
    path = _cache_path(url)
    try:
        # torch.hub prints "Downloading: ..." on stdout; a service leaves stdout to the CLI
        with contextlib.redirect_stdout(sys.stderr if progress else io.StringIO()):
            state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=progress,
                                                       check_hash=True, weights_only=True)
    except Exception as exc:
        error = _hub_error(exc, name, url, path)
        if error is None:
            raise
        raise error from None
    return path, state


_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR}


def _hub_error(exc: Exception, name: str, url: str, path: str) -> CapcliError | None:
    """The user's message for a failure of ``load_state_dict_from_url``; None for a bug."""
    if os.path.exists(path):  # torch.hub moves a download there only once complete and hash-checked
        if isinstance(exc, OSError):
            return CapcliError(os_error_message(exc))
        return CapcliError(f"{path}: cached weights are not loadable ({type(exc).__name__}: "
                           f"{first_line(exc, 120)}); delete the file to download it again")
    if isinstance(exc, RuntimeError) and str(exc).startswith("invalid hash value"):
        return CapcliError(f"{url}: download rejected, {first_line(exc)}; nothing saved to {path}; "
                           "try again, or pass --pretrained-weights FILE")
    if isinstance(exc, OSError) and not isinstance(exc, URLError) and exc.errno in _DISK_ERRNOS:
        message = os_error_message(exc)
        return CapcliError(message if exc.filename else f"{path}: {message}")
    if isinstance(exc, (OSError, HTTPException)):  # URLError, refused, reset, timed out, cut short
        reason = exc.reason if type(exc) is URLError else exc
        return CapcliError(f"could not download {name}'s ImageNet weights from {url} to {path} "
                           f"({first_line(reason)}); connect to the internet, or pass --pretrained-weights FILE "
                           "(`capcli env` lists the weights cached here)")
    return None
