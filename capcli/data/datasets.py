"""Torch datasets over prepared data: caption rows with their image (or cached features).

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


class CaptionRows(Dataset):
    """Item i: (image (3, S, S) uint8 or features (14, 14, C) float16, caption row, length).

    Args:
        source: HDF5 file of images (key ``images``) or cached features (key ``features``).
        captions, caplens: the split's encoded rows; row i belongs to item i // captions_per_image.
    """

    def __init__(self, source: str, key: str, captions: list[list[int]], caplens: list[int],
                 captions_per_image: int) -> None:
        self.source = _LazyH5(source, key)
        self.captions = torch.tensor(captions, dtype=torch.long)
        self.caplens = torch.tensor(caplens, dtype=torch.long)
        self.cpi = captions_per_image

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.source.data[i // self.cpi])
        return x, self.captions[i], self.caplens[i]


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
