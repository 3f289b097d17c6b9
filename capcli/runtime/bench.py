"""``capcli bench``: the speed figures that matter, measured in one run on synthetic inputs.

Every measurement runs the code users run (the encoder, ``Trainer.train_step``, the captioning
service's beam search, ``run_prep``) in a fresh process of its own, so its peak memory can be
reported and one measurement cannot warm or fragment memory for the next. Timings are medians
of repeated runs after warm-up.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from capcli.paths import data_file, train_files
from capcli.runtime.allocator import tune_for_device

VOCAB = 2600
IMAGE_SIZE = 256
CAPTIONS_PER_IMAGE = 5
BENCH_DATA = "bench_5_1"  # the prepared data set bench writes for itself


def machine_info(device: torch.device) -> dict:
    from capcli.runtime.environment import cpu_model
    from capcli.runtime.torch_compat import cpu_has_amx, cpu_supports_bf16, torch_version

    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch_version(), "python": platform.python_version(),
            "device": str(device), "cpu_bf16": cpu_supports_bf16(),
            "cpu_amx": cpu_has_amx(), "threads": torch.get_num_threads(),
            "malloc_keeps_freed_memory": tune_for_device(str(device))}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda_bf16"] = torch.cuda.is_bf16_supported()
    return info


def precisions(device: torch.device) -> list[str]:
    from capcli.runtime.torch_compat import cpu_supports_bf16

    if device.type == "cuda":
        return ["fp32", "bf16", "fp16"] if torch.cuda.is_bf16_supported() else ["fp32", "fp16"]
    return ["fp32", "bf16"] if cpu_supports_bf16() else ["fp32"]


def _median_time(fn: Callable[[], object], warmup: int, repeats: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


# --- measurements (each runs in its own process) -------------------------------------------


def _bench_encoder(device: torch.device, precision: str, quick: bool, name: str = "resnet34") -> dict:
    from capcli.config import ModelConfig
    from capcli.model import cpu as cpu_kernels
    from capcli.model.captioner import build_encoder, with_preprocess
    from capcli.runtime.device import resolve_precision
    from capcli.training.features import encode_images

    torch.manual_seed(0)
    encoder = build_encoder(with_preprocess(ModelConfig(vocab_size=VOCAB, encoder=name))).to(device).eval()
    cpu_kernels.enable(device, encoder)
    batch = 32 if name == "resnet34" else 8
    images = torch.randint(0, 256, (batch, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    prec = resolve_precision(precision, device)
    times = _median_time(lambda: encode_images(encoder, images, device, prec), 1, 3 if quick else 5, device)
    size = encoder.preprocess.size if encoder.preprocess else IMAGE_SIZE
    cache_kib = encoder.grid ** 2 * encoder.dim * 2 / 1024  # float16 features per image
    return {"value": batch / statistics.median(times), "unit": "images/s", "times": times,
            "params_m": sum(p.numel() for p in encoder.parameters()) / 1e6, "grid": [encoder.grid, encoder.dim],
            "cache_kib_per_image": cache_kib,
            "detail": f"{name}, {size}×{size} input, grid {encoder.grid}×{encoder.grid}×{encoder.dim}, batch {batch}"}


def _synthetic_prepared(folder: str, images: dict[str, int]) -> None:
    """A prepared data set in the real file format: random images, ~12-word random captions."""
    import numpy as np

    from capcli.data.hdf5 import ImageWriter
    from capcli.data.jsonfiles import write_json

    rng = np.random.default_rng(0)
    word_map = {"<pad>": 0, "<unk>": 1, "<start>": 2, "<end>": 3}
    word_map.update({f"w{i}": i for i in range(4, VOCAB)})
    write_json(data_file(folder, BENCH_DATA, "WORDMAP"), word_map)
    max_len = 20
    for split, count in images.items():
        with ImageWriter(data_file(folder, BENCH_DATA, "IMAGES", split), IMAGE_SIZE,
                         CAPTIONS_PER_IMAGE) as writer:
            for first in range(0, count, 16):
                n = min(16, count - first)
                writer.append(rng.integers(0, 256, (n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8))
        rows, lengths = [], []
        for _ in range(count * CAPTIONS_PER_IMAGE):
            words = int(rng.integers(9, 16))  # 9-15 words, ~12 on average
            row = [2] + rng.integers(4, VOCAB, words).tolist() + [3]
            rows.append(row + [0] * (max_len + 2 - len(row)))
            lengths.append(words + 2)
        write_json(data_file(folder, BENCH_DATA, "CAPTIONS", split), rows)
        write_json(data_file(folder, BENCH_DATA, "CAPLENS", split), lengths)


def _bench_train(device: torch.device, precision: str, quick: bool, mode: str) -> dict:
    """Training pairs/s through ``Trainer.train_step``: mode ``raw`` (frozen encoder run on every
    batch), ``cached`` (features from the cache) or ``finetune`` (encoder stages 2-4 trained)."""
    from capcli.config import ModelConfig, TrainConfig
    from capcli.data.hdf5 import find_prepared
    from capcli.runtime.distributed import DistInfo
    from capcli.runtime.progress import SILENT
    from capcli.training.train import Trainer

    batch = 32
    steps = 3 if quick else 6
    images_per_step = batch // CAPTIONS_PER_IMAGE
    with tempfile.TemporaryDirectory(prefix="capcli-bench-") as tmp:
        _synthetic_prepared(tmp, {"TRAIN": images_per_step * steps, "VAL": 8})
        config = TrainConfig(data_folder=tmp, output_folder=os.path.join(tmp, "out"), batch_size=batch,
                             precision=precision, device=str(device), fine_tune_encoder=mode == "finetune",
                             feature_cache=mode == "cached", overwrite=True)
        prepared = find_prepared(tmp)
        word_map = prepared.word_map()
        torch.manual_seed(0)
        trainer = Trainer(config, ModelConfig(vocab_size=len(word_map), encoder="resnet34"), prepared, word_map,
                          train_files(config.output_folder, prepared.name), device, DistInfo(), SILENT, None)
        trainer.decoder.train()
        trainer.encoder.train(mode == "finetune")
        loader = trainer.loader(trainer.train_rows, trainer.epoch_batches(0, 0))  # images_per_step a batch
        batches = [b for b, _ in zip(loader, range(steps))]
        pairs = sum(int(b[1].shape[0] * b[1].shape[1]) for b in batches)
        # warm-up: every batch once, since oneDNN makes its bf16 kernels per matrix shape (the
        # decoder's shrinking row counts) the first time it meets one, which a real run pays once
        for b in batches:
            trainer.train_step(*b)
        times = []
        for b in batches:
            start = time.perf_counter()
            trainer.train_step(*b)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    per_pair = statistics.median(times) / (pairs / len(times))
    return {"value": 1.0 / per_pair, "unit": "pairs/s", "times": times,
            "detail": f"resnet34 + attention decoder 512, {IMAGE_SIZE}×{IMAGE_SIZE}, batch {batch} captions "
                      f"({images_per_step} images × {CAPTIONS_PER_IMAGE}), vocabulary {VOCAB}"}


def _bench_beam(device: torch.device, precision: str, quick: bool, batched: bool) -> dict:
    """Beam search (beam 5) images/s on encoder features: a batch of 64 at once, or one image at a
    time. The encoder runs once beforehand and is not timed (see the encoder rows for it)."""
    from capcli.config import ModelConfig
    from capcli.model import cpu as cpu_kernels
    from capcli.model.captioner import build_model
    from capcli.model.decoding import beam_search
    from capcli.runtime.device import resolve_precision
    from capcli.training.features import encode_images

    torch.manual_seed(0)
    encoder, decoder = build_model(ModelConfig(vocab_size=VOCAB, encoder="resnet34"))
    with torch.no_grad():  # an untrained model ends captions at random: let every caption run 12 words
        decoder.fc.bias[3] -= 100.0
    encoder.to(device).eval()
    decoder.to(device).eval()
    cpu_kernels.enable(device, encoder, decoder)
    prec = resolve_precision(precision, device)
    count = 32 if quick else 64
    images = torch.randint(0, 256, (count, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    features = torch.cat([encode_images(encoder, images[i:i + 16], device, prec) for i in range(0, count, 16)])

    def decode(chunk: torch.Tensor, precision) -> list[tuple[list[int], float]]:
        with precision.autocast():
            return [(d.tokens, d.score) for d in beam_search(decoder, chunk, 2, 3, 12, 5, banned=(0, 2))]

    def run(precision=prec) -> list[tuple[list[int], float]]:
        feats = features if precision.dtype is not None else features.float()
        if batched:
            return decode(feats, precision)
        return [decode(feats[i:i + 1], precision)[0] for i in range(count)]

    captions: list = []
    times = _median_time(lambda: captions.append(run()), 1, 3 if quick else 5, device)
    lengths = [len(tokens) for tokens, _ in captions[-1]]
    # run_bench compares batched and one-at-a-time captions in fp32 (untimed): in bf16 the two row
    # counts' kernels can round a near-tie differently and pick another caption (docs/performance.md)
    check = captions[-1] if prec.dtype is None else run(resolve_precision("fp32", device))
    return {"value": count / statistics.median(times), "unit": "images/s", "times": times, "captions": check,
            "detail": f"attention decoder 512, vocabulary {VOCAB}, beam 5, {count} images "
                      + ("in one batch" if batched else "one at a time")
                      + f", captions of {min(lengths)}-{max(lengths)} words; encoder not timed"}


PHOTO_SIZE = (500, 375)  # Flickr8k's most common photo size; COCO's are 640 × 480


def _photo_like(args: tuple[int, str]) -> dict:
    """A shapes scene as a camera photo would arrive: 500 × 375, sensor-like noise, JPEG quality
    90 (~70 KB, where real Flickr8k photos are ~100 KB), so decoding and resizing cost what they
    cost on a real data set. Returns its Karpathy entry."""
    import numpy as np
    from PIL import Image

    from capcli.data import shapes
    from capcli.safeio import atomic_write

    index, folder = args
    entry = shapes.generate_one((7, index, folder))
    path = os.path.join(folder, entry["filename"])
    with Image.open(path) as img:
        scene = np.asarray(img.convert("RGB").resize(PHOTO_SIZE, Image.BICUBIC), dtype=np.int16)
    noise = np.random.default_rng(index).integers(-16, 17, scene.shape)
    with atomic_write(path) as f:
        Image.fromarray(np.clip(scene + noise, 0, 255).astype(np.uint8)).save(f, "JPEG", quality=90)
    return entry


def _bench_prep(workers: int, quick: bool) -> dict:
    """``run_prep`` on photo-sized JPEGs given as a Karpathy JSON: images/s of the image stage and
    of the whole command."""
    from capcli.config import PrepConfig
    from capcli.data import shapes
    from capcli.data.jsonfiles import write_json
    from capcli.data.prep import run_prep
    from capcli.runtime.parallel import ordered_map

    count = 800 if quick else 1600
    stage = _StageTimer()
    with tempfile.TemporaryDirectory(prefix="capcli-bench-") as tmp:
        folder = os.path.join(tmp, "images")
        os.makedirs(folder)
        entries = list(ordered_map(_photo_like, ((i, folder) for i in range(count)), os.cpu_count() or 1))
        for entry in entries:
            entry["split"] = shapes.split_of(entry["imgid"], count)
        json_path = os.path.join(tmp, "dataset_flickr8k.json")
        write_json(json_path, {"dataset": "flickr8k", "images": entries})
        wall = []
        for run in range(3):
            config = PrepConfig(dataset="flickr8k", json_path=json_path, image_folder=folder,
                                output_folder=os.path.join(tmp, "out"), workers=workers, force=True)
            start = time.perf_counter()
            run_prep(config, stage if run > 0 else _StageTimer())  # run 0 warms the page cache
            if run > 0:
                wall.append(time.perf_counter() - start)
    stage_median = statistics.median(stage.per_run(2))
    return {"value": count / stage_median, "unit": "images/s", "times": stage.per_run(2),
            "whole_command_images_per_s": count / statistics.median(wall), "whole_times": wall,
            "detail": f"{count} JPEGs {PHOTO_SIZE[0]}×{PHOTO_SIZE[1]} → HDF5 {IMAGE_SIZE}×{IMAGE_SIZE}, "
                      f"{workers} worker(s); value: the image stage"}


class _StageTask:
    def __init__(self, timer: _StageTimer, counted: bool) -> None:
        self.timer, self.counted, self.start = timer, counted, time.perf_counter()

    def advance(self, n: int = 1) -> None:
        pass

    def show(self, text: str) -> None:
        pass

    def close(self) -> None:
        if self.counted:
            self.timer.spans.append(time.perf_counter() - self.start)


class _StageTimer:
    """A Progress that records how long the ``prep`` image tasks took."""

    def __init__(self) -> None:
        self.spans: list[float] = []

    def task(self, description: str, total, unit: str = "it") -> _StageTask:
        return _StageTask(self, description.startswith("prep "))

    def message(self, text: str) -> None:
        pass

    def per_run(self, runs: int) -> list[float]:
        per = len(self.spans) // runs
        return [sum(self.spans[i * per:(i + 1) * per]) for i in range(runs)]


def _measure(kind: str, args: tuple) -> dict:
    """Run one measurement (in a fresh process, allocator set up as the CLI's) and add its peak memory."""
    device = torch.device(args[0]) if args and isinstance(args[0], str) else None
    if device is not None:  # prep has no model and, as `capcli prep`, leaves malloc alone
        tune_for_device(str(device))
    if device is not None and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    functions = {"encoder": _bench_encoder, "train": _bench_train, "beam": _bench_beam, "prep": _bench_prep}
    call_args = (device, *args[1:]) if device is not None else args
    result = functions[kind](*call_args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device is not None and device.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return result


def plan(device: torch.device, quick: bool, prep_workers: int) -> list[tuple[str, str, tuple]]:
    """(row name, measurement kind, arguments) in the order they run."""
    dev = str(device)
    rows = [(f"encoder {p}", "encoder", (dev, p, quick)) for p in precisions(device)]
    best = "bf16" if "bf16" in precisions(device) else precisions(device)[-1]
    rows += [(f"encoder {name} {best}", "encoder", (dev, best, quick, name)) for name in family_encoders()]
    for p in precisions(device):
        for mode in ("raw", "cached", "finetune"):
            rows.append((f"train {mode} {p}", "train", (dev, p, quick, mode)))
    rows += [(f"caption beam5 batched {best}", "beam", (dev, best, quick, True)),
             (f"caption beam5 single {best}", "beam", (dev, best, quick, False))]
    rows += [("prep 1 worker", "prep", (1, quick)), (f"prep {prep_workers} workers", "prep", (prep_workers, quick))]
    return rows


def family_encoders() -> list[str]:
    """One encoder per family after ResNet (the smallest), CLIP where open_clip is installed."""
    import importlib.util

    names = ["convnext_tiny", "efficientnet_v2_s", "regnet_y_1_6gf", "swin_t", "vit_b_16"]
    return names + (["clip:ViT-B-32"] if importlib.util.find_spec("open_clip") else [])


def compare_captions(batched: list[tuple[list[int], float]], single: list[tuple[list[int], float]]) -> dict:
    """How many images got another caption one at a time than in the batch, and the largest gap
    between the two captions' scores (summed log-probabilities) among them. Where the two row
    counts' matrix kernels round a near-tie differently, the search can go on to another caption
    of nearly the same score (docs/performance.md); a decoding bug would typically leave larger ones."""
    differing = [abs(a[1] - b[1]) for a, b in zip(batched, single) if a[0] != b[0]]
    return {"images": len(batched), "differing": len(differing), "largest_score_gap": max(differing, default=None)}


def _ratio(results: dict[str, dict], a: str, b: str) -> float | None:
    if a in results and b in results and results[b]["value"]:
        return results[a]["value"] / results[b]["value"]
    return None


def run_bench(device: torch.device, quick: bool = False, prep_workers: int | None = None,
              only: tuple[str, ...] = (), on_row: Callable[[str, dict], None] | None = None) -> dict:
    """Every measurement (or those whose name contains one of ``only``), each in a fresh process;
    returns ``{"machine", "results", "ratios", ...}``."""
    prep_workers = prep_workers or max(2, min(8, os.cpu_count() or 2))
    results: dict[str, dict] = {}
    context = multiprocessing.get_context("spawn")
    rows = [r for r in plan(device, quick, prep_workers) if not only or any(o in r[0] for o in only)]
    if not rows:
        from capcli.errors import InputError

        names = ", ".join(r[0] for r in plan(device, quick, prep_workers))
        raise InputError(f"--only {' '.join(only)}: no measurement matches (measurements: {names})")
    for name, kind, args in rows:
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            row = pool.submit(_measure, kind, args).result()
        row["name"] = name
        results[name] = row
        if on_row:
            on_row(name, row)
    best = "bf16" if "bf16" in precisions(device) else precisions(device)[-1]
    same = comparison = None
    batched, single = results.get(f"caption beam5 batched {best}"), results.get(f"caption beam5 single {best}")
    if batched and single:
        comparison = {**compare_captions(batched.pop("captions"), single.pop("captions")), "precision": "fp32"}
        same = comparison["differing"] == 0
        batched["same_captions"] = single["same_captions"] = same
    low = "fp16" if device.type == "cuda" and "bf16" not in precisions(device) else "bf16"
    ratios = {
        "encoder_bf16_vs_fp32": _ratio(results, f"encoder {low}", "encoder fp32"),
        "train_cached_vs_raw": _ratio(results, f"train cached {best}", f"train raw {best}"),
        "train_cached_vs_raw_fp32": _ratio(results, "train cached fp32", "train raw fp32"),
        "beam_batched_vs_single": _ratio(results, f"caption beam5 batched {best}", f"caption beam5 single {best}"),
        "prep_workers_vs_one": _ratio(results, f"prep {prep_workers} workers", "prep 1 worker"),
    }
    return {"machine": machine_info(device), "results": list(results.values()), "ratios": ratios,
            "beam_same_captions": same, "beam_comparison": comparison, "quick": quick}
