"""The model card of an exported bundle (its ``README.md``): what the model is, what it was trained
on and for how long, its validation scores per epoch, the test scores of every ``capcli evaluate``
run of its checkpoint, and how to use it. Made from the bundle's ``config.json`` alone (plus
those evaluation files), so it always says what the bundle holds.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

from capcli.config import MONITOR_LABELS
from capcli.data.jsonfiles import MAX_DEPTH, read_json
from capcli.errors import CapcliError
from capcli.paths import checkpoint_stem, evaluation_files

_LABELS = {"bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4", "cider_d": "CIDEr-D",
           "rouge_l": "ROUGE-L", "meteor": "METEOR", "spice": "SPICE"}  # in the order capcli evaluate prints


def checkpoint_evaluations(checkpoint: str) -> list[dict]:
    """The ``evaluation_*.json`` files in ``checkpoint``'s folder that scored this very checkpoint
    (by its absolute path), each with ``file`` added; unreadable ones are left out."""
    folder = os.path.dirname(checkpoint) or "."
    found = []
    for path in evaluation_files(folder, checkpoint_stem(checkpoint)):
        try:
            report = read_json(path, max_depth=MAX_DEPTH)
        except (OSError, CapcliError):  # unreadable, malformed, too deep, a FIFO
            continue
        if isinstance(report, dict) and report.get("checkpoint") == os.path.abspath(checkpoint) \
                and isinstance(report.get("scores"), dict):
            found.append({**report, "file": path})
    return found


def _number(value: object, digits: int = 4) -> str:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"{value:.{digits}f}" if ok else "–"


def _weights(params: dict, part: str) -> str:
    count = params.get(part)
    return f" ({count:,} stored values)" if isinstance(count, int) else ""


def _architecture(config: dict) -> list[str]:
    model, params = config["model_config"], config.get("weights", {}).get("values", {})
    words = "fixed one-hot word vectors" if model.get("one_hot") else f"{model.get('embed_dim')}-wide word embeddings"
    decoder = (f"LSTM with soft attention (attention size {model.get('attention_dim')})"
               if model.get("decoder") == "attention" else "LSTM without attention (ImgCap's plain decoder)")
    side, size = model.get("encoded_size"), config["image_size"]
    return ["## Architecture", "",
            f"- Encoder: torchvision {model.get('encoder')} without its classifier, pooled to a {side} × {side} "
            f"grid of features{_weights(params, 'encoder')}",
            f"- Decoder: {decoder}, hidden size {model.get('decoder_dim')}, {words}, dropout "
            f"{model.get('dropout')}{_weights(params, 'decoder')}",
            f"- Vocabulary: {model.get('vocab_size')} tokens (`word_map.json`, with <pad> <unk> <start> <end>)",
            f"- Input: RGB images resized to {size} × {size}; captions of at most {config['max_len']} words", ""]


def _training(config: dict) -> list[str]:
    training, data = config.get("training", {}), config.get("data", {})
    monitor = MONITOR_LABELS.get(training.get("monitor"), training.get("monitor"))
    lines = ["## Data and training", "",
             f"- Data: the prepared set `{data.get('name')}` (folder `{data.get('folder')}`)",
             f"- Stage: {'A2C fine-tuning' if config['stage'] == 'a2c' else 'supervised training'}, "
             f"{training.get('epochs_done')} of {training.get('epochs_total') or '?'} epochs "
             f"({training.get('step')} steps)",
             f"- Best epoch: {training.get('best_epoch')}, picked on validation {monitor}: BLEU-4 "
             f"{_number(training.get('best_bleu4'))}, CIDEr-D {_number(training.get('best_cider_d'))}"]
    options = config.get("a2c_config") if config["stage"] == "a2c" else config.get("train_config")
    if isinstance(options, dict):
        keys = ("reward", "baseline", "batch_size", "actor_lr", "temperature") if config["stage"] == "a2c" \
            else ("batch_size", "decoder_lr", "encoder_lr", "fine_tune_encoder", "teacher_forcing", "precision", "seed")
        lines.append("- Options: " + ", ".join(f"{k} {options[k]}" for k in keys if k in options))
    validation = training.get("validation") or []
    if validation:
        lines += ["", "Validation (greedy decoding, every epoch):", "", "| epoch | BLEU-4 | CIDEr-D |",
                  "|---:|---:|---:|"]
        for v in validation:
            best = " (best)" if v.get("epoch") == training.get("best_epoch") else ""
            lines.append(f"| {v.get('epoch')}{best} | {_number(v.get('bleu4'))} | {_number(v.get('cider_d'))} |")
    return lines + [""]


def _test_scores(evaluations: list[dict], checkpoint: str) -> list[str]:
    lines = ["## Test scores", ""]
    if not evaluations:
        return lines + [f"None yet: run `capcli evaluate -m {checkpoint}` and export again.", ""]
    for report in evaluations:
        scores = report["scores"]
        names = [n for n in _LABELS if any(isinstance(s, dict) and n in s for s in scores.values())]
        lines += [f"`{os.path.basename(report['file'])}`: split {report.get('split')} of "
                  f"`{(report.get('data') or {}).get('name')}`, {report.get('images')} images, one caption each, "
                  "scored against every reference as pycocoevalcap scores them", "",
                  "| beam | " + " | ".join(_LABELS[n] for n in names) + " |", "|---:|" + "---:|" * len(names)]
        for beam, values in scores.items():
            lines.append(f"| {beam} | " + " | ".join(_number(values.get(n)) for n in names) + " |")
        lines.append("")
    return lines


def card_text(name: str, config: dict, evaluations: list[dict]) -> str:
    """The ``README.md`` of the bundle folder ``name`` described by ``config`` (its config.json)."""
    source = config["source"]["checkpoint"]
    when = datetime.fromtimestamp(config["exported_at"], timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# {name}", "",
             f"A Show, Attend and Tell image-captioning model, exported by capcli {config['capcli_version']} on "
             f"{when} from `{source}`.", "",
             "## Use", "", "From the folder that holds the bundle:", "", "```",
             f"capcli caption photo.jpg -m {name} --beam 5",
             f"capcli caption photos/ -m {name}/model.safetensors --json",
             f"capcli evaluate -m {name} --data-folder DATA_FOLDER --split test --beams 1,3,5", "```", "",
             "The bundle holds the weights (`model.safetensors`), the word map and `config.json`, and no "
             "optimiser state: it captions exactly as its checkpoint does and cannot resume training (resume "
             "from the checkpoint).", "",
             *_architecture(config), *_training(config), *_test_scores(evaluations, source)]
    return "\n".join(lines).rstrip() + "\n"
