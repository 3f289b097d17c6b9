"""How ``capcli demo`` sizes its work to the machine it runs on.

The demo's time is almost all training the small ResNet, whose cost grows with the pixels of its
images. Before anything is written the demo times a few training steps of its model at 128 pixels
on random data, in the precision and with the kernels training will use, and from them estimates
the full run. Where that fits :data:`TRAINING_BUDGET_S` (CPUs with native bf16, GPUs) it trains as
the shapes recipe does; where it does not (CPUs without native bf16: AVX2-only laptops and VMs,
Apple Silicon's CPU) it trains on smaller scenes, a schedule measured to still name the drawn
shapes right (docs/performance.md). Prepared data already in the data folder keeps its size, so a
second run resumes the first. Options the user gives win.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from capcli.config import SHAPES_IMAGE_SIZE, SHAPES_TRAIN_DEFAULTS, ModelConfig

TRAINING_BUDGET_S = 330  # the demo's 10 minutes less install (~2), prep and evaluation (~1.5), a margin
FULL = (SHAPES_IMAGE_SIZE, 3, 5)  # (image side, object-pretraining epochs, captioning epochs)
SMALL = (80, 3, 5)
TRAIN_SHARE = 0.8  # of the scenes: the train split
OVERHEAD = 2.0  # a real epoch's time over its timed steps' (reading images, validation, smaller batches)
_VOCAB, _CAPTION = 40, 22  # about the shapes set's word map and longest encoded caption
_STEP_IMAGES, _TIMED_STEPS = 32, 3
_KINDS = 24  # of object: 6 colours × 4 shapes


@dataclass(frozen=True)
class DemoPlan:
    image_size: int
    concept_epochs: int
    epochs: int
    reason: str  # one line: what was chosen and why


def plan_demo(device: torch.device, precision, num_images: int, epochs: int | None = None,
              image_size: int | None = None, prepared_size: int | None = None) -> DemoPlan:
    """The demo's image size and epochs on ``device``.

    Args:
        precision: the :class:`capcli.runtime.device.Precision` training will use.
        epochs, image_size: the user's, when given (they win).
        prepared_size: the image side of shapes data already prepared in the demo's folder.
    """
    if image_size is not None or prepared_size is not None:
        side = image_size or prepared_size
        why = "as asked" if image_size is not None else "the scenes already prepared"
        concept_epochs, planned = (FULL if side >= SHAPES_IMAGE_SIZE else SMALL)[1:]
        return DemoPlan(side, concept_epochs, epochs or planned, f"Demo: {side}-pixel scenes ({why}).")
    encoder_only, per_image = seconds_per_training_image(device, precision, SHAPES_IMAGE_SIZE)
    train_images = num_images * TRAIN_SHARE
    estimate = OVERHEAD * train_images * (FULL[1] * encoder_only + (epochs or FULL[2]) * per_image)
    measured = (f"a training step took {per_image * _STEP_IMAGES:.2f} s for {_STEP_IMAGES} images here "
                f"({precision.name} on {device.type}), so {SHAPES_IMAGE_SIZE}-pixel training would take "
                f"~{_minutes(estimate)}")
    if estimate <= TRAINING_BUDGET_S:
        return DemoPlan(FULL[0], FULL[1], epochs or FULL[2],
                        f"Demo: {FULL[0]}-pixel scenes: {measured}, within its {_minutes(TRAINING_BUDGET_S)}.")
    return DemoPlan(SMALL[0], SMALL[1], epochs or SMALL[2],
                    f"Demo: {SMALL[0]}-pixel scenes: {measured}, over its {_minutes(TRAINING_BUDGET_S)} "
                    f"(`--image-size {FULL[0]}` insists).")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def seconds_per_training_image(device: torch.device, precision, image_size: int) -> tuple[float, float]:
    """Wall seconds per image of a training step of the demo's encoder alone (object pretraining) and
    of the whole model (encoder and decoder trained, one caption an image), on random data, each
    after a warm-up step; the caller's random numbers are kept."""
    from capcli.model import cpu as cpu_kernels
    from capcli.model.captioner import build_model

    shapes = {k: v for k, v in SHAPES_TRAIN_DEFAULTS.items() if k in ModelConfig.__dataclass_fields__}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder, decoder = build_model(ModelConfig(vocab_size=_VOCAB, **shapes))
        encoder.set_fine_tune(True)
        encoder, decoder = encoder.to(device).train(), decoder.to(device).train()
        cpu_kernels.enable(device, encoder, decoder)
        optimizer = torch.optim.Adam([p for p in [*encoder.parameters(), *decoder.parameters()] if p.requires_grad])
        images = torch.rand(_STEP_IMAGES, 3, image_size, image_size, device=device)
        captions = torch.randint(3, _VOCAB, (_STEP_IMAGES, _CAPTION), device=device)
        lengths = torch.full((_STEP_IMAGES,), _CAPTION - 2, device=device)
        targets = torch.randint(3, _VOCAB, (_STEP_IMAGES, _CAPTION), device=device)
        kinds = torch.randint(0, 2, (_STEP_IMAGES, _KINDS), device=device).float()

        def step(whole: bool) -> None:
            with precision.autocast():
                features = encoder(images)  # (batch, grid, grid, encoder_dim)
                if whole:  # the next word of every caption (targets: random words)
                    logits = decoder(features, captions, lengths)[0]  # (batch, words, vocab)
                    loss = F.cross_entropy(logits.float().flatten(0, 1), targets[:, :logits.shape[1]].flatten())
                else:  # the kinds of object in each image, as object pretraining has it
                    loss = F.binary_cross_entropy_with_logits(features.float().mean((1, 2))[:, :_KINDS], kinds)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        return _timed(device, lambda: step(False)), _timed(device, lambda: step(True))


def _timed(device: torch.device, step) -> float:
    step()  # warm-up: oneDNN makes its kernels for each shape on first use
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(_TIMED_STEPS):
        step()
    _synchronize(device)
    return (time.perf_counter() - start) / (_TIMED_STEPS * _STEP_IMAGES)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
