"""Each command's own options, one bundle per command, declared once (the options several
commands share are in :mod:`capcli.cli.options`)."""

from __future__ import annotations

import click

from capcli.cli.options import (
    Decorator,
    architecture_options,
    bundle,
    checked_by,
    data_folder_option,
    data_name_option,
    default,
    device_option,
    from_config,
    json_option,
    model_option,
    num_images_option,
    output_folder_option,
    prep_workers_option,
    run_name_option,
    run_options,
    tensorboard_option,
)
from capcli.config import (
    BASELINES,
    MONITORS,
    REWARDS,
    SPLITS,
    A2CConfig,
    ModelConfig,
    PrepConfig,
    TrainConfig,
    dataset_name_problem,
)
from capcli.limits import LIMITS, int_range

prep_options = bundle(
    click.option("--dataset", default=None, callback=checked_by(dataset_name_problem), metavar="NAME",
                 help="Dataset name, the start of every prepared file's name: letters, digits, - _ . "
                      "[default: shapes without a caption file; else the file's own: a Karpathy file's "
                      "'dataset', coco, flickr8k, flickr30k, or the file's name]."),
    click.option("--captions", "captions", multiple=True, type=click.Path(dir_okay=False), metavar="FILE",
                 help="Caption file, its format told from its content: Karpathy dataset_*.json, COCO "
                      "captions_*.json, Flickr8k.token.txt, Kaggle captions.txt, Flickr30k results.csv, "
                      "or any CSV/TSV/JSONL with an image and a caption column (optional split column). "
                      "Repeatable: e.g. COCO's captions_train2014.json and captions_val2014.json, whose "
                      "names give their splits."),
    click.option("--split-list", "split_lists", multiple=True, type=click.Path(dir_okay=False), metavar="FILE",
                 help="Image names of one split, one per line, the file's name saying which (train, val/dev, "
                      "test); repeatable. Images in no list are skipped. [default: Flickr_8k.{train,dev,test}"
                      "Images.txt next to a Flickr8k.token.txt]"),
    click.option("--image-column", default=None, metavar="NAME",
                 help="CSV/TSV/JSONL: the image column [default: image, image_name, filename, file_name...]."),
    click.option("--caption-column", default=None, metavar="NAME",
                 help="CSV/TSV/JSONL: the caption column, text or a JSON list of texts [default: caption, "
                      "captions, comment, text, sentence...]."),
    click.option("--image-folder", type=click.Path(file_okay=False),
                 help="Folder holding the dataset's images (with a caption file); for COCO captions_*.json "
                      "also the folder holding train2014/ and val2014/."),
    from_config(PrepConfig, "--output-folder", type=click.Path(file_okay=False),
                help="Where the prepared files are written."),
    from_config(PrepConfig, "--captions-per-image", type=click.IntRange(1, 100),
                help="Captions stored per image (sampled, or repeated when an image has fewer)."),
    from_config(PrepConfig, "--min-word-freq", type=click.IntRange(1),
                help="Words seen fewer times in training captions become <unk>."),
    from_config(PrepConfig, "--max-len", type=int_range("max_len"),
                help="Longest caption kept, in words; longer captions are dropped."),
    click.option("--image-size", default=None, type=int_range("image_size"),
                 help="Side of the square RGB images stored in HDF5 [default: 256; 128 for shapes]."),
    prep_workers_option,
    from_config(PrepConfig, "--seed", type=int,
                help="Seed for caption sampling, the split by image and the shapes generator."),
    num_images_option,
    from_config(PrepConfig, "--val-fraction", type=click.FloatRange(0, 0.5),
                help="Images without a split (no split column or list): share put in the validation split."),
    from_config(PrepConfig, "--test-fraction", type=click.FloatRange(0, 0.5),
                help="Images without a split (no split column or list): share put in the test split."),
    click.option("--force", is_flag=True, help="Rebuild even when the output is up to date."),
)


def _train(*decls: str, **attrs) -> Decorator:
    return from_config(TrainConfig, *decls, **attrs)


train_options = bundle(
    data_folder_option(),
    data_name_option("Prepared data set name, e.g. flickr8k_5_5 [default: the only one]."),
    output_folder_option(),
    run_name_option("The run's name, in every file it writes (checkpoint_NAME.pth.tar, metrics_NAME.jsonl...): "
                    "letters, digits, - _ . [default: the data set's name]. --resume finds the run by it."),
    tensorboard_option,
    _train("--epochs", type=click.IntRange(0), help="Total epochs (on --resume: the total, not additional ones)."),
    _train("--batch-size", "--batch_size", type=int_range("batch_size"),
           help="Captions per training batch: batch-size ÷ captions-per-image whole images, each with all "
                "its captions (so an image is encoded once per step)."),
    click.option("--resume", is_flag=True, help="Continue from model_outputs/checkpoint_{run}.pth.tar."),
    click.option("--checkpoint", type=click.Path(dir_okay=False), help="Continue from this checkpoint file."),
    click.option("--overwrite", is_flag=True, help="Start a new run even though this run's checkpoint exists."),
    architecture_options,
    click.option("--pretrained/--no-pretrained", default=default(TrainConfig, "pretrained"),
                 help="Start the encoder from its published weights (torchvision's ImageNet weights into "
                      "$TORCH_HOME, CLIP's through open_clip), downloaded once [default: yes, except on shapes]."),
    click.option("--pretrained-weights", type=click.Path(dir_okay=False),
                 help="Weights file to load instead of the download (offline machines): a state dict of the "
                      "whole torchvision or open_clip model (.pth, or .safetensors)."),
    click.option("--fine-tune-encoder/--frozen-encoder", "--fine_tune_encoder",
                 default=default(TrainConfig, "fine_tune_encoder"),
                 help="Train the encoder's last stages or blocks too (no feature cache then) [default: frozen; "
                      "trained on shapes]."),
    _train("--fine-tune-depth", type=click.IntRange(1),
           help="With --fine-tune-encoder: how many of the encoder's last stages (ResNet, ConvNeXt, "
                "EfficientNetV2, RegNetY, Swin, CLIP ResNet) or blocks (ViT, CLIP ViT) train [default: ResNet 3 "
                "(stages 2-4), ViT 4, others 2]."),
    _train("--teacher-forcing", type=click.FloatRange(0, 1),
           help="Chance of feeding the true previous word (ImgCap used 0.9)."),
    from_config(ModelConfig, "--dropout", type=click.FloatRange(0, 1), help="Dropout before the output layer."),
    _train("--decoder-lr", type=float, help="Decoder learning rate."),
    _train("--encoder-lr", type=float, help="Encoder learning rate (fine-tuning)."),
    _train("--grad-clip", type=float, help="Clip gradients to ± this value."),
    _train("--alpha-c", type=float, help="Weight of the doubly stochastic attention penalty."),
    _train("--workers", type=click.IntRange(0), help="DataLoader worker processes."),
    click.option("--compile", "compile_", is_flag=True, help="torch.compile the decoder for training."),
    run_options(TrainConfig, "Random seed (data order, init, dropout)."),
    click.option("--no-feature-cache", is_flag=True, help="Run the frozen encoder on every batch instead of caching."),
    _train("--save-every", type=click.FloatRange(0),
           help="Also checkpoint every this many minutes inside an epoch (0: only at epoch ends)."),
    _train("--max-val-images", type=click.IntRange(0), help="Validate on at most this many images (0: all)."),
    _train("--monitor", type=click.Choice(MONITORS),
           help="Validation score (greedy captions) that picks the BEST checkpoint and drives --patience-lr "
                "and --patience-stop: BLEU-4 or CIDEr-D. A resumed run keeps its own."),
    _train("--patience-lr", type=click.IntRange(1),
           help="Epochs without --monitor gain before the learning rates are multiplied by --lr-decay."),
    _train("--lr-decay", type=click.FloatRange(0, 1, min_open=True),
           help="Learning-rate factor applied after --patience-lr epochs without gain."),
    _train("--patience-stop", type=click.IntRange(1), help="Epochs without --monitor gain before training stops."),
    _train("--captions-per-step", type=click.IntRange(0),
           help="Train on this many of each image's captions per step, picked at random (0: all of them): "
                "cheaper steps, so more images for the same time."),
    _train("--concept-epochs", type=click.IntRange(0),
           help="shapes: a new run first trains the encoder this many epochs to recognise the kinds of object "
                "drawn in each image (helps an encoder trained from scratch; needs --fine-tune-encoder)."),
    _train("--concept-lr", type=float, help="Learning rate of that concept pretraining."),
    click.option("--complete-captions/--all-captions", default=default(TrainConfig, "complete_captions"),
                 help="shapes: train on the captions that name every object drawn, with its size (the others "
                      "still count in validation and evaluation) [default: yes on shapes]."),
)


def _a2c(*decls: str, **attrs) -> Decorator:
    return from_config(A2CConfig, *decls, **attrs)


a2c_options = bundle(
    click.option("--checkpoint", default=None, type=click.Path(dir_okay=False),
                 help="The trained model to start from, e.g. model_outputs/BEST_shapes_5_5.pth.tar."),
    data_folder_option("Folder of prepared data [default: where the model's training data was].",
                       default=default(A2CConfig, "data_folder")),
    data_name_option("Prepared data set name [default: the one the model was trained on]."),
    output_folder_option("Where A2C checkpoints are written and the metrics feed is appended."),
    run_name_option("The run's name, in every file it writes (A2C_NAME.pth.tar, metrics_NAME.jsonl...): "
                    "letters, digits, - _ . [default: the run that trained --checkpoint; on --resume, "
                    "the data set's name]."),
    tensorboard_option,
    click.option("--overwrite", is_flag=True, help="Start a new A2C run even though A2C_{run}.pth.tar exists."),
    _a2c("--epochs", type=click.IntRange(1), help="Total A2C epochs (a shapes model: 4 unless given)."),
    _a2c("--batch-size", "--batch_size", type=int_range("batch_size"),
         help="Images per batch (one sampled caption each)."),
    _a2c("--temperature", type=click.FloatRange(0.05),
         help="Sampling temperature (higher: more exploration; a shapes model: 0.5 unless given)."),
    _a2c("--entropy-weight", "--entropy_weight", type=click.FloatRange(0),
         help="Initial weight of the entropy bonus (a shapes model: 0 unless given)."),
    click.option("--no-entropy-annealing", "--no_entropy_annealing", is_flag=True,
                 help="Keep the entropy weight constant (default: anneal linearly to a tenth)."),
    _a2c("--value-loss-weight", "--value_loss_weight", type=click.FloatRange(0),
         help="Weight of the critic's squared error."),
    _a2c("--freeze-encoder/--train-encoder", "--freeze_encoder", field="freeze_encoder",
         help="Keep every encoder weight fixed (a shapes model: --train-encoder unless given)."),
    _a2c("--gamma", type=click.FloatRange(0, 1), help="Discount factor."),
    _a2c("--reward", type=click.Choice(REWARDS),
         help="Caption reward: CIDEr-D (document frequencies from the training references) or BLEU-4."),
    _a2c("--reward-clip", type=click.FloatRange(0), help="Clip rewards to ± this (0: no clipping)."),
    _a2c("--baseline", type=click.Choice(BASELINES),
         help="critic: return − value; greedy: reward of the greedy caption (self-critical training)."),
    _a2c("--actor-lr", type=float, help="Decoder learning rate (a shapes model: 1e-4 unless given)."),
    _a2c("--critic-lr", type=float, help="Critic learning rate."),
    _a2c("--encoder-lr", type=float, help="Encoder learning rate (with --train-encoder)."),
    _a2c("--grad-clip", type=click.FloatRange(0, min_open=True), help="Clip the gradient norm to this."),
    _a2c("--max-len", type=int_range("max_len", 0), help="Longest sampled caption (0: the data's maximum)."),
    _a2c("--max-val-images", type=click.IntRange(0), help="Validate on at most this many images (0: all)."),
    click.option("--resume", is_flag=True, help="Continue from model_outputs/A2C_{run}.pth.tar."),
    run_options(A2CConfig, "Random seed (data order, critic, sampling)."),
)


# --- the commands that read models and runs ----------------------------------------------------

caption_options = bundle(
    click.option("-i", "--img", "img", multiple=True, type=click.Path(),
                 help="An image (or folder) to caption; repeatable."),
    model_option(),
    click.option("-wm", "--word-map", "--word_map", "word_map", default=None, type=click.Path(dir_okay=False),
                 help="Word map JSON (optional: the checkpoint holds its own; if given it must match)."),
    click.option("-b", "--beam-size", "--beam", "--beam_size", "beam_size", default=5, show_default=True,
                 type=int_range("beam"), help="Beam width (1: greedy)."),
    click.option("-v", "--visualize-attention", "--visualize_attention", "visualize", is_flag=True,
                 help="Also write attention_visualization.png (one panel per word, one colour scale)."),
    click.option("--per-word", is_flag=True,
                 help="Attention pictures: scale each word's map to its own min-max (default: one colour scale "
                      "for the whole caption, 0 to its highest weight)."),
    click.option("-cj", "--captions-json", "--captions_json", "captions_json", default=None,
                 type=click.Path(dir_okay=False),
                 help="Original captions to compare with (any caption file `capcli prep` reads)."),
    json_option('Print a JSON list of {"image", "caption", "score"}.'),
    click.option("--no-pictures", is_flag=True, help="Do not write caption_result.png."),
)

def _parse_beams(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        beams = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected beam sizes like 1,3,5") from None
    top = LIMITS["beam"].maximum
    if not beams or min(beams) < 1 or max(beams) > top:
        raise click.BadParameter(f"{value!r}: beam sizes are whole numbers from 1 to {top}")
    return list(dict.fromkeys(beams))


def _parse_metrics(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    from capcli.evaluation.scores import METRIC_KEYS

    if value is None:
        return None
    metrics = [v.strip().lower() for v in value.split(",") if v.strip()]
    unknown = [m for m in metrics if m not in METRIC_KEYS]
    if unknown or not metrics:
        raise click.BadParameter(f"{value!r}: expected a comma-separated list of {','.join(METRIC_KEYS)}")
    return list(dict.fromkeys(metrics))


evaluate_options = bundle(
    model_option(),
    data_folder_option("Folder of prepared data."),
    data_name_option("Prepared data set name [default: the one the model was trained on]."),
    click.option("--split", type=click.Choice(SPLITS), default=SPLITS[0], show_default=True,
                 help="Which split's images to caption and score."),
    click.option("--beams", "beams", default="1,3,5", show_default=True,
                 callback=_parse_beams, help="Comma-separated beam sizes."),
    click.option("--metrics", default=None, callback=_parse_metrics, metavar="LIST", show_default="all that can run",
                 help="Comma-separated metrics of bleu,meteor,rouge,cider,spice. METEOR and SPICE need Java and "
                      "pip install 'capcli[coco]'; SPICE also downloads Stanford CoreNLP on first use."),
    click.option("--batch-size", default=32, show_default=True, type=int_range("batch_size"),
                 help="Images per batch."),
    click.option("--max-images", default=0, show_default=True, type=click.IntRange(0),
                 help="Evaluate on at most this many images (0: all)."),
)

demo_options = bundle(
    data_folder_option("Where the shapes dataset is generated and prepared."),
    output_folder_option("Where the model, scores and pictures are written."),
    click.option("--epochs", type=click.IntRange(1),
                 help="Training epochs [default: 5, sized to this machine's speed]."),
    click.option("--image-size", type=click.IntRange(32, 512),
                 help="Side of the generated scenes [default: 128 where training them fits the demo's minutes, "
                      "else 80; the size of scenes already prepared]."),
    num_images_option,
    prep_workers_option,
    click.option("--seed", default=0, show_default=True, type=int, help="Seed of the training run (init, data order)."),
)

chart_options = bundle(
    click.option("--width", default=None, type=click.IntRange(30, 400), help="Chart width [default: the terminal's]."),
    click.option("--height", default=15, show_default=True, type=click.IntRange(8, 200), help="Chart height."),
    click.option("--no-charts", is_flag=True, help="Only the summary."),
    click.option("--save-png", is_flag=True,
                 help="Also write loss_plot_, accuracy_plot_, bleu_scores_ and training_visualization_{name}.png "
                      "(needs matplotlib: pip install 'capcli[plots]')."),
)

arch_options = bundle(
    model_option("Describe the model in this checkpoint or bundle (else build one from the options below)."),
    click.option("--checkpoint", default=None, type=click.Path(dir_okay=False), hidden=True,
                 deprecated="use -m/--model", help="Old name of -m/--model."),
    architecture_options,
    click.option("--vocab-size", default=2600, show_default=True, type=int_range("vocab_size", 5),
                 help="Vocabulary size."),
    click.option("--fine-tune-encoder", is_flag=True, help="Count ResNet stages 2-4 as trainable."),
    click.option("--image-size", default=256, show_default=True, type=int_range("image_size", 32),
                 help="Side of the sample image (a checkpoint uses its own)."),
    click.option("--graph", default=None, type=click.Path(dir_okay=False),
                 help="Also render a diagram to this PNG, e.g. model_outputs/model_architecture.png "
                      "(needs torchviz and Graphviz)."),
)

poll_option = click.option("--poll", default=0.5, show_default=True, type=click.FloatRange(0.1, 60),
                           help="Seconds between reads.")

export_output_option = click.option(
    "-o", "--output", default=None, type=click.Path(),
    help="The bundle folder to write [default: the checkpoint's name with .bundle instead of .pth.tar, "
         "in --output-folder when given, else next to the checkpoint]. Only a previous bundle there is replaced.")

bench_options = bundle(
    click.option("--quick", is_flag=True, help="Fewer repeats and smaller inputs (under 3 minutes on 2 cores)."),
    click.option("--json-file", "json_path", default=None, type=click.Path(dir_okay=False),
                 help="Also write every figure as JSON to this file."),
    device_option,
    click.option("--prep-workers", default=None, type=click.IntRange(2, 64),
                 help="Worker count compared with 1 for prep [default: CPU cores, 2 to 8]."),
    click.option("--only", multiple=True, help="Run only measurements whose name contains this (repeatable)."),
)
