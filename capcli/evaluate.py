"""``capcli evaluate``: caption every image of a split once per beam size and score the corpus.

One caption per image (not per caption row), scored against all of the image's references with
BLEU-1..4, CIDEr-D and ROUGE-L. Each batch of images is encoded once and decoded for every beam
size. Writes ``evaluation_{model}_{split}.json`` (scores per beam size) and, per beam size, a
COCO-style results file ``results_{model}_{split}_beam{k}.json`` (``image_id``, ``caption``),
``{model}`` being the checkpoint's file name without ``.pth.tar``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from capcli.captioning import Captioner
from capcli.content import ContentReport, format_report, shapes_report
from capcli.data.datasets import Images
from capcli.data.hdf5 import PreparedData, find_prepared
from capcli.data.jsonfiles import read_json, write_json
from capcli.data.vocab import Detokenizer
from capcli.errors import DataError
from capcli.paths import checkpoint_stem, evaluation_file, results_file
from capcli.progress import SILENT, Progress
from capcli.scores import all_scores

SCORE_NAMES = ("bleu1", "bleu2", "bleu3", "bleu4", "cider_d", "rouge_l")


@dataclass
class EvaluateResult:
    name: str
    split: str
    images: int
    scores: dict[int, dict[str, float]]  # beam size → metric → value
    captions: dict[int, list[str]]  # beam size → one caption per image
    references: list[list[str]]  # per image, the reference captions
    image_ids: list[str]
    json_path: str
    results_paths: dict[int, str]
    seconds: float
    content: ContentReport | None = None  # shapes only: does each caption name the drawn objects


def _image_ids(prepared: PreparedData, split: str, count: int) -> list[str]:
    """The source names of the split's images from the manifest (indices when there is none)."""
    manifest_path = prepared.path("MANIFEST")
    if os.path.exists(manifest_path):
        manifest = read_json(manifest_path, DataError)
        entries = manifest.get("images", {}).get(split, []) if isinstance(manifest, dict) else []
        if len(entries) >= count:
            return [str(e.get("source", i)) for i, e in enumerate(entries[:count])]
    return [str(i) for i in range(count)]


def run_evaluate(captioner: Captioner, data_folder: str, name: str | None, split: str, beams: list[int],
                 output_folder: str, length_penalty: float = 0.0, batch_size: int = 32, max_images: int = 0,
                 progress: Progress = SILENT) -> EvaluateResult:
    start = time.monotonic()
    split = split.upper()
    prepared = find_prepared(data_folder, name or captioner.checkpoint.data.name or None)
    if not os.path.exists(prepared.path("IMAGES", split)):
        raise DataError(f"{prepared.path('IMAGES', split)}: no {split.lower()} split in {prepared.folder}")
    images = Images(prepared.path("IMAGES", split), "images", max_images)
    if not len(images):
        raise DataError(f"the {split.lower()} split of {prepared.name} has no images")
    cpi = prepared.images_meta(split)[0]
    rows, _ = prepared.captions(split)
    data_words = Detokenizer(prepared.word_map())
    references = [[data_words(r) for r in rows[i * cpi:(i + 1) * cpi]] for i in range(len(images))]
    model_words = Detokenizer(captioner.word_map)
    hypotheses: dict[int, list[list[str]]] = {k: [] for k in beams}
    task = progress.task(f"evaluating {split.lower()} (beam {','.join(map(str, beams))})", len(images), "img")
    for x, _ in DataLoader(images, batch_size=batch_size):
        with torch.no_grad():
            features = captioner.encode(x)
            for k in beams:
                decoded = captioner.decode_features(features, k, length_penalty, attention=False)
                hypotheses[k].extend(model_words(d.tokens) for d in decoded)
        task.advance(len(x))
    task.close()
    scores = {k: all_scores(references, hypotheses[k]) for k in beams}
    ids = _image_ids(prepared, split, len(images))
    os.makedirs(output_folder, exist_ok=True)
    stem = f"{checkpoint_stem(captioner.path)}_{split.lower()}"  # another model's evaluation never overwrites this one
    results_paths = {}
    for k in beams:
        results_paths[k] = results_file(output_folder, stem, k)
        write_json(results_paths[k], [{"image_id": i, "caption": " ".join(h)} for i, h in zip(ids, hypotheses[k])])
    captions = {k: [" ".join(h) for h in hypotheses[k]] for k in beams}
    reference_texts = [[" ".join(r) for r in refs] for refs in references]
    content = shapes_report(prepared.folder, prepared.name, ids, captions, reference_texts)
    json_path = evaluation_file(output_folder, stem)
    write_json(json_path, {
        "model": captioner.path, "data": {"folder": prepared.folder, "name": prepared.name}, "split": split.lower(),
        "images": len(images), "length_penalty": length_penalty,
        "scores": {str(k): scores[k] for k in beams}, "results_files": {str(k): p for k, p in results_paths.items()},
        **({"content": content.to_dict()} if content else {}),
    })
    return EvaluateResult(prepared.name, split.lower(), len(images), scores, captions, reference_texts, ids,
                          json_path, results_paths, time.monotonic() - start, content)


def format_table(result: EvaluateResult) -> str:
    """The scores as a text table, one row per beam size."""
    header = f"{'beam':>4}  " + "  ".join(f"{n.upper().replace('_', '-'):>8}" for n in SCORE_NAMES)
    lines = [header, "-" * len(header)]
    for k, scores in result.scores.items():
        lines.append(f"{k:>4}  " + "  ".join(f"{scores[n]:>8.4f}" for n in SCORE_NAMES))
    if result.content is not None:
        lines += ["", format_report(result.content)]
    return "\n".join(lines)
