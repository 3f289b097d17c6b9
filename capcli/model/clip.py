"""CLIP's image towers from open_clip (the ``clip`` extra) as feature grids: ``clip:ARCH`` with
OpenAI's weights where open_clip has them (else its first pretrained tag), or ``clip:ARCH:TAG``.

A ViT tower gives its patch tokens after its last LayerNorm (open_clip's ``output_tokens``), laid
back on their grid; a ModifiedResNet tower (RN50...) its last stage's map, before the attention
pooling. The tower keeps open_clip's parameter names under ``visual.``, as in a whole CLIP model's
state dict.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from capcli.config import CLIP_PREFIX, Preprocess
from capcli.errors import CapcliError
from capcli.model.grid import Backbone, Unit
from capcli.runtime.torch_compat import import_torchvision

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI's, open_clip's default
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def open_clip():
    """The open_clip package, or one line naming the extra that installs it."""
    import_torchvision()  # first, as capcli imports it: open_clip imports torchvision too
    try:
        import open_clip as package
    except ImportError:
        raise CapcliError("CLIP encoders need open_clip: pip install 'capcli[clip]'") from None
    return package


def is_clip(name: str) -> bool:
    return name.startswith(CLIP_PREFIX)


def parse(name: str) -> tuple[str, str | None]:
    """``clip:ARCH[:TAG]`` → (ARCH, TAG): TAG is open_clip's pretrained tag, by default "openai"
    where ARCH has it, else its first (None: no published weights)."""
    arch, _, tag = name[len(CLIP_PREFIX):].partition(":")
    package = open_clip()
    if arch not in package.list_models():
        raise CapcliError(f"unknown CLIP model {arch!r} in {name!r}: open_clip has e.g. ViT-B-32, ViT-B-16, RN50 "
                          "(python -c 'import open_clip; print(open_clip.list_models())')")
    tags = package.list_pretrained_tags_by_model(arch)
    if tag and tag not in tags:
        raise CapcliError(f"{name}: open_clip has no weights tagged {tag!r} for {arch} (it has: "
                          f"{', '.join(tags) or 'none'})")
    return arch, tag or ("openai" if "openai" in tags else (tags[0] if tags else None))


def clip_preprocess(name: str) -> Preprocess:
    """The input the tagged weights expect: open_clip's image size, and the weights' own mean, std
    and interpolation where their configuration gives them (OpenAI's otherwise)."""
    arch, tag = parse(name)
    package = open_clip()
    size = package.get_model_config(arch)["vision_cfg"]["image_size"]
    size = size if isinstance(size, int) else size[0]
    cfg = (package.get_pretrained_cfg(arch, tag) if tag else None) or {}
    return Preprocess(size=size, resize=size, mean=tuple(cfg.get("mean") or _CLIP_MEAN),
                      std=tuple(cfg.get("std") or _CLIP_STD), interpolation=cfg.get("interpolation") or "bicubic")


def build_backbone(name: str) -> Backbone:
    arch, _ = parse(name)
    device = torch.empty(0).device  # the meta device while weights are checked
    logging.disable(logging.WARNING)  # "No pretrained weights loaded": capcli loads them itself
    try:
        visual = open_clip().create_model(arch, pretrained=None, device=device).visual
    finally:
        logging.disable(logging.NOTSET)
    if hasattr(visual, "transformer") and hasattr(visual, "conv1"):
        return ClipViT(visual)
    if hasattr(visual, "layer4") and hasattr(visual, "stem"):
        return ClipResNet(visual)
    raise CapcliError(f"{name}: capcli takes CLIP's ViT and ResNet image towers, not {type(visual).__name__}")


def download_state(name: str) -> tuple[str, dict]:
    """The tagged weights of ``name``'s image tower through open_clip's own loader (downloaded
    once into its cache, checked against the hash its source gives); returns where from and the
    tower's state dict (``visual.*`` names)."""
    arch, tag = parse(name)
    if tag is None:
        raise CapcliError(f"{name}: open_clip publishes no weights for {arch}; pass --pretrained-weights FILE "
                          "or --no-pretrained")
    package = open_clip()
    try:
        model = package.create_model(arch, pretrained=tag)
    except Exception as exc:  # network, hub or cache errors: open_clip's own types
        raise CapcliError(f"could not get {name}'s weights ({type(exc).__name__}: {str(exc)[:150]}); connect to "
                          "the internet, or pass --pretrained-weights FILE") from None
    return f"open_clip {arch} {tag}", {f"visual.{k}": v for k, v in model.visual.state_dict().items()}


def tower_state(state: dict) -> dict:
    """A whole CLIP model's state dict (or a checkpoint holding one under ``state_dict``, saved
    from a DataParallel model with ``module.`` names) → its image tower's entries."""
    state = state.get("state_dict", state) if isinstance(state.get("state_dict"), dict) else state
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k: v for k, v in state.items() if k.startswith("visual.")}


class ClipViT(Backbone):
    default_depth = 4

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual
        visual.output_tokens = True  # forward returns (pooled, patch tokens)
        self.dim = visual.transformer.width
        self.stride = visual.conv1.kernel_size[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, tokens = self.visual(x)  # (batch, patches, width), after the last LayerNorm
        batch, count, dim = tokens.shape
        side = math.isqrt(count)
        return tokens.reshape(batch, side, side, dim)

    def units(self) -> list[Unit]:
        """The patch embedding, then each residual block (the last with the final LayerNorm)."""
        blocks = [[m] for m in self.visual.transformer.resblocks.children()]
        blocks[-1].append(self.visual.ln_post)
        return [[self.visual.conv1, self.visual.ln_pre], *blocks]

    def stages(self) -> list[tuple[str, nn.Module]]:
        blocks = self.visual.transformer.resblocks.named_children()
        return [("conv1", self.visual.conv1), *((f"resblocks.{n}", m) for n, m in blocks),
                ("ln_post", self.visual.ln_post)]


class ClipResNet(Backbone):
    stride, default_depth = 32, 2

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual
        self.dim = visual.layer4[-1].bn3.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(x)))))
        return x.permute(0, 2, 3, 1)

    def units(self) -> list[Unit]:
        v = self.visual
        stem = [m for n, m in v.named_children() if n.startswith(("conv", "bn", "act", "avgpool"))]
        return [stem, [v.layer1], [v.layer2], [v.layer3], [v.layer4]]

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [(n, m) for n, m in self.visual.named_children() if n != "attnpool"]
