"""torchvision's modern image classifiers as feature grids: ConvNeXt, EfficientNetV2, RegNetY,
Swin (and Swin V2) and ViT, each without its classifier.

A backbone keeps torchvision's own parts under torchvision's names (``features``; ``stem`` and
``trunk_output``; ``conv_proj``, ``class_token`` and ``encoder``), so a state dict of the whole
torchvision model (its ImageNet weights, or a file saved from it) loads into it once the
classifier's weights are left out.
"""

from __future__ import annotations

import torch
from torch import nn

from capcli.config import TORCHVISION_ENCODERS, Preprocess
from capcli.model.grid import Backbone, Unit
from capcli.runtime.torch_compat import import_torchvision

# encoder name → family (torchvision's model names start with their family's)
FAMILIES = {name: next(f for f in ("convnext", "efficientnet_v2", "regnet_y", "swin", "vit") if name.startswith(f))
            for name in TORCHVISION_ENCODERS}


def torchvision_model(name: str) -> nn.Module:
    """torchvision's model ``name`` with random weights, on the default device."""
    models = import_torchvision().models
    try:
        return models.get_model(name, weights=None)
    except NotImplementedError:  # on the meta device: RegNet works out its widths with tensors
        device = torch.empty(0).device
        with torch.device("cpu"):
            return models.get_model(name, weights=None).to(device)


def classifier_free(name: str, state: dict) -> dict:
    """The entries of a state dict of torchvision's model ``name`` that its backbone keeps."""
    parts = _BACKBONES[FAMILIES[name]].parts
    return {k: v for k, v in state.items() if k.split(".", 1)[0] in parts}


def torchvision_weights(name: str):
    """torchvision's default (best) ImageNet weights for ``name``: a ``WeightsEnum`` member."""
    return import_torchvision().models.get_model_weights(name).DEFAULT


def torchvision_preprocess(name: str) -> Preprocess:
    """The input the default weights of ``name`` were trained on, from their metadata (no download)."""
    preset = torchvision_weights(name).transforms()
    return Preprocess(size=preset.crop_size[0], resize=preset.resize_size[0], mean=tuple(preset.mean),
                      std=tuple(preset.std), interpolation=preset.interpolation.value)


def build_backbone(name: str) -> Backbone:
    return _BACKBONES[FAMILIES[name]](torchvision_model(name))


class TorchvisionBackbone(Backbone):
    """torchvision's model without its classifier: the ``parts`` it keeps, under their own names."""

    parts: tuple[str, ...]
    stride, default_depth = 32, 2

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        for part in self.parts:
            setattr(self, part, getattr(model, part))
        self.dim = self.width(model)

    @staticmethod
    def width(model: nn.Module) -> int:
        """The channels of the grid: what the classifier takes."""
        return model.classifier[-1].in_features


class _Features(TorchvisionBackbone):
    """A network whose ``features`` give (batch, C, H, W) at stride 32."""

    parts = ("features",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).permute(0, 2, 3, 1)


class ConvNeXt(_Features):
    def units(self) -> list[Unit]:
        """The stem with the first stage, then each downsampling layer with the stage after it."""
        parts = list(self.features.children())
        return [parts[i:i + 2] for i in range(0, len(parts), 2)]


class EfficientNetV2(_Features):
    def units(self) -> list[Unit]:
        """The stem, each stage of MBConv/FusedMBConv blocks, and the last 1×1 convolution."""
        return [[m] for m in self.features.children()]


class RegNetY(TorchvisionBackbone):
    parts = ("stem", "trunk_output")

    @staticmethod
    def width(model: nn.Module) -> int:
        return model.fc.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk_output(self.stem(x)).permute(0, 2, 3, 1)

    def units(self) -> list[Unit]:
        return [[self.stem], *([m] for m in self.trunk_output.children())]


class Swin(TorchvisionBackbone):
    """Swin's ``features`` already give (batch, H, W, C); ``norm`` is its last LayerNorm."""

    parts = ("features", "norm")

    @staticmethod
    def width(model: nn.Module) -> int:
        return model.head.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.features(x))

    def units(self) -> list[Unit]:
        """The patch embedding with the first stage, then each patch merging with the stage after
        it (the last with the final norm)."""
        parts = list(self.features.children())
        units = [parts[i:i + 2] for i in range(0, len(parts), 2)]
        units[-1].append(self.norm)
        return units


class ViT(TorchvisionBackbone):
    """The patch tokens of the last encoder block, laid back on their grid (class token dropped)."""

    parts = ("conv_proj", "class_token", "encoder")
    default_depth = 4

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.stride = model.patch_size

    @staticmethod
    def width(model: nn.Module) -> int:
        return model.hidden_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.conv_proj(x)  # (batch, C, h, w)
        batch, dim, h, w = patches.shape
        tokens = torch.cat([self.class_token.expand(batch, -1, -1), patches.flatten(2).transpose(1, 2)], dim=1)
        return self.encoder(tokens)[:, 1:].reshape(batch, h, w, dim)

    def units(self) -> list[Unit]:
        """The patch embedding, then each encoder block (the last with the final LayerNorm)."""
        blocks = [[m] for m in self.encoder.layers.children()]
        blocks[-1].append(self.encoder.ln)
        return [[self.conv_proj], *blocks]

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [("conv_proj", self.conv_proj), *((f"encoder.{n}", m) for n, m in self.encoder.layers.named_children()),
                ("encoder.ln", self.encoder.ln)]


_BACKBONES: dict[str, type[TorchvisionBackbone]] = {"convnext": ConvNeXt, "efficientnet_v2": EfficientNetV2,
                                                    "regnet_y": RegNetY, "swin": Swin, "vit": ViT}
