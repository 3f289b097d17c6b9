"""``capcli evaluate``: caption every image of a split once per beam size and score the corpus.

One caption per image (not per caption row), scored against all of the image's references: the
raw ones, tokenised as the COCO caption evaluation does, when prep wrote ``{SPLIT}_REFERENCES_*``
(else the encoded caption rows of older prepared folders). BLEU-1..4, ROUGE-L and CIDEr-D are
computed here (the numbers pycocoevalcap gives, see :mod:`capcli.evaluation.scores`); METEOR and SPICE run
through pycocoevalcap and Java when both are there (:mod:`capcli.evaluation.java_metrics`), and what cannot
run is said in one line each. Each batch of images is encoded once and decoded for every beam
size. Writes ``evaluation_{model}_{split}.json`` (scores per beam size and how they were made:
decoding settings, references and their tokenisation, the metrics run, the Java used) and, per
beam size, a COCO-style results file ``results_{model}_{split}_beam{k}.json`` (``image_id``,
``caption``), ``{model}`` being the checkpoint's file name without ``.pth.tar``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from capcli.data.datasets import Images
from capcli.data.hdf5 import PreparedData, References, find_prepared, split_references
from capcli.data.jsonfiles import read_json, write_json
from capcli.data.vocab import Detokenizer
from capcli.errors import DataError
from capcli.evaluation import java_metrics
from capcli.evaluation.content import ContentReport, format_report, shapes_report
from capcli.evaluation.scores import METRIC_KEYS, PYTHON_METRICS, all_scores
from capcli.inference.captioning import Captioner
from capcli.paths import checkpoint_stem, evaluation_file, results_file
from capcli.runtime.progress import SILENT, Progress
from capcli.text import visible

SCORE_NAMES = ("bleu1", "bleu2", "bleu3", "bleu4", "cider_d", "rouge_l", "meteor", "spice")  # table order
METRICS = tuple(METRIC_KEYS)  # capcli evaluate --metrics choices
HYPOTHESIS_TOKENS = "word-map tokens of the generated caption joined by single spaces (<pad>, <start>, <unk> banned)"


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
    notes: list[str] = field(default_factory=list)  # one line per metric that did not run, and why
    java: str | None = None  # the `java -version` line of the Java that ran METEOR / SPICE
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


def _decode_split(captioner: Captioner, images: Images, beams: list[int], length_penalty: float, batch_size: int,
                  task) -> dict[int, list[list[str]]]:
    """Every image's caption (words) for each beam size; each batch encoded once."""
    model_words = Detokenizer(captioner.word_map)
    hypotheses: dict[int, list[list[str]]] = {k: [] for k in beams}
    for x, _ in DataLoader(images, batch_size=batch_size):
        with torch.no_grad():
            features = captioner.encode(x)
            for k in beams:
                decoded = captioner.decode_features(features, k, length_penalty, attention=False)
                hypotheses[k].extend(model_words(d.tokens) for d in decoded)
        task.advance(len(x))
    task.close()
    return hypotheses


def score_all(references: list[list[list[str]]], hypotheses: dict[int, list[list[str]]],
              metrics: Sequence[str]) -> tuple[dict[int, dict[str, float]], list[str], java_metrics.JavaSetup]:
    """Each beam's scores for ``metrics``; the lines saying which could not run; the Java setup."""
    scores = {k: all_scores(references, hyps, [m for m in metrics if m in PYTHON_METRICS])
              for k, hyps in hypotheses.items()}
    setup = java_metrics.java_setup(metrics)
    notes = list(dict.fromkeys(setup.unavailable.values()))  # one line for METEOR and SPICE when both lack it
    joined_refs = [[" ".join(r) for r in refs] for refs in references]
    joined_hyps = {k: [" ".join(h) for h in hyps] for k, hyps in hypotheses.items()}
    for metric in java_metrics.JAVA_METRICS:
        if metric not in metrics or metric in setup.unavailable:
            continue
        try:
            values = getattr(java_metrics, metric)(joined_refs, joined_hyps, setup.java)
        except java_metrics.JavaMetricError as exc:
            setup.unavailable[metric] = str(exc)
            notes.append(str(exc))
            continue
        for k, value in values.items():
            scores[k][metric] = value
    return scores, notes, setup


def run_evaluate(captioner: Captioner, data_folder: str, name: str | None, split: str, beams: list[int],
                 output_folder: str, length_penalty: float = 0.0, batch_size: int = 32, max_images: int = 0,
                 progress: Progress = SILENT, metrics: Sequence[str] | None = None) -> EvaluateResult:
    """Caption and score the split; ``metrics`` (names of :data:`METRICS`) None: all that can run."""
    start = time.monotonic()
    split = split.upper()
    prepared = find_prepared(data_folder, name or captioner.checkpoint.data.name or None)
    if prepared.word_map() != captioner.word_map:  # its ids would mean other words: scores of nothing
        raise DataError(f"{visible(prepared.name)}'s vocabulary ({prepared.path('WORDMAP')}) differs from the "
                        f"model's ({visible(captioner.path)}); evaluate on the data the model was trained on")
    if not os.path.exists(prepared.path("IMAGES", split)):
        raise DataError(f"{prepared.path('IMAGES', split)}: no {split.lower()} split in {prepared.folder}")
    images = Images(prepared.path("IMAGES", split), "images", max_images)
    if not len(images):
        raise DataError(f"the {split.lower()} split of {prepared.name} has no images")
    references = split_references(prepared, split, len(images))
    task = progress.task(f"evaluating {split.lower()} (beam {','.join(map(str, beams))})", len(images), "img")
    hypotheses = _decode_split(captioner, images, beams, length_penalty, batch_size, task)
    scores, notes, setup = score_all(references.captions, hypotheses, list(metrics or METRICS))
    ids = _image_ids(prepared, split, len(images))
    os.makedirs(output_folder, exist_ok=True)
    stem = _stem(captioner, prepared.name, split)
    results_paths = {}
    for k in beams:
        results_paths[k] = results_file(output_folder, stem, k)
        write_json(results_paths[k], [{"image_id": i, "caption": " ".join(h)} for i, h in zip(ids, hypotheses[k])])
    json_path = evaluation_file(output_folder, stem)
    captions = {k: [" ".join(h) for h in hypotheses[k]] for k in beams}
    reference_texts = [[" ".join(r) for r in refs] for refs in references.captions]
    content = shapes_report(prepared.folder, prepared.name, ids, captions, reference_texts)
    report = _report(captioner, prepared, split, len(images), beams, length_penalty, references, scores, setup,
                     results_paths)
    write_json(json_path, {**report, **({"content": content.to_dict()} if content else {})})
    return EvaluateResult(prepared.name, split.lower(), len(images), scores, captions, reference_texts, ids, json_path,
                          results_paths, time.monotonic() - start, notes, setup.version if setup.java else None,
                          content)


def _stem(captioner: Captioner, data_name: str, split: str) -> str:
    """``{model}_{split}``, or ``{model}_{data}_{split}`` on data other than the model's own: another
    model's evaluation, or one on other data, never overwrites this one."""
    own = captioner.checkpoint.data.name
    data = "" if own is None or data_name == own else f"_{data_name}"
    return f"{checkpoint_stem(captioner.path)}{data}_{split.lower()}"


def _report(captioner: Captioner, prepared: PreparedData, split: str, images: int, beams: list[int],
            length_penalty: float, references: References, scores: dict[int, dict[str, float]],
            setup: java_metrics.JavaSetup, results_paths: dict[int, str]) -> dict:
    """The evaluation JSON: the scores and everything needed to compare them with another run's."""
    ran = [m for m in METRICS if all(key in scores[beams[0]] for key in METRIC_KEYS[m])]
    counts = [len(refs) for refs in references.captions]
    java_ran = any(m in ran for m in java_metrics.JAVA_METRICS)
    return {
        "model": captioner.path, "checkpoint": os.path.abspath(captioner.path),
        "data": {"folder": prepared.folder, "name": prepared.name}, "split": split.lower(), "images": images,
        "length_penalty": length_penalty,
        "decoding": {"beams": beams, "length_penalty": length_penalty, "max_len": captioner.max_len,
                     "banned": ["<pad>", "<start>", "<unk>"]},
        "references": {"file": references.source, "tokenization": references.tokenization,
                       "per_image": {"min": min(counts), "max": max(counts), "mean": sum(counts) / len(counts)}},
        "hypotheses": {"tokenization": HYPOTHESIS_TOKENS},
        "metrics": {"ran": ran, "not_run": dict(setup.unavailable),
                    "java": {"path": setup.java, "version": setup.version} if java_ran else None},
        "scores": {str(k): scores[k] for k in beams}, "results_files": {str(k): p for k, p in results_paths.items()},
    }


def format_table(result: EvaluateResult) -> str:
    """The scores as a text table, one row per beam size, a column per score computed."""
    first = next(iter(result.scores.values()), {})
    names = [n for n in SCORE_NAMES if n in first]
    header = f"{'beam':>4}  " + "  ".join(f"{n.upper().replace('_', '-'):>8}" for n in names)
    lines = [header, "-" * len(header)]
    for k, scores in result.scores.items():
        lines.append(f"{k:>4}  " + "  ".join(f"{scores[n]:>8.4f}" for n in names))
    if result.content is not None:
        lines += ["", format_report(result.content)]
    return "\n".join(lines)
