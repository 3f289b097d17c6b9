"""The frozen-encoder feature cache: float16 HDF5 next to the prepared data.

With a frozen encoder the CNN output of an image never changes, so it is computed once per split
and reused by later epochs and later runs. The file name carries a key made from the encoder's
name, weights and the image size, so other weights or sizes get a cache of their own.
"""

from __future__ import annotations

import hashlib
import os

import torch
from torch.utils.data import DataLoader

from capcli.data.datasets import Images
from capcli.data.hdf5 import PreparedData, atomic_hdf5
from capcli.device import Precision
from capcli.paths import features_file
from capcli.progress import Progress


def encoder_fingerprint(encoder) -> str:
    """A digest of the encoder's architecture and weights (hash once per run: it reads every weight)."""
    digest = hashlib.sha256(f"{encoder.name}:{encoder.pool.output_size}".encode())
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


def ensure_features(encoder, prepared: PreparedData, split: str, key: str, device: torch.device,
                    precision: Precision, progress: Progress, batch_size: int = 32) -> str:
    """Path of the split's cached features under ``key``, computing them first if needed (atomic write)."""
    path = features_path(prepared, split, key)
    if os.path.exists(path):
        return path
    images = Images(prepared.path("IMAGES", split), "images")
    loader = DataLoader(images, batch_size=batch_size, shuffle=False)
    encoder.eval()
    task = progress.task(f"caching {split} features", len(images), "img")
    with atomic_hdf5(path) as (f, guard):
        size, dim = encoder.pool.output_size[0], encoder.dim
        data = f.create_dataset("features", (len(images), size, size, dim), dtype="float16",
                                chunks=(1, size, size, dim))
        for batch, index in loader:
            out = encode_images(encoder, batch, device, precision)  # (batch, 14, 14, C)
            data[int(index[0]):int(index[-1]) + 1] = out.float().cpu().numpy().astype("float16")
            guard.check()  # a full disk stops the caching at once
            task.advance(len(index))
    task.close()
    return path
