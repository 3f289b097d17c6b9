"""``capcli demo``: the embedded end-to-end run on the synthetic shapes dataset.

Prep (10,000 scenes) → a short training run with the shapes defaults → evaluation on the test
split → captions with attention pictures for three test images next to their reference
captions. Running it again reuses what exists: prep is skipped when up to date and training
resumes from the run's checkpoint (nothing to do once the demo's epochs are done).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

from capcli.config import SHAPES_IMAGES, PrepConfig, TrainConfig
from capcli.data.hdf5 import find_prepared
from capcli.data.prep import PrepResult, run_prep
from capcli.demo.plan import DemoPlan, plan_demo
from capcli.errors import CapcliError
from capcli.evaluation.content import drawn_objects, judge
from capcli.evaluation.evaluate import EvaluateResult, run_evaluate
from capcli.evaluation.scores import PYTHON_METRICS
from capcli.inference import pictures
from capcli.inference.captioning import CaptionResult, caption_files, load_captioner, original_captions
from capcli.paths import shapes_source, train_files
from capcli.runtime.device import resolve_device, resolve_precision
from capcli.runtime.progress import SILENT, Progress
from capcli.training.lifecycle import RunResult
from capcli.training.train import run_train

SHOWN, SHOWN_SEED, SHOWN_BEAM = 3, 0, 3  # test images captioned with pictures at the end


@dataclass(frozen=True)
class DemoCaption:
    result: CaptionResult
    references: list[str]
    pictures: list[str]
    right: tuple[bool, bool]  # (colour + shape, with sizes): does the caption name exactly what was drawn


@dataclass(frozen=True)
class DemoResult:
    prep: PrepResult
    train: RunResult
    evaluation: EvaluateResult
    captions: list[DemoCaption]
    output_folder: str
    plan: DemoPlan


def run_demo(data_folder: str = "data_output", output_folder: str = "model_outputs",
             num_images: int = SHAPES_IMAGES, workers: int = 1, epochs: int | None = None,
             progress: Progress = SILENT, seed: int = 0, image_size: int | None = None) -> DemoResult:
    """Run every demo stage on the shapes dataset and return what each produced; ``epochs`` and
    ``image_size`` None: sized to this machine (:mod:`capcli.demo.plan`)."""
    device = resolve_device("auto")
    plan = plan_demo(device, resolve_precision("auto", device), num_images, epochs, image_size,
                     _prepared_size(data_folder, num_images))
    progress.message(plan.reason)
    prep = run_prep(PrepConfig(output_folder=data_folder, num_images=num_images, workers=workers,
                               image_size=plan.image_size), progress)
    config = TrainConfig(data_folder=data_folder, output_folder=output_folder, data_name=prep.name, epochs=plan.epochs,
                         seed=seed, concept_epochs=plan.concept_epochs,
                         resume=os.path.exists(train_files(output_folder, prep.name).checkpoint))
    progress.message(f"Training {plan.epochs} epochs on {prep.name} (a small ResNet trained from scratch: first on "
                     "the kinds of object drawn, then with the decoder)…")
    given = frozenset({"epochs", "seed", "concept_epochs"})
    train = run_train(config, given=given, progress=progress)  # the shapes defaults otherwise
    captioner = load_captioner(train.best_checkpoint)
    evaluation = run_evaluate(captioner, data_folder, prep.name, "test", [1, 3, 5], output_folder,
                              progress=progress, metrics=PYTHON_METRICS)  # no Java, no download
    source, images_folder = shapes_source(data_folder)
    originals, drawn = original_captions(source), drawn_objects(source)
    # a few test images at random (the same ones every run), not the first ones: no hand-picked successes
    picked = random.Random(SHOWN_SEED).sample(evaluation.image_ids, min(SHOWN, len(evaluation.image_ids)))
    results = caption_files(captioner, [os.path.join(images_folder, i) for i in picked], beam_size=SHOWN_BEAM)
    failed = next((r.error for r in results if r.error), None)
    if failed:
        raise CapcliError(f"demo: cannot caption a test image: {failed}")
    written = pictures.write_pictures(results, output_folder, caption=False, attention=True, originals=originals,
                                      name_each=True)
    captions = [DemoCaption(r, originals.get(os.path.basename(r.image), []), written[r.image],
                            judge(r.caption, drawn[os.path.basename(r.image)])) for r in results]
    return DemoResult(prep, train, evaluation, captions, output_folder, plan)


def _prepared_size(data_folder: str, num_images: int) -> int | None:
    """The image side of the shapes data already prepared in ``data_folder`` (None: none there)."""
    name = PrepConfig(output_folder=data_folder, num_images=num_images).name
    try:
        return find_prepared(data_folder, name).images_meta("TRAIN")[1]
    except CapcliError:
        return None

