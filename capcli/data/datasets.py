"""Torch datasets over prepared data: images (or cached features) with their captions.

HDF5 files are opened lazily on first access inside each process, so DataLoader workers work
(an h5py handle cannot be pickled into a worker).
"""

from __future__ import annotations

import h5py
import torch
from torch.utils.data import Dataset


class _LazyH5:
    def __init__(self, path: str, key: str) -> None:
        self.path, self.key = path, key
        self._file = None

    @property
    def data(self):
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        return self._file[self.key]

    def __getstate__(self):
        return {"path": self.path, "key": self.key, "_file": None}

    def __len__(self) -> int:
        with h5py.File(self.path, "r") as f:
            return f[self.key].shape[0]


class ImageCaptions(Dataset):
    """Item i: image i (3, S, S) uint8 or its cached features (14, 14, C) float16, with all of its
    caption rows (captions_per_image, max_len + 2) and their lengths (captions_per_image,).

    Training batches hold whole images with every caption of each, so an image is read (and,
    when the encoder is fine-tuned, encoded) once per epoch instead of once per caption.

    Args:
        source: HDF5 file of images (key ``images``) or cached features (key ``features``).
        captions, caplens: the split's encoded rows; rows ``i * cpi … (i + 1) * cpi - 1`` are image i's.
    """

    def __init__(self, source: str, key: str, captions: list[list[int]], caplens: list[int],
                 captions_per_image: int) -> None:
        self.source = _LazyH5(source, key)
        self.cpi = captions_per_image
        n = len(captions) // captions_per_image
        self.captions = torch.tensor(captions[:n * self.cpi], dtype=torch.long).view(n, self.cpi, -1)
        self.caplens = torch.tensor(caplens[:n * self.cpi], dtype=torch.long).view(n, self.cpi)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.source.data[i]), self.captions[i], self.caplens[i]


class Images(Dataset):
    """Item i: (image or features of image i, i) for per-image work (features, BLEU)."""

    def __init__(self, source: str, key: str, limit: int = 0) -> None:
        self.source = _LazyH5(source, key)
        n = len(self.source)
        self.n = min(n, limit) if limit else n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.from_numpy(self.source.data[i]), i


def pick_captions(captions: torch.Tensor, lengths: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` of each image's captions at random (torch's generator): (images, cpi, L) rows and their
    (images, cpi) lengths → (images, k, L) and (images, k). ``k`` ≥ cpi keeps them all."""
    images, cpi = lengths.shape
    if k >= cpi:
        return captions, lengths
    chosen = torch.rand(images, cpi).argsort(dim=1)[:, :k]  # k different captions of each image
    rows = torch.gather(captions, 1, chosen[:, :, None].expand(-1, -1, captions.shape[2]))
    return rows, torch.gather(lengths, 1, chosen)
