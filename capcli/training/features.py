"""The frozen-encoder feature cache: float16 HDF5 next to the prepared data.

With a frozen encoder the CNN output of an image never changes, so it is computed once per split
and reused by later epochs and later runs. The file name carries a key made from the encoder's
name, weights, grid and input preparation (its input size) and the image size, so other weights or
sizes get a cache of their own. Under
torchrun every rank encodes its share of the batches and rank 0 alone writes the file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from capcli.data.datasets import Images
from capcli.data.hdf5 import PreparedData, atomic_hdf5
from capcli.paths import features_file
from capcli.runtime.device import Precision
from capcli.runtime.distributed import DistInfo, barrier, from_main, gather_on_main, my_batches, rounds
from capcli.runtime.progress import Progress


def encoder_fingerprint(encoder) -> str:
    """A digest of the encoder's architecture and weights (hash once per run: it reads every weight)."""
    key = f"{encoder.name}:{(encoder.grid, encoder.grid)}"
    if encoder.preprocess is not None:  # a ResNet's key (none) is as it always was
        key += f":{encoder.preprocess}"
    digest = hashlib.sha256(key.encode())
    for name, tensor in encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_key(fingerprint: str, image_size: int) -> str:
    """The cache file key: encoder weights + the image size features are computed from."""
    return hashlib.sha256(f"{fingerprint}:{image_size}".encode()).hexdigest()[:16]


def features_path(prepared: PreparedData, split: str, key: str) -> str:
    return features_file(prepared.folder, split, prepared.name, key)


def encode_images(encoder, images: torch.Tensor, device: torch.device, precision: Precision,
                  train: bool = False) -> torch.Tensor:
    """uint8 (batch, 3, S, S) → encoder features (batch, 14, 14, C): without gradients through
    ``Encoder.infer``, or with ``train`` through the encoder's forward, for fine-tuning it."""
    x = images.to(device, non_blocking=True).float().div_(255.0)
    with precision.autocast():
        return encoder(x) if train else encoder.infer(x)


def _encoded_rounds(encoder, images: Images, device: torch.device, precision: Precision, ranks: DistInfo,
                    batch_size: int) -> Iterator[list[tuple[int, torch.Tensor]] | None]:
    """For each round, on rank 0, (first image, float16 features) of the batch each rank encoded
    (batch k is rank k % world's); None on the other ranks. Every rank must exhaust it."""
    count = -(-len(images) // batch_size)
    size, dim = encoder.grid, encoder.dim
    loader = iter(DataLoader(images, batch_sampler=[range(k * batch_size, min((k + 1) * batch_size, len(images)))
                                                    for k in my_batches(count, ranks)]))
    for step in range(rounds(count, ranks)):
        batch = next(loader, None)  # a rank short of batches sends zeros that rank 0 drops
        out = torch.zeros(batch_size, size, size, dim, dtype=torch.float16)  # (batch, 14, 14, C)
        if batch is not None:
            x, _ = batch
            out[:len(x)] = encode_images(encoder, x, device, precision).float().cpu()
        parts = gather_on_main(out, ranks)
        if parts is None:
            yield None
            continue
        firsts = [(step * ranks.world + r) * batch_size for r in range(ranks.world)]
        yield [(first, part[:max(0, min(batch_size, len(images) - first))].cpu())
               for first, part in zip(firsts, parts)]


def ensure_features(encoder, prepared: PreparedData, split: str, key: str, device: torch.device,
                    precision: Precision, progress: Progress, ranks: DistInfo | None = None,
                    batch_size: int = 32) -> str:
    """Path of the split's cached features under ``key``, computing them first if needed (atomic
    write by rank 0; the other ranks encode their share, then wait for the file)."""
    path = features_path(prepared, split, key)
    ranks = ranks or DistInfo()
    if from_main(os.path.exists(path), ranks):
        return path
    images = Images(prepared.path("IMAGES", split), "images")
    encoder.eval()
    batches = _encoded_rounds(encoder, images, device, precision, ranks, batch_size)
    if not ranks.is_main:
        for _ in batches:
            pass
        barrier(ranks)
        return path
    task = progress.task(f"caching {split} features", len(images), "img")
    with atomic_hdf5(path) as (f, guard):
        size, dim = encoder.grid, encoder.dim
        data = f.create_dataset("features", (len(images), size, size, dim), dtype="float16",
                                chunks=(1, size, size, dim))
        for parts in batches:
            for first, features in parts:
                if len(features):
                    data[first:first + len(features)] = features.numpy()
                    task.advance(len(features))
            guard.check()  # a full disk stops the caching at once
    task.close()
    barrier(ranks)
    return path
