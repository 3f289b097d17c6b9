"""The CPU's inference form of the ResNet encoder: the same features as ``Encoder.forward``.

The ResNet runs as oneDNN convolutions with BatchNorm folded into their weights, ReLU fused into
each convolution and relu(conv + shortcut) into each block's last one, instead of a separate
pass over memory for every BatchNorm, ReLU and addition. oneDNN's fused convolution is a private
torch operator, reached through :func:`capcli.runtime.torch_compat.fused_convolution`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from capcli.runtime.torch_compat import fused_convolution, tensor_version

FUSED_DTYPES = (torch.float32, torch.bfloat16)


def available() -> bool:
    return fused_convolution() is not None


class FusedEncoder:
    """Inference for one encoder; the folded weights are made again whenever a weight or
    BatchNorm statistic changed (an optimiser step, a load or a calibration bumps its version)."""

    def __init__(self) -> None:
        self._key = None
        self._plan: tuple | None = None

    def __call__(self, encoder, images: torch.Tensor) -> torch.Tensor | None:
        """Features (batch, 14, 14, encoder_dim), or None where this form does not apply (training
        mode: batch statistics; a precision oneDNN's fused operator lacks)."""
        device_type = images.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else torch.float32
        if encoder.training or device_type != "cpu" or dtype not in FUSED_DTYPES:
            return None
        x = encoder._normalise(images).to(dtype)
        with torch.autocast(device_type, enabled=False):
            x = encoder.pool(_run(self._folded_plan(encoder, dtype), encoder.resnet[3], x))
        return x.permute(0, 2, 3, 1)  # (batch, 14, 14, encoder_dim): contiguous

    def _folded_plan(self, encoder, dtype: torch.dtype) -> tuple:
        tensors = list(encoder.resnet.parameters()) + list(encoder.resnet.buffers())
        key = (dtype,) + tuple((t.data_ptr(), tensor_version(t), t.device) for t in tensors)
        if self._key != key:
            stem, stages = encoder.resnet[:2], list(encoder.resnet.children())[4:]
            blocks = []
            for block in (b for stage in stages for b in stage):  # torchvision's BasicBlock / Bottleneck
                convs = [_folded(getattr(block, f"conv{i}"), getattr(block, f"bn{i}"), dtype)
                         for i in (1, 2, 3) if hasattr(block, f"conv{i}")]
                shortcut = None if block.downsample is None else _folded(*block.downsample, dtype)
                blocks.append((convs, shortcut))
            self._key, self._plan = key, (_folded(*stem, dtype), blocks)
        return self._plan


def _folded(conv: nn.Conv2d, norm: nn.BatchNorm2d, dtype: torch.dtype) -> tuple:
    """The arguments of a oneDNN convolution computing norm(conv(x)) in eval mode."""
    weight, bias = fuse_conv_bn_weights(conv.weight.float(), None, norm.running_mean, norm.running_var,
                                        norm.eps, norm.weight.float(), norm.bias.float())
    weight = weight.to(dtype).contiguous(memory_format=torch.channels_last)
    return weight, bias.to(dtype), list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups


def _run(plan: tuple, maxpool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The ResNet body on channels-last ``x``: relu(conv) for the stem and inner convolutions,
    relu(conv + shortcut) for each block's last one."""
    conv = fused_convolution()
    stem, blocks = plan
    x = maxpool(conv(x, *stem, "relu", [], ""))
    for convs, shortcut in blocks:
        identity = x if shortcut is None else conv(x, *shortcut, "none", [], "")
        for inner in convs[:-1]:
            x = conv(x, *inner, "relu", [], "")
        x = conv.binary(x, identity, *convs[-1], "add", None, "relu", [], "")
    return x  # (batch, encoder_dim, h, w), channels last
