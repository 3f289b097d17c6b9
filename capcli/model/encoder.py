"""ResNet encoder: torchvision's ResNet without pooling and classifier, pooled to 14 × 14.

Input: float images in [0, 1], (batch, 3, H, W); ImageNet normalisation happens here.
Output: (batch, 14, 14, encoder_dim), 512 channels for resnet18/34 and 2048 for the larger ones.

``Encoder.infer`` is the inference path (frozen features, captioning): on the CPU it runs the
ResNet as oneDNN convolutions with BatchNorm folded into their weights and the ReLU and residual
sum fused in, instead of a separate pass over memory for each BatchNorm, ReLU and addition.
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
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from capcli.errors import CapcliError, first_line, os_error_message

ENCODER_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048}
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
        resnet = getattr(torchvision.models, name)(weights=None)
        # children: conv1 bn1 relu maxpool layer1 layer2 layer3 layer4 (avgpool fc dropped)
        # channels-last (NHWC) convolutions: measured 1.27× faster in fp32 and 1.39× in bf16 on
        # this project's CPU (resnet34, batch 32, 256 px), and what GPU tensor cores want
        self.resnet = nn.Sequential(*list(resnet.children())[:-2]).to(memory_format=torch.channels_last)
        self.pool = nn.AdaptiveAvgPool2d((encoded_size, encoded_size))
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.set_fine_tune(False)

    def set_fine_tune(self, fine_tune: bool) -> None:
        """Freeze everything; with ``fine_tune`` train ResNet stages 2–4 (the seed's choice)."""
        for p in self.parameters():
            p.requires_grad = False
        if fine_tune:
            for stage in list(self.resnet.children())[5:]:
                for p in stage.parameters():
                    p.requires_grad = True

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        return ((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.resnet(self._normalise(images)))  # (batch, encoder_dim, 14, 14), channels last
        return x.permute(0, 2, 3, 1)  # (batch, 14, 14, encoder_dim): contiguous

    @torch.no_grad()
    def infer(self, images: torch.Tensor) -> torch.Tensor:
        """``forward`` without gradients, in eval mode, through the fused CPU convolutions where
        they apply (a CPU tensor, fp32 or bf16 autocast, this PyTorch build has them).

        resnet34, batch 32, 256 px on the project's 2-core AMX machine: bf16 149 → 237 images/s,
        fp32 40 → 43; the separate BatchNorm, ReLU and addition passes were 36 % of the bf16 time.
        """
        device_type = images.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else torch.float32
        if self.training or device_type != "cpu" or dtype not in _FUSED_DTYPES or not _has_fused_convolutions():
            return self(images)
        x = self._normalise(images).to(dtype)
        with torch.autocast(device_type, enabled=False):
            x = self.pool(_run_fused(self._fused_plan(dtype), self.resnet[3], x))
        return x.permute(0, 2, 3, 1)  # (batch, 14, 14, encoder_dim): contiguous

    def _fused_plan(self, dtype: torch.dtype) -> tuple:
        """The folded convolutions in ``dtype``, made again only when a weight or BatchNorm statistic
        changed (an optimiser step, a load or a calibration bumps its version) or moved."""
        tensors = list(self.resnet.parameters()) + list(self.resnet.buffers())
        key = (dtype,) + tuple((t.data_ptr(), t._version, t.device) for t in tensors)
        cached = getattr(self, "_fused_cache", None)
        if cached is None or cached[0] != key:
            stem, stages = self.resnet[:2], list(self.resnet.children())[4:]
            blocks = []
            for block in (b for stage in stages for b in stage):  # torchvision's BasicBlock / Bottleneck
                convs = [_folded(getattr(block, f"conv{i}"), getattr(block, f"bn{i}"), dtype)
                         for i in (1, 2, 3) if hasattr(block, f"conv{i}")]
                shortcut = None if block.downsample is None else _folded(*block.downsample, dtype)
                blocks.append((convs, shortcut))
            self._fused_cache = cached = (key, (_folded(*stem, dtype), blocks))
        return cached[1]

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


_FUSED_DTYPES = (torch.float32, torch.bfloat16)


def _has_fused_convolutions() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _folded(conv: nn.Conv2d, norm: nn.BatchNorm2d, dtype: torch.dtype) -> tuple:
    """The arguments of a oneDNN convolution computing norm(conv(x)) in eval mode (called without
    gradients)."""
    weight, bias = fuse_conv_bn_weights(conv.weight.float(), None, norm.running_mean, norm.running_var,
                                        norm.eps, norm.weight.float(), norm.bias.float())
    weight = weight.to(dtype).contiguous(memory_format=torch.channels_last)
    return weight, bias.to(dtype), list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups


def _run_fused(plan: tuple, maxpool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The ResNet body on channels-last ``x``: relu(conv) for the stem and inner convolutions,
    relu(conv + shortcut) for each block's last one."""
    conv = torch.ops.mkldnn._convolution_pointwise
    stem, blocks = plan
    x = maxpool(conv(x, *stem, "relu", [], ""))
    for convs, shortcut in blocks:
        identity = x if shortcut is None else conv(x, *shortcut, "none", [], "")
        for inner in convs[:-1]:
            x = conv(x, *inner, "relu", [], "")
        x = conv.binary(x, identity, *convs[-1], "add", None, "relu", [], "")
    return x  # (batch, encoder_dim, h, w), channels last


def imagenet_url(name: str) -> str:
    """The address of torchvision's ImageNet weights (``IMAGENET1K_V1``) for encoder ``name``."""
    return getattr(torchvision.models, _WEIGHTS[name]).IMAGENET1K_V1.url


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
    if weights_file:
        path, state = weights_file, _load_file(weights_file)
    else:
        path, state = _download(encoder.name, progress)
    if not isinstance(state, dict):
        raise CapcliError(f"{path}: not a state dict of ResNet weights ({type(state).__name__})")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    resnet = getattr(torchvision.models, encoder.name)(weights=None)
    del resnet.fc
    try:
        resnet.load_state_dict(state)
    except RuntimeError as exc:
        raise CapcliError(f"{path}: weights do not fit {encoder.name}: {str(exc).splitlines()[0]}") from None
    encoder.resnet.load_state_dict(nn.Sequential(*list(resnet.children())[:-1]).state_dict())
    return path


def _load_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise CapcliError(f"pretrained weights not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
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
                           f"({first_line(reason)}); connect to the internet, or pass --pretrained-weights FILE")
    return None
