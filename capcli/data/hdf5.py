"""The prepared-data file set, written and read side by side (its names: ``capcli.paths``).

Per split: ``{SPLIT}_IMAGES_{name}.hdf5`` (dataset ``images``, uint8, (N, 3, S, S), RGB, root
attribute ``captions_per_image``), ``{SPLIT}_CAPTIONS_{name}.json`` (N × captions_per_image
encoded rows; row j belongs to image j // captions_per_image) and ``{SPLIT}_CAPLENS_{name}.json``
(true length + 2); from newer preps ``{SPLIT}_REFERENCES_{name}.json``, per image in HDF5 order
the list of all its raw reference captions, each its ``coco_tokenize`` tokens joined by single
spaces. One ``WORDMAP_{name}.json`` and, from capcli, ``MANIFEST_{name}.json``.

Readers also accept the a-PyTorch-Tutorial-to-Image-Captioning naming
(``{dataset}_{cpi}_cap_per_img_{mwf}_min_word_freq``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import h5py
import numpy as np

from capcli.data.generation import GENERATION_ATTR, check_whole
from capcli.data.jsonfiles import read_json
from capcli.data.vocab import Detokenizer
from capcli.errors import DataError, first_line
from capcli.paths import data_file, name_candidates, prepared_names, references_file
from capcli.safeio import atomic_path


class _GuardedFile:
    """The file object h5py writes through. The first failed write (a full disk) is kept and
    every later write is dropped: the HDF5 library, once a flush has failed, crashes the
    interpreter at exit, so it must never see a failure. The writer raises it instead.
    Unbuffered, so that a failure happens in ``write`` and not later in a seek or flush."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path  # the name to report: the final file, not its temporary name
        self.raw = open(fd, "r+b", buffering=0)
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while self.error is None and done < len(view):
            try:
                done += self.raw.write(view[done:]) or 0
            except OSError as exc:
                self.error = exc
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        try:
            return self.raw.truncate(size)
        except OSError as exc:
            self.error = self.error or exc
            return self.raw.tell() if size is None else size

    def flush(self) -> None:
        pass  # unbuffered: nothing waits to be written

    def __getattr__(self, name: str):  # seek, tell, readinto
        return getattr(self.raw, name)

    def check(self) -> None:
        """Raise the first failed write, naming the file."""
        if self.error is not None:
            raise OSError(self.error.errno or errno.EIO, self.error.strerror or str(self.error), self.path)


@contextlib.contextmanager
def atomic_hdf5(path: str) -> Iterator[tuple[h5py.File, _GuardedFile]]:
    """A new HDF5 file and its guard; the file becomes ``path`` when the block ends without an
    error and no write failed (see :func:`capcli.safeio.atomic_path`)."""
    with atomic_path(path) as temp:
        guard = _GuardedFile(path, os.open(temp, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC))
        file = h5py.File(guard, "w")
        try:
            yield file, guard
        finally:
            try:
                file.close()
            finally:
                guard.raw.close()
        guard.check()


class ImageWriter:
    """Streams slabs of (3, S, S) uint8 images into a growing HDF5 ``images`` dataset, written as
    :func:`atomic_hdf5` writes (``path`` appears when the writer closes without an error)."""

    def __init__(self, path: str, image_size: int, captions_per_image: int, generation: str = "") -> None:
        self._open = atomic_hdf5(path)
        self.file, self.guard = self._open.__enter__()
        self.file.attrs["captions_per_image"] = captions_per_image
        if generation:
            self.file.attrs[GENERATION_ATTR] = generation  # prep's build (capcli.data.generation)
        shape = (3, image_size, image_size)
        self.images = self.file.create_dataset(
            "images", shape=(0, *shape), maxshape=(None, *shape), dtype="uint8", chunks=(1, *shape))
        self.count = 0

    def append(self, images: np.ndarray) -> None:
        """Append a (k, 3, S, S) uint8 slab."""
        end = self.count + len(images)
        if end > self.images.shape[0]:
            self.images.resize(max(end, 2 * self.images.shape[0]), axis=0)
        self.images[self.count:end] = images
        self.count = end
        self.guard.check()

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                self.images.resize(self.count, axis=0)  # drop the rows reserved ahead
        except BaseException:
            self._open.__exit__(*sys.exc_info())  # closes the file and removes its temporary name
            raise
        self._open.__exit__(*exc)


@dataclass(frozen=True)
class PreparedData:
    """Paths of one prepared data set (either naming scheme)."""

    folder: str
    name: str  # the part after "WORDMAP_", e.g. "shapes_5_5"

    def path(self, kind: str, split: str | None = None) -> str:
        """``kind`` is IMAGES, CAPTIONS, CAPLENS (with a split), WORDMAP or MANIFEST."""
        return data_file(self.folder, self.name, kind, split)

    def word_map(self) -> dict[str, int]:
        data = read_json(self.path("WORDMAP"), DataError)
        if not isinstance(data, dict):
            raise DataError(f"{self.path('WORDMAP')}: expected an object of word → id")
        return data

    def images_meta(self, split: str) -> tuple[int, int]:
        """(captions per image, image side) of the split's HDF5 images, after checking that the
        file is whole (its first and last image can be read).

        Raises:
            DataError: a missing, truncated or corrupt file, or one without ``images``.
        """
        path = self.path("IMAGES", split)
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such file; the {split} split of {self.name} is missing "
                            f"(run `capcli prep` again with --force)")
        try:
            with h5py.File(path, "r") as f:
                images = f["images"]
                if images.ndim != 4 or images.shape[1] != 3:
                    raise DataError(f"{path}: 'images' has shape {images.shape}, expected (N, 3, S, S)")
                if len(images):
                    images[0], images[-1]  # a truncated file fails here
                return int(f.attrs["captions_per_image"]), int(images.shape[-1])
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"{path}: truncated or corrupt HDF5 file ({first_line(exc, 120)}); rebuild it with "
                            "`capcli prep --force`") from None

    def captions(self, split: str) -> tuple[list[list[int]], list[int]]:
        """Encoded caption rows and their lengths (true length + 2) for ``split``."""
        return (read_json(self.path("CAPTIONS", split), DataError),
                read_json(self.path("CAPLENS", split), DataError))


RAW_REFERENCES = "coco_tokenize: every raw reference, lower-case, punctuation removed as the COCO PTBTokenizer does"
CAPTION_ROWS = "caption rows: captions_per_image encoded references per image, rare words as <unk>"


@dataclass(frozen=True)
class References:
    """The reference captions of a split's images, as scores take them."""

    captions: list[list[list[str]]]  # per image in HDF5 order, each reference's tokens
    source: str  # the file they were read from
    tokenization: str  # RAW_REFERENCES or CAPTION_ROWS


def split_references(prepared: PreparedData, split: str, count: int) -> References:
    """The references of the split's first ``count`` images: every raw reference from the REFERENCES
    file when prep wrote one, else (older prepared folders) the image's encoded caption rows.

    Raises:
        DataError: a REFERENCES file that is not a list of lists of strings, or that has fewer
            entries than ``count`` (or the caption files, without it, have too few rows).
    """
    path = references_file(prepared.folder, prepared.name, split)
    if os.path.exists(path):
        data = read_json(path, DataError)
        if not (isinstance(data, list) and len(data) >= count and all(
                isinstance(refs, list) and refs and all(isinstance(r, str) for r in refs) for refs in data[:count])):
            raise DataError(f"{path}: expected, for each of the split's {count} images, a non-empty list of "
                            "reference captions (strings); rebuild it with `capcli prep --force`")
        return References([[r.split() for r in refs] for refs in data[:count]], path, RAW_REFERENCES)
    cpi = prepared.images_meta(split)[0]
    rows, _ = prepared.captions(split)
    if len(rows) < count * cpi:
        raise DataError(f"{prepared.path('CAPTIONS', split)}: {len(rows)} caption rows for {count} images × {cpi}; "
                        "rebuild it with `capcli prep --force`")
    words = Detokenizer(prepared.word_map())
    return References([[words(r) for r in rows[i * cpi:(i + 1) * cpi]] for i in range(count)],
                      prepared.path("CAPTIONS", split), CAPTION_ROWS)


def find_prepared(folder: str, name: str | None = None) -> PreparedData:
    """Locate a prepared data set in ``folder``; ``name`` may be omitted when there is only one.
    The set must be whole (:func:`capcli.data.generation.check_whole`).

    Raises:
        DataError: no data set, or several and no name, naming what exists; a set that prep
            left half replaced.
    """
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no such folder (run `capcli prep` first)")
    names = prepared_names(folder)
    if name is not None:
        for candidate in name_candidates(name):
            if candidate in names:
                return _whole(PreparedData(folder, candidate))
        raise DataError(f"no prepared data named {name!r} in {folder} "
                        f"(found: {', '.join(names) or 'none'})")
    if len(names) == 1:
        return _whole(PreparedData(folder, names[0]))
    if not names:
        raise DataError(f"no prepared data in {folder} (run `capcli prep` first)")
    raise DataError(f"several prepared data sets in {folder}: {', '.join(names)} (choose one with --data-name)")



def _whole(prepared: PreparedData) -> PreparedData:
    check_whole(prepared.folder, prepared.name, prepared.path("MANIFEST"))
    return prepared
