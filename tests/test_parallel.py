"""Prep's worker ring in shared memory, sized to what /dev/shm has room for (containers)."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from capcli.runtime import parallel


def _fill(item: int, out: np.ndarray) -> int:
    out[...] = item
    return item * 10


def _run(workers: int, **kwargs) -> list[tuple[int, int]]:
    return [(result, int(out.sum())) for result, out in
            parallel.ordered_map_into(_fill, range(23), workers, (4, 8), "int64", **kwargs)]


EXPECTED = [(i * 10, i * 32) for i in range(23)]


@pytest.mark.parametrize("room_in_slots, said", [(100, None), (5, "5 image slots"), (1, "through pipes"),
                                                 (0, "through pipes")])
def test_ring_shrinks_to_the_room_in_shared_memory(monkeypatch, room_in_slots, said):
    """With room for the whole ring it is used as is; with less, fewer slots (at least one per
    worker) or none; the results are the same and in order, and one line says what changed."""
    slot = 4 * 8 * 8
    monkeypatch.setattr(parallel, "shared_memory_budget", lambda folder=parallel.SHM_FOLDER: room_in_slots * slot)
    messages: list[str] = []
    assert _run(2, on_shrink=messages.append) == EXPECTED
    assert _run(1) == EXPECTED
    if said is None:
        assert messages == []
    else:
        assert len(messages) == 1 and said in messages[0] and "/dev/shm" in messages[0]


def test_a_full_shared_memory_folder_is_found_before_any_worker_writes(monkeypatch):
    """Where allocating the ring's pages fails (another process filled /dev/shm after it was
    measured), the workers fall back to pipes instead of dying of SIGBUS."""
    def full(fd, offset, length):
        raise OSError(28, "No space left on device")

    before = set(os.listdir(parallel.SHM_FOLDER))
    monkeypatch.setattr(os, "posix_fallocate", full)
    messages: list[str] = []
    assert _run(2, on_shrink=messages.append) == EXPECTED
    assert len(messages) == 1 and "through pipes" in messages[0]
    assert set(os.listdir(parallel.SHM_FOLDER)) == before  # the block that did not fit is gone


def test_prep_in_a_container_sized_shm_writes_the_same_images(monkeypatch, tmp_path, run):
    """`capcli prep --workers 2` with room for only two image slots: exit 0, one line about the
    shrunken ring, and the same HDF5 images as one worker writes."""
    monkeypatch.setattr(parallel, "shared_memory_budget", lambda folder=parallel.SHM_FOLDER: 2 * 16 * 3 * 64 * 64)
    outputs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        result = run("prep", "--num-images", 24, "--image-size", 64, "--workers", workers, "--output-folder", out)
        assert result.exit_code == 0, result.output
        assert ("/dev/shm" in result.output) == (workers == 2), result.output
        with h5py.File(out / "TRAIN_IMAGES_shapes_5_5.hdf5") as f:
            outputs[workers] = f["images"][()]
    assert np.array_equal(outputs[1], outputs[2])
