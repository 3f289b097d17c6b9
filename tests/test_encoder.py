"""The CPU kernels' encoder inference (fused convolutions) gives the textbook ResNet's features."""

from __future__ import annotations

import pytest
import torch

from capcli.model import cpu
from capcli.model.cpu import encoder as cpu_encoder
from capcli.model.cpu import selfcheck
from capcli.model.encoder import Encoder

CPU = torch.device("cpu")


def _calibrated(name: str, seed: int) -> tuple[Encoder, torch.Tensor]:
    """An encoder whose BatchNorms are not the identity (statistics from random images, random
    affine parameters), and images to encode."""
    torch.manual_seed(seed)
    encoder = Encoder(name)
    images = torch.rand(3, 3, 64, 64)
    encoder.calibrate_batchnorm([images])
    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    assert cpu.enable(CPU, encoder) and encoder.kernels is not None
    return encoder.eval(), images


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet-small"])  # BasicBlock, Bottleneck, narrow
def test_fused_inference_gives_the_eager_features(name):
    encoder, images = _calibrated(name, 0)
    with torch.no_grad():
        eager = encoder(images)
    fused = encoder.infer(images)
    assert fused.shape == eager.shape and fused.is_contiguous()
    assert _relative_error(fused, eager) < 1e-4
    assert not torch.equal(fused, eager)  # it did take the fused path (folded weights round differently)


def test_fused_bf16_inference_is_as_accurate_as_bf16_autocast():
    encoder, images = _calibrated("resnet18", 1)
    with torch.no_grad():
        exact = encoder(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            eager = encoder(images)
            fused = encoder.infer(images)
    assert fused.dtype == eager.dtype == torch.bfloat16
    assert _relative_error(fused, exact) < 2 * _relative_error(eager, exact) + 1e-3
    assert _relative_error(fused, exact) < 0.1


def test_fused_inference_follows_new_weights_and_statistics():
    encoder, images = _calibrated("resnet18", 2)
    before = encoder.infer(images)
    other, _ = _calibrated("resnet18", 3)
    encoder.load_state_dict(other.state_dict())
    with torch.no_grad():
        eager = encoder(images)
    after = encoder.infer(images)
    assert _relative_error(after, before) > 0.1
    assert _relative_error(after, eager) < 1e-4
    encoder.calibrate_batchnorm([images * 0.5])  # statistics change in place
    with torch.no_grad():
        eager = encoder(images)
    assert _relative_error(encoder.infer(images), eager) < 1e-4


def test_inference_in_training_mode_or_without_fused_convolutions_is_the_eager_forward(monkeypatch):
    encoder, images = _calibrated("resnet18", 4)
    with torch.no_grad():
        eager = encoder(images)
    monkeypatch.setattr(cpu_encoder, "available", lambda: False)
    selfcheck.encoder_problem.cache_clear()  # the check runs once a process: again, on this "torch"
    assert cpu.enable(CPU, encoder) and encoder.kernels is None
    assert torch.equal(encoder.infer(images), eager)
    monkeypatch.undo()
    selfcheck.encoder_problem.cache_clear()
    cpu.enable(CPU, encoder)
    encoder.train()  # batch statistics: the folded running statistics would be wrong
    with torch.no_grad():
        training = encoder(images)
    assert torch.equal(encoder.infer(images), training)


def test_the_small_resnet_is_narrow_trains_whole_and_has_no_imagenet_weights():
    from capcli.errors import CapcliError
    from capcli.model.pretrained import load_pretrained

    encoder = Encoder("resnet-small", encoded_size=8)
    with torch.no_grad():
        features = encoder(torch.rand(2, 3, 128, 128))
    assert features.shape == (2, 8, 8, 128) and encoder.dim == 128
    assert sum(p.numel() for p in encoder.parameters()) < 0.1 * sum(p.numel() for p in Encoder("resnet18").parameters())
    encoder.set_fine_tune(True)
    assert all(p.requires_grad for p in encoder.parameters())  # nothing pretrained to keep frozen
    resnet18 = Encoder("resnet18")
    resnet18.set_fine_tune(True)
    assert not resnet18.resnet[0].weight.requires_grad and resnet18.resnet[5][0].conv1.weight.requires_grad
    with pytest.raises(CapcliError, match="resnet-small has no ImageNet weights.*--no-pretrained"):
        load_pretrained(encoder)
