"""A prepared set is swapped in as a whole, and readers check that it was.

``capcli prep`` gives each build a random generation. Each HDF5 file carries it as a root
attribute; the manifest, renamed into place last, records it with every file's size and token (the
generation of an HDF5 file, the SHA-256 of a JSON file). Before the swap starts, the old manifest is
replaced by a marker that says the set is being replaced. A reader (:func:`check_whole`, called by
:func:`capcli.data.hdf5.find_prepared`) refuses a set that still has the marker (prep stopped while
swapping) or whose word map, captions or images differ from what its manifest records (REFERENCES
files are raw text people extend by hand: not checked). Sets from older versions, whose
manifest has no generation, and sets without a manifest (the tutorial's) are accepted as they are.
"""

from __future__ import annotations

import hashlib
import os
import secrets

import h5py

from capcli.data.jsonfiles import read_json
from capcli.errors import DataError
from capcli.safeio import open_regular
from capcli.text import visible

GENERATION_ATTR = "prep_generation"  # the HDF5 root attribute
REPLACING = "replacing"  # the marker manifest's key


def new_generation() -> str:
    return secrets.token_hex(8)


def replacing_marker(name: str) -> dict:
    """The manifest that stands in place while a new set is swapped in."""
    return {"name": name, REPLACING: True}


def file_token(path: str) -> str:
    """``generation:G`` for an HDF5 file (its attribute, cheap to read), ``sha256:H`` otherwise.

    Raises:
        OSError: the file cannot be read.
        DataError: it is not a regular file (a FIFO would block).
    """
    if path.endswith((".hdf5", ".h5")):
        with h5py.File(path, "r") as f:
            value = f.attrs.get(GENERATION_ATTR, "")
        return f"generation:{value.decode() if isinstance(value, bytes) else value}"
    digest = hashlib.sha256()
    with open_regular(path, error=DataError) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def tokened(role: str) -> bool:
    """Whether prep records a token for the file of ``role`` (``WORDMAP``, ``TRAIN_IMAGES``...): the
    files that must come from one build. Not REFERENCES: raw text that people extend by hand."""
    return not role.endswith("_REFERENCES") and role != "MANIFEST"


def _foreign(folder: str, manifest: dict) -> str | None:
    """The first file whose token differs from the one the manifest records, or None. A file that
    is gone or cannot be read (a torn HDF5 file) is left to its reader, which names the damage."""
    tokens = manifest.get("tokens", {})
    if not isinstance(tokens, dict):
        return "its manifest"
    for name, token in tokens.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        try:
            actual = file_token(path)
        except (OSError, ValueError, KeyError, DataError):
            continue
        if actual != token:
            return name
    return None


def check_whole(folder: str, name: str, manifest_path: str) -> None:
    """Refuse a prepared set that prep left half swapped, or whose files are not the ones its
    manifest records.

    Raises:
        DataError: one line, saying to run ``capcli prep --force`` again.
    """
    if not os.path.exists(manifest_path):
        return  # the tutorial's sets, and sets written before manifests
    manifest = read_json(manifest_path, DataError)
    if not isinstance(manifest, dict):
        raise DataError(f"{visible(manifest_path)}: expected a JSON object; run capcli prep --force again")
    where = visible(os.path.join(folder, ""))
    if manifest.get(REPLACING):
        raise DataError(f"{where}: prepared data {visible(name)} was being replaced when prep stopped; "
                        "run capcli prep --force again")
    if manifest.get("generation") is None:
        return  # a set from a version without generations
    foreign = _foreign(folder, manifest)
    if foreign is not None:
        raise DataError(f"{where}: {visible(foreign)} is not from the prep that wrote the rest of {visible(name)} "
                        "(another build's, or changed since); run capcli prep --force again")
