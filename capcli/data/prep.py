"""``capcli prep``: turn a caption source into the seed's prepared file set.

Sources are the synthetic ``shapes`` set (generated here) or caption files of any format
:mod:`capcli.data.sources` reads (Karpathy, COCO, Flickr8k, Kaggle, results.csv, CSV/TSV/JSONL).
Rows of a caption file that cannot be used are skipped and listed in the manifest (``bad_rows``)
with their file and line. Images are decoded in worker processes and streamed into HDF5, so memory does
not grow with the dataset. Everything is written into a staging folder and renamed into place
at the end (the manifest last), so an interrupted prep never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import resource
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from capcli.config import PrepConfig, dataset_name_problem
from capcli.data import shapes
from capcli.data.generation import check_whole, file_token, new_generation, replacing_marker, tokened
from capcli.data.hdf5 import ImageWriter
from capcli.data.jsonfiles import write_json
from capcli.data.karpathy import SourceImage, read_karpathy_json
from capcli.data.prep_signals import Stop, signals_held, stopped_by_signals
from capcli.data.readers import Columns
from capcli.data.sources import Source, SourceOptions, read_source, suggest_dataset
from capcli.data.transforms import ImageSkipped, load_square
from capcli.data.vocab import build_word_map, encode
from capcli.errors import CapcliError, InputError
from capcli.paths import SPLITS, data_file, data_file_names, shapes_source
from capcli.runtime.parallel import WorkerDied, ordered_map, ordered_map_into
from capcli.runtime.progress import SILENT, Progress
from capcli.safeio import open_regular
from capcli.text import visible

MANIFEST_VERSION = 2  # 2: {SPLIT}_REFERENCES files, bad_rows, captions tokenised by coco_tokenize


@dataclass
class PrepResult:
    """What a prep did (or found already done). The texts of ``skipped`` and ``bad_rows`` (image
    names from caption files, reasons quoting them) are escaped for printing (:func:`visible`); the
    manifest keeps them as written."""

    name: str
    output_folder: str
    up_to_date: bool
    counts: dict[str, int]
    skipped: list[dict] = field(default_factory=list)
    vocab_size: int = 0
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    bad_rows: list[dict] = field(default_factory=list)  # caption rows skipped: {"file", "where", "reason"}


def _check_config(config: PrepConfig) -> None:
    files = config.caption_files
    problem = dataset_name_problem(config.dataset) if config.dataset is not None else None
    if problem:
        raise InputError(f"--dataset: {problem}")
    if files and not config.image_folder:
        raise InputError("--image-folder is required with a caption file (--captions)")
    if config.dataset == "shapes" and files:
        raise InputError("--dataset shapes is generated; drop the caption files or name the real dataset")
    if config.dataset not in ("shapes", None) and not files:
        raise InputError(f"--dataset {config.dataset} needs its caption file: --captions FILE and "
                         "--image-folder DIR")
    if config.split_lists and not files:
        raise InputError("--split-list needs a caption file (--captions FILE)")
    if config.image_folder and not os.path.isdir(config.image_folder):
        raise InputError(f"{config.image_folder}: no such image folder")
    if not files and config.num_images < 10:
        raise InputError("--num-images must be at least 10 (80/10/10 train/val/test)")


def _with_dataset(config: PrepConfig) -> PrepConfig:
    """``config`` with its dataset named: given, ``shapes`` without caption files, else the files' own."""
    if config.dataset is not None:
        return config
    if not config.caption_files:
        return replace(config, dataset="shapes")
    name = suggest_dataset(config.caption_files)
    if name is None or name == "shapes" or dataset_name_problem(name):  # a Karpathy file names itself
        raise InputError(f"cannot tell which dataset {config.caption_files[0]} holds"
                         + (f" ({dataset_name_problem(name)})" if name and name != "shapes" else "")
                         + "; add --dataset NAME")
    return replace(config, dataset=name)


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open_regular(path, error=InputError) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _shapes_generator(config: PrepConfig) -> dict:
    return {"version": shapes.GENERATOR_VERSION, "seed": config.seed, "num_images": config.num_images}


def _generate_shapes(config: PrepConfig, workers: int, progress: Progress) -> tuple[str, str]:
    """Write ``shapes/dataset_shapes.json`` + ``shapes/images/``; return both paths."""
    json_path, image_folder = shapes_source(config.output_folder)
    os.makedirs(image_folder, exist_ok=True)
    total = config.num_images
    task = progress.task("generating shapes", total, "img")
    entries = []
    jobs = ((config.seed, i, image_folder) for i in range(total))
    for i, entry in enumerate(ordered_map(shapes.generate_one, jobs, workers)):
        entry["split"] = shapes.split_of(i, total)
        entries.append(entry)
        task.advance()
    task.close()
    write_json(json_path, {"dataset": "shapes", "generator": _shapes_generator(config), "images": entries})
    return json_path, image_folder


def _shapes_source(config: PrepConfig, workers: int, progress: Progress) -> Source:
    """The shapes set as a Karpathy source, reusing the generated one when its parameters match."""
    json_path, image_folder = shapes_source(config.output_folder)
    if not config.force and os.path.exists(json_path):
        try:
            header, images = read_karpathy_json(json_path, image_folder)
            if header.get("generator") == _shapes_generator(config):
                return Source("karpathy", images, [json_path])
        except InputError:
            pass  # a damaged file: generate it again
    json_path, image_folder = _generate_shapes(config, workers, progress)
    return Source("karpathy", read_karpathy_json(json_path, image_folder)[1], [json_path])


def _load_source(config: PrepConfig, workers: int, progress: Progress) -> Source:
    """The caption files and their images, generating the shapes set first when asked for it."""
    if config.dataset == "shapes":
        return _shapes_source(config, workers, progress)
    options = SourceOptions(config.image_folder, config.seed, config.val_fraction, config.test_fraction,
                            config.split_lists, Columns(config.image_column, config.caption_column))
    return read_source(config.caption_files, options)


def _fingerprint(config: PrepConfig, source_files: list[str]) -> str:
    """Identifies the inputs and the options that change the output."""
    options = asdict(config)
    for key in ("force", "workers", "output_folder"):
        options.pop(key)
    options["image_folder"] = os.path.abspath(config.image_folder) if config.image_folder else None
    options["source_sha256"] = [_file_sha256(path) for path in source_files]
    options["manifest_version"] = MANIFEST_VERSION
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()


def _up_to_date(config: PrepConfig, fingerprint: str) -> dict | None:
    """The existing manifest when it matches ``fingerprint`` and every file it lists is intact."""
    path = data_file(config.output_folder, config.name, "MANIFEST")
    try:
        with open_regular(path) as f:  # a FIFO planted there would block for ever: rebuilt instead
            manifest = json.load(f)
    except (OSError, ValueError, RecursionError, CapcliError):
        return None
    if not isinstance(manifest, dict) or manifest.get("fingerprint") != fingerprint:
        return None
    for name, size in manifest.get("files", {}).items():
        full = os.path.join(config.output_folder, name)
        if not os.path.isfile(full) or os.path.getsize(full) != size:
            return None
    try:
        check_whole(config.output_folder, config.name, path)
    except CapcliError:
        return None
    return manifest


def _choose_captions(image: SourceImage, config: PrepConfig) -> list[list[str]] | None:
    """Exactly ``captions_per_image`` captions that fit ``max_len`` (the tutorial's rule)."""
    fitting = [c for c in image.captions if 0 < len(c) <= config.max_len]
    if not fitting:
        return None
    rng = random.Random(f"{config.seed}:{image.ref}")
    if len(fitting) < config.captions_per_image:
        extra = [rng.choice(fitting) for _ in range(config.captions_per_image - len(fitting))]
        return fitting + extra
    return rng.sample(fitting, config.captions_per_image)


_BATCH = 16  # images per worker task and per HDF5 write: both are much cheaper in slabs


def _decode_batch(paths: list[str], out: np.ndarray) -> list[str | None]:
    """Decode ``paths`` into the first rows of ``out`` (good images only, in order).

    Returns:
        A reason per path, None for an image that was stored.
    """
    size = out.shape[-1]
    reasons, stored = [], 0
    for path in paths:
        try:
            out[stored] = load_square(path, size)
            stored += 1
            reasons.append(None)
        except ImageSkipped as exc:
            reasons.append(str(exc))
    return reasons


_Chosen = tuple[SourceImage, list[list[str]]]  # an image and the captions stored for it


_Written = tuple[dict[str, list[dict]], dict[str, list[_Chosen]], list[dict]]


def _write_images(by_split: dict[str, list[SourceImage]], staging: str, config: PrepConfig, workers: int,
                  progress: Progress, generation: str) -> _Written:
    """Stream every split's images into its HDF5 file; return kept entries (for the manifest) and
    kept images with their chosen captions per split, and the skipped images. One pool of workers
    serves all splits in turn (a pool per split spent a tenth of a second starting and draining for
    each small split)."""
    files = data_file_names(config.name)
    kept, kept_images = {s: [] for s in SPLITS}, {s: [] for s in SPLITS}
    skipped: dict[str, list[dict]] = {s: [] for s in SPLITS}  # per split: caption skips, then unreadable images
    batches: dict[str, list[list[_Chosen]]] = {}
    for split in SPLITS:
        candidates = []
        for image in by_split[split]:
            if image.problem:  # e.g. a name outside --image-folder: skipped without being opened
                skipped[split].append({"split": split, "source": image.ref, "reason": image.problem})
                continue
            chosen = _choose_captions(image, config)
            if chosen is None:
                skipped[split].append({"split": split, "source": image.ref,
                                       "reason": f"no caption of 1..{config.max_len} words"})
            else:
                candidates.append((image, chosen))
        batches[split] = [candidates[i:i + _BATCH] for i in range(0, len(candidates), _BATCH)]
    jobs = ([image.path for image, _ in batch] for split in SPLITS for batch in batches[split])
    slab = (_BATCH, 3, config.image_size, config.image_size)
    with contextlib.closing(ordered_map_into(_decode_batch, jobs, workers, slab,
                                                 on_shrink=progress.message)) as decoded_batches:
        for split in SPLITS:
            task = progress.task(f"prep {split}", sum(map(len, batches[split])), "img")
            with ImageWriter(os.path.join(staging, files[f"{split}_IMAGES"]), config.image_size,
                             config.captions_per_image, generation) as writer:
                for batch in batches[split]:
                    reasons, decoded = next(decoded_batches)
                    writer.append(decoded[:reasons.count(None)])
                    for (image, chosen), reason in zip(batch, reasons):
                        if reason is None:
                            kept[split].append({"source": image.ref, "path": image.path})
                            kept_images[split].append((image, chosen))
                        else:
                            skipped[split].append({"split": split, "source": image.ref, "reason": reason})
                    task.advance(len(batch))
            task.close()
    return kept, kept_images, [entry for split in SPLITS for entry in skipped[split]]


def _commit(staging: str, output_folder: str, names: Iterable[str], manifest_name: str, set_name: str) -> None:
    """Move staged files into place: first a marker replaces the old manifest (readers refuse the
    set until the end), then the files, and the new manifest last."""
    old_manifest = os.path.join(output_folder, manifest_name)
    write_json(old_manifest, replacing_marker(set_name))
    for name in names:
        if name != manifest_name:
            os.replace(os.path.join(staging, name), os.path.join(output_folder, name))
    os.replace(os.path.join(staging, manifest_name), old_manifest)


def _remove_stale_staging(output_folder: str, name: str) -> None:
    """Delete staging folders left by preps of ``name`` whose process is gone."""
    prefix = f".prep-{name}-"
    for entry in os.listdir(output_folder):
        if not entry.startswith(prefix):
            continue
        pid = entry[len(prefix):].split("-", 1)[0]
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(os.path.join(output_folder, entry), ignore_errors=True)
        except PermissionError:
            pass  # another user's live process


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0


def run_prep(config: PrepConfig, progress: Progress = SILENT) -> PrepResult:
    """Prepare ``config``'s dataset into ``config.output_folder``.

    Raises:
        InputError: bad options, or a missing or malformed caption file.
        Interrupted: SIGINT, SIGTERM or SIGHUP stopped it (the previous set is untouched).
        CapcliError: no training image could be used, or a worker died (killed for memory).
    """
    with stopped_by_signals() as stop:
        try:
            return _run_prep(config, progress, stop)
        except WorkerDied as exc:
            if stop.signum is not None:  # a signal to the whole group: the workers went first
                raise stop.interrupted(stop.signum) from None
            raise CapcliError(f"{exc.describe('prep')}; nothing was changed") from None


def _run_prep(config: PrepConfig, progress: Progress, stop: Stop) -> PrepResult:
    start = time.monotonic()
    _check_config(config)
    config = _with_dataset(config)
    os.makedirs(config.output_folder, exist_ok=True)
    workers = max(1, config.workers)
    source = _load_source(config, workers, progress)
    fingerprint = _fingerprint(config, source.files)
    manifest = None if config.force else _up_to_date(config, fingerprint)
    if manifest is not None:
        return PrepResult(config.name, config.output_folder, True, manifest["counts"],
                          _shown(manifest["skipped"]), manifest["vocab_size"], time.monotonic() - start,
                          bad_rows=_shown(manifest.get("bad_rows", [])))
    _remove_stale_staging(config.output_folder, config.name)
    staging = tempfile.mkdtemp(prefix=f".prep-{config.name}-{os.getpid()}-", dir=config.output_folder)
    try:
        generation = new_generation()
        manifest = _prepare(config, source, staging, workers, progress, generation)
        manifest.update(fingerprint=fingerprint, source=os.path.abspath(source.files[0]),
                        sources=[os.path.abspath(p) for p in source.files], format=source.format,
                        seconds=round(time.monotonic() - start, 3), generation=generation)
        files = data_file_names(config.name)
        staged = {n: os.path.join(staging, n) for key, n in files.items() if key != "MANIFEST"}
        manifest["files"] = {n: os.path.getsize(path) for n, path in staged.items()}
        manifest["tokens"] = {n: file_token(staged[n]) for key, n in files.items() if tokened(key)}
        write_json(os.path.join(staging, files["MANIFEST"]), manifest)
        with signals_held():
            _commit(staging, config.output_folder, files.values(), files["MANIFEST"], config.name)
            stop.committed = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return PrepResult(config.name, config.output_folder, False, manifest["counts"], _shown(manifest["skipped"]),
                      manifest["vocab_size"], time.monotonic() - start, _peak_rss_mb(), _shown(manifest["bad_rows"]))


def _shown(entries: list[dict]) -> list[dict]:
    """Skipped images or bad rows with each text escaped (``ESC`` as ``\\x1b``), safe to print on one line."""
    return [{key: visible(value) if isinstance(value, str) else value for key, value in entry.items()}
            for entry in entries]


def _prepare(config: PrepConfig, source: Source, staging: str, workers: int, progress: Progress,
             generation: str) -> dict:
    """Write every output file into ``staging`` and return the manifest (without file sizes)."""
    files = data_file_names(config.name)
    by_split: dict[str, list[SourceImage]] = {s: [] for s in SPLITS}
    for image in source.images:
        by_split[image.split].append(image)
    kept, kept_images, skipped = _write_images(by_split, staging, config, workers, progress, generation)
    skipped = source.skipped + skipped
    captions = {s: [chosen for _, chosen in kept_images[s]] for s in SPLITS}
    if not kept["TRAIN"]:
        raise CapcliError(f"no usable training image ({len(skipped)} skipped; first reason: "
                          f"{skipped[0]['reason'] if skipped else 'the source has no training images'})")
    if not kept["VAL"]:
        raise CapcliError("no usable validation image (training selects its best epoch on the validation split): "
                          "give the caption file a val split, or a --val-fraction above 0")
    word_map = build_word_map((c for caps in captions["TRAIN"] for c in caps), config.min_word_freq)
    write_json(os.path.join(staging, files["WORDMAP"]), word_map)
    for split in SPLITS:
        rows = [encode(c, word_map, config.max_len) for caps in captions[split] for c in caps]
        write_json(os.path.join(staging, files[f"{split}_CAPTIONS"]), rows)
        write_json(os.path.join(staging, files[f"{split}_CAPLENS"]),
                   [len(c) + 2 for caps in captions[split] for c in caps])
        write_json(os.path.join(staging, files[f"{split}_REFERENCES"]),
                   [image.references for image, _ in kept_images[split]])
    return {
        "version": MANIFEST_VERSION, "name": config.name, "options": asdict(config),
        "counts": {s: len(kept[s]) for s in SPLITS}, "vocab_size": len(word_map),
        "images": kept, "skipped": skipped, "bad_rows": source.bad_rows,
    }
