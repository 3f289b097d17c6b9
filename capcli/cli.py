"""The ``capcli`` command line: a Click group of thin commands.

Each command parses its options, builds a config, calls one service and renders the result.
Heavy imports (torch, h5py, textual) happen inside the commands so ``capcli --help`` is instant.
:class:`~capcli.errors.CapcliError` from a service becomes a one-line error with exit code 1.
"""

from __future__ import annotations

import errno
import os
import shlex

import click

from capcli import __version__
from capcli.allocator import keep_freed_memory
from capcli.config import DATASETS, SHAPES_IMAGE_SIZE, is_shapes
from capcli.errors import CapcliError, Interrupted, os_error_message
from capcli.progress import close_open_bars


class _Failure(click.ClickException):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class CapcliGroup(click.Group):
    """The one error boundary: service errors and failures of the machine (a full disk, a
    read-only folder) become one line and exit code 1; an interrupt exits 128 + the signal."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Interrupted as exc:
            raise _Failure(str(exc), exc.exit_code) from None
        except CapcliError as exc:
            raise _Failure(str(exc)) from None
        except OSError as exc:
            if exc.errno == errno.EPIPE:  # `capcli metrics | head`: Click ends it quietly
                raise
            raise _Failure(os_error_message(exc)) from None
        except KeyboardInterrupt:
            raise _Failure("interrupted", 130) from None
        finally:
            close_open_bars()  # a loop that raised leaves its bar drawn; the error gets its own line


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


# options shared by `prep` and `demo`
prep_workers_option = click.option("--workers", default=_default_workers, show_default="CPU cores, at most 8",
                                   type=click.IntRange(1, 256), help="Image decoding processes.")
num_images_option = click.option("--num-images", default=2000, show_default=True, type=click.IntRange(10),
                                 help="shapes only: images in total, split 80/10/10 into train/val/test.")


@click.group(cls=CapcliGroup, context_settings={"help_option_names": ["-h", "--help"],
                                                "max_content_width": 100})
@click.version_option(__version__, prog_name="capcli")
def cli() -> None:
    """Train, evaluate, fine-tune and run Show, Attend and Tell captioning models.

    \b
    Example:
      capcli prep                      # build the shapes dataset into data_output/
      capcli prep --json dataset_flickr8k.json --image-folder Flicker8k_Dataset
    """


@cli.command("prep")
@click.option("--dataset", type=click.Choice(DATASETS), default=None,
              help="Dataset name [default: shapes; the JSON's own name with --json; flickr30k with --csv].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Karpathy split file (dataset_*.json) of a real dataset.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False),
              help="Flickr30k Kaggle results.csv (image_name| comment_number| comment), split by image.")
@click.option("--image-folder", type=click.Path(file_okay=False),
              help="Folder holding the dataset's images (with --json or --csv).")
@click.option("--output-folder", default="data_output", show_default=True, type=click.Path(file_okay=False),
              help="Where the prepared files are written.")
@click.option("--captions-per-image", default=5, show_default=True, type=click.IntRange(1, 100),
              help="Captions stored per image (sampled, or repeated when an image has fewer).")
@click.option("--min-word-freq", default=5, show_default=True, type=click.IntRange(1),
              help="Words seen fewer times in training captions become <unk>.")
@click.option("--max-len", default=50, show_default=True, type=click.IntRange(1, 1000),
              help="Longest caption kept, in words; longer captions are dropped.")
@click.option("--image-size", default=None, type=click.IntRange(16, 2048),
              help="Side of the square RGB images stored in HDF5 [default: 256; 192 for shapes].")
@prep_workers_option
@click.option("--seed", default=42, show_default=True, type=int,
              help="Seed for caption sampling, the CSV split and the shapes generator.")
@num_images_option
@click.option("--val-fraction", default=0.05, show_default=True, type=click.FloatRange(0, 0.5),
              help="--csv only: share of images put in the validation split.")
@click.option("--test-fraction", default=0.05, show_default=True, type=click.FloatRange(0, 0.5),
              help="--csv only: share of images put in the test split.")
@click.option("--force", is_flag=True, help="Rebuild even when the output is up to date.")
def prep_command(dataset: str | None, json_path: str | None, csv_path: str | None, **options) -> None:
    """Prepare a dataset: word map, HDF5 images, encoded captions and a manifest.

    \b
    Example:
      capcli prep                                  # synthetic shapes, no download
      capcli prep --json data/dataset_flickr8k.json --image-folder data/Flicker8k_Dataset
      capcli prep --csv flickr30k/results.csv --image-folder flickr30k/flickr30k_images
    """
    from capcli.config import PrepConfig
    from capcli.prep import run_prep
    from capcli.progress import TerminalProgress

    if dataset is None:
        dataset = _infer_dataset(json_path, csv_path)
    if options["image_size"] is None:
        options["image_size"] = SHAPES_IMAGE_SIZE if dataset == "shapes" else 256
    config = PrepConfig(dataset=dataset, json_path=json_path, csv_path=csv_path, **options)
    result = run_prep(config, TerminalProgress())
    _print_prep_result(result)


def _infer_dataset(json_path: str | None, csv_path: str | None) -> str:
    """The dataset a caption file holds, when --dataset was not given."""
    if csv_path:
        return "flickr30k"
    if not json_path:
        return "shapes"
    from capcli.data.karpathy import dataset_name_of

    name = dataset_name_of(json_path)
    if name not in DATASETS or name == "shapes":
        raise click.UsageError(f"cannot tell which dataset {json_path} holds; add --dataset "
                               f"({'|'.join(d for d in DATASETS if d != 'shapes')})")
    return name


def _print_prep_result(result) -> None:
    counts = ", ".join(f"{split} {n}" for split, n in result.counts.items())
    if result.up_to_date:
        click.echo(f"{result.output_folder}: {result.name} is up to date ({counts} images); "
                   "use --force to rebuild.")
        return
    for skip in result.skipped[:10]:
        click.echo(f"skipped {skip['split']} {skip['source']}: {skip['reason']}", err=True)
    if len(result.skipped) > 10:
        click.echo(f"... and {len(result.skipped) - 10} more (see the manifest)", err=True)
    click.echo(f"Prepared {result.name} in {result.output_folder}/ in {result.seconds:.1f} s: "
               f"{counts} images, vocabulary {result.vocab_size} tokens, "
               f"{len(result.skipped)} image(s) skipped, peak memory {result.peak_rss_mb:.0f} MB.")
    real = not is_shapes(result.name)
    click.echo(f"Next: capcli train --data-folder {shlex.quote(result.output_folder)} --name {result.name}"
               + (" --pretrained --output-folder model_outputs   # ImageNet weights, downloaded once" if real else ""))


def _option_given(ctx: click.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


@cli.command("train")
@click.option("--data-folder", default="data_output", show_default=True, type=click.Path(file_okay=False),
              help="Folder of prepared data (from `capcli prep`).")
@click.option("--name", default=None, help="Prepared data set name, e.g. flickr8k_5_5 [default: the only one].")
@click.option("--output-folder", default="model_outputs", show_default=True, type=click.Path(file_okay=False),
              help="Where checkpoints, metrics and summaries are written.")
@click.option("--epochs", default=120, show_default=True, type=click.IntRange(0),
              help="Total epochs (on --resume: the total, not additional ones).")
@click.option("--batch-size", "--batch_size", default=64, show_default=True, type=click.IntRange(1),
              help="Captions per training batch: batch-size ÷ captions-per-image whole images, each with all "
                   "its captions (so an image is encoded once per step).")
@click.option("--resume", is_flag=True, help="Continue from model_outputs/checkpoint_{name}.pth.tar.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Continue from this checkpoint file.")
@click.option("--overwrite", is_flag=True, help="Start a new run even though this run's checkpoint exists.")
@click.option("--encoder", type=click.Choice(["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]),
              default="resnet34", show_default=True, help="ResNet encoder.")
@click.option("--decoder", type=click.Choice(["attention", "plain"]), default="attention", show_default=True,
              help="LSTM decoder with soft attention, or ImgCap's plain one.")
@click.option("--pretrained/--no-pretrained", default=None,
              help="Start the encoder from torchvision's ImageNet weights, downloaded into $TORCH_HOME when not "
                   "there [default: yes, except on shapes].")
@click.option("--pretrained-weights", type=click.Path(dir_okay=False),
              help="ImageNet weights file to load instead of torchvision's download (offline machines).")
@click.option("--fine-tune-encoder/--frozen-encoder", "--fine_tune_encoder", default=False,
              help="Train ResNet stages 2-4 too (no feature cache then) [default: frozen; trained on shapes].")
@click.option("--one-hot", "--one_hot", is_flag=True, help="Fixed one-hot word vectors instead of embeddings.")
@click.option("--teacher-forcing", default=1.0, show_default=True, type=click.FloatRange(0, 1),
              help="Chance of feeding the true previous word (ImgCap used 0.9).")
@click.option("--embed-dim", default=512, show_default=True, type=click.IntRange(1), help="Word embedding size.")
@click.option("--attention-dim", default=512, show_default=True, type=click.IntRange(1), help="Attention size.")
@click.option("--decoder-dim", default=512, show_default=True, type=click.IntRange(1), help="LSTM hidden size.")
@click.option("--dropout", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Dropout before the output layer.")
@click.option("--decoder-lr", default=4e-4, show_default=True, type=float, help="Decoder learning rate.")
@click.option("--encoder-lr", default=1e-4, show_default=True, type=float, help="Encoder learning rate (fine-tuning).")
@click.option("--grad-clip", default=5.0, show_default=True, type=float, help="Clip gradients to ± this value.")
@click.option("--alpha-c", default=1.0, show_default=True, type=float,
              help="Weight of the doubly stochastic attention penalty.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0), help="DataLoader worker processes.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="auto: bf16 on CPUs with native bf16, fp16/bf16 autocast on CUDA, else fp32.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the decoder for training.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", default=42, show_default=True, type=int, help="Random seed (data order, init, dropout).")
@click.option("--no-feature-cache", is_flag=True, help="Run the frozen encoder on every batch instead of caching.")
@click.option("--save-every", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Also checkpoint every this many minutes inside an epoch (0: only at epoch ends).")
@click.option("--max-val-images", default=0, show_default=True, type=click.IntRange(0),
              help="Validate on at most this many images (0: all).")
@click.option("--patience-lr", default=10, show_default=True, type=click.IntRange(1),
              help="Epochs without BLEU-4 gain before the learning rates are multiplied by --lr-decay.")
@click.option("--lr-decay", default=0.8, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Learning-rate factor applied after --patience-lr epochs without gain.")
@click.option("--patience-stop", default=20, show_default=True, type=click.IntRange(1),
              help="Epochs without BLEU-4 gain before training stops.")
@click.pass_context
def train_command(ctx: click.Context, **params) -> None:
    """Train a captioning model on prepared data (resumable).

    On the shapes dataset the defaults are its own (resnet18 trained along with the decoder,
    256-wide decoder, learning rates 1e-3 / 5e-4 halved after each epoch without gain, batch
    32, 9 epochs: about 9 minutes on a 2-core CPU); options you give still win.

    \b
    Example:
      capcli train --epochs 20 --batch-size 32
      capcli train --resume --epochs 30            # 30 in total
      torchrun --standalone --nproc_per_node=2 -m capcli.cli train --epochs 10
    """
    from capcli.config import TrainConfig
    from capcli.progress import TerminalProgress
    from capcli.train import run_train

    model_options = {k: params.pop(k) for k in ("encoder", "decoder", "one_hot", "embed_dim", "attention_dim",
                                                "decoder_dim", "dropout")}
    given = frozenset(k for k in (*model_options, *params) if _option_given(ctx, k))
    config = TrainConfig(compile=params.pop("compile_"), feature_cache=not params.pop("no_feature_cache"), **params)
    result = run_train(config, model_options, given, TerminalProgress(), _given_args(ctx))
    if result.epochs_trained == 0:
        click.echo(f"Nothing was trained ({result.stop_reason}).")
        return
    click.echo(f"Trained {result.name}: {result.epochs_done} epoch(s), best validation BLEU-4 "
               f"{result.best_bleu4:.4f} at epoch {result.best_epoch} ({result.stop_reason}, {result.seconds:.0f} s).")
    click.echo(f"Checkpoints: {result.checkpoint}, {result.best_checkpoint}")


def _given_args(ctx: click.Context, leave_out: tuple[str, ...] = ("overwrite", "checkpoint")) -> list[str]:
    """The options the user gave, as command-line words (for the command that resumes a run)."""
    words: list[str] = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in leave_out or not _option_given(ctx, param.name):
            continue
        value = ctx.params.get(param.name)
        long = max(param.opts, key=len)
        if param.is_flag and param.secondary_opts:
            words.append(long if value else max(param.secondary_opts, key=len))
        elif param.is_flag:
            words += [long] if value else []
        else:
            words += [long, str(value)]
    return words


def _parse_beams(value: str) -> list[int]:
    try:
        beams = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected beam sizes like 1,3,5") from None
    if not beams or min(beams) < 1:
        raise click.BadParameter(f"{value!r}: beam sizes are whole numbers ≥ 1")
    return list(dict.fromkeys(beams))


model_option = click.option("-m", "--model", default=None, type=click.Path(dir_okay=False),
                            help="Checkpoint [default: the only BEST_*.pth.tar in --output-folder].")
output_folder_option = click.option("--output-folder", default="model_outputs", show_default=True,
                                    type=click.Path(file_okay=False),
                                    help="Where models are found and results are written.")
device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
precision_option = click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
                                show_default=True, help="Autocast precision for inference.")
length_penalty_option = click.option("--length-penalty", default=0.0, show_default=True, type=click.FloatRange(0),
                                     help="Rank finished captions by log-probability / length^this (0: the sum).")


def _load_model(model: str | None, output_folder: str, device: str, precision: str):
    from capcli.captioning import find_best_checkpoint, load_captioner

    return load_captioner(model or find_best_checkpoint(output_folder), device, precision)


def _picture_names(images: list[str]) -> dict[str, str]:
    """A distinct name part per image: its file stem, numbered when two images share one."""
    names, seen = {}, {}
    for image in images:
        stem = os.path.splitext(os.path.basename(image))[0]
        seen[stem] = seen.get(stem, 0) + 1
        names[image] = stem if seen[stem] == 1 else f"{stem}_{seen[stem]}"
    return names


def _picture_path(folder: str, base: str, name: str, several: bool) -> str:
    return os.path.join(folder, f"{base}_{name}.png" if several else f"{base}.png")


@cli.command("caption")
@click.argument("images", nargs=-1, type=click.Path())
@click.option("-i", "--img", "img", multiple=True, type=click.Path(),
              help="An image (or folder) to caption; repeatable.")
@model_option
@click.option("-wm", "--word-map", "--word_map", "word_map", default=None, type=click.Path(dir_okay=False),
              help="Word map JSON (optional: the checkpoint holds its own; if given it must match).")
@click.option("-b", "--beam-size", "--beam", "--beam_size", "beam_size", default=5, show_default=True,
              type=click.IntRange(1, 100), help="Beam width (1: greedy).")
@length_penalty_option
@click.option("-v", "--visualize-attention", "--visualize_attention", "visualize", is_flag=True,
              help="Also write attention_visualization.png (one panel per word).")
@click.option("-cj", "--captions-json", "--captions_json", "captions_json", default=None,
              type=click.Path(dir_okay=False), help="Original captions (Karpathy JSON or results.csv) to compare with.")
@click.option("--json", "as_json", is_flag=True, help='Print a JSON list of {"image", "caption", "score"}.')
@click.option("--no-pictures", is_flag=True, help="Do not write caption_result.png.")
@output_folder_option
@device_option
@precision_option
def caption_command(images: tuple[str, ...], img: tuple[str, ...], model: str | None, word_map: str | None,
                    beam_size: int, length_penalty: float, visualize: bool, captions_json: str | None,
                    as_json: bool, no_pictures: bool, output_folder: str, device: str, precision: str) -> None:
    """Caption images (files or folders) with beam search.

    Writes caption_result.png (and attention_visualization.png with -v, caption_comparison.png
    with -cj) into --output-folder; with several images, one file each named after the image.

    \b
    Example:
      capcli caption photo.jpg --beam 10
      capcli caption -i dog.jpg -m model_outputs/BEST_flickr8k_5_5.pth.tar -v
      capcli caption test_images/ --json
    """
    import json

    from capcli import pictures
    from capcli.captioning import caption_files, expand_inputs, original_captions
    from capcli.data.jsonfiles import read_json
    from capcli.errors import InputError
    from capcli.progress import TerminalProgress

    inputs = list(img) + list(images)
    if not inputs:
        raise click.UsageError("give at least one image or folder (e.g. capcli caption photo.jpg)")
    paths = expand_inputs(inputs)
    captioner = _load_model(model, output_folder, device, precision)
    if word_map is not None and read_json(word_map) != captioner.word_map:
        raise InputError(f"{word_map}: this word map differs from the one in {captioner.path}; "
                         "leave out --word-map (the checkpoint holds its own)")
    originals = original_captions(captions_json) if captions_json else {}
    results = caption_files(captioner, paths, beam_size, length_penalty, progress=TerminalProgress())
    several = len(paths) > 1
    if (not no_pictures or visualize or captions_json) and any(r.error is None for r in results):
        os.makedirs(output_folder, exist_ok=True)
    written = []
    names = _picture_names([r.image for r in results])
    for r in results:
        if r.error:
            continue
        if not no_pictures:
            written.append(pictures.caption_picture(r.pixels, r.caption, _picture_path(
                output_folder, "caption_result", names[r.image], several), r.score))
        if visualize and r.attention is not None:
            written.append(pictures.attention_picture(r.pixels, r.words, r.attention, _picture_path(
                output_folder, "attention_visualization", names[r.image], several)))
        refs = originals.get(os.path.basename(r.image))
        if refs:
            written.append(pictures.comparison_picture(r.pixels, r.caption, refs, _picture_path(
                output_folder, "caption_comparison", names[r.image], several)))
    if as_json:
        click.echo(json.dumps([r.as_json() for r in results], indent=2))
    else:
        for r in results:
            if r.error is None:
                click.echo(f"{r.image}: {r.caption}" if several else r.caption)
                for ref in originals.get(os.path.basename(r.image), []):
                    click.echo(f"    original: {ref}")
        if visualize and not captioner.decoder.has_attention:
            click.echo("(the plain decoder has no attention to visualise)", err=True)
        for path in written:
            click.echo(f"wrote {path}", err=True)
    errors = [r.error for r in results if r.error]
    for message in errors:
        click.echo(f"Error: {message}", err=True)
    if errors:
        raise SystemExit(1)


@cli.command("evaluate")
@model_option
@click.option("--data-folder", default="data_output", show_default=True, type=click.Path(file_okay=False),
              help="Folder of prepared data.")
@click.option("--name", default=None, help="Prepared data set name [default: the one the model was trained on].")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True,
              help="Which split's images to caption and score.")
@click.option("-b", "--beam", "--beam-size", "beams", default="1,3,5", show_default=True,
              help="Comma-separated beam sizes.")
@length_penalty_option
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1), help="Images per batch.")
@click.option("--max-images", default=0, show_default=True, type=click.IntRange(0),
              help="Evaluate on at most this many images (0: all).")
@output_folder_option
@device_option
@precision_option
def evaluate_command(model: str | None, data_folder: str, name: str | None, split: str, beams: str,
                     length_penalty: float, batch_size: int, max_images: int, output_folder: str, device: str,
                     precision: str) -> None:
    """Score a model on a split: BLEU-1..4, CIDEr-D and ROUGE-L per beam size.

    \b
    Example:
      capcli evaluate --split test --beam 1,3,5
      capcli evaluate -m model_outputs/BEST_A2C_shapes_5_5.pth.tar --beam 3
    """
    from capcli.evaluate import format_table, run_evaluate
    from capcli.progress import TerminalProgress

    beam_sizes = _parse_beams(beams)
    captioner = _load_model(model, output_folder, device, precision)
    result = run_evaluate(captioner, data_folder, name, split, beam_sizes, output_folder, length_penalty,
                          batch_size, max_images, TerminalProgress())
    click.echo(f"{result.name} {result.split}: {result.images} images, one caption each "
               f"({result.seconds:.0f} s, {captioner.path})")
    click.echo(format_table(result))
    click.echo(f"Wrote {result.json_path} and {', '.join(result.results_paths.values())}")


@cli.command("demo")
@click.option("--data-folder", default="data_output", show_default=True, type=click.Path(file_okay=False),
              help="Where the shapes dataset is generated and prepared.")
@click.option("--output-folder", default="model_outputs", show_default=True, type=click.Path(file_okay=False),
              help="Where the model, scores and pictures are written.")
@click.option("--epochs", default=3, show_default=True, type=click.IntRange(1), help="Training epochs.")
@num_images_option
@prep_workers_option
def demo_command(data_folder: str, output_folder: str, epochs: int, num_images: int, workers: int) -> None:
    """Run the embedded demo end to end on the synthetic shapes dataset (no download needed):
    prep, a short training run, evaluation, and captions with attention pictures.

    \b
    Example:
      capcli demo
      capcli demo --epochs 10          # better captions, about 8 minutes on 2 cores
    """
    from capcli.demo import run_demo
    from capcli.evaluate import format_table
    from capcli.progress import TerminalProgress

    result = run_demo(data_folder, output_folder, num_images, workers, epochs, TerminalProgress())
    _print_prep_result(result.prep)
    train = result.train
    click.echo(f"\nTrained {train.name}: {train.epochs_done} epoch(s), best validation BLEU-4 {train.best_bleu4:.4f} "
               f"({train.seconds:.0f} s) → {train.best_checkpoint}")
    click.echo(f"\nTest split, {result.evaluation.images} images, one caption each:")
    click.echo(format_table(result.evaluation))
    for item in result.captions:
        click.echo(f"\n{item.result.image}")
        click.echo(f"  generated: {item.result.caption}")
        for ref in item.references:
            click.echo(f"  reference: {ref}")
        click.echo(f"  pictures:  {', '.join(item.pictures)}")
    image = result.captions[0].result.image if result.captions else "IMAGE.jpg"
    click.echo("\nNext, try:")
    for line in (f"capcli caption {image} --beam 10 -v --output-folder {output_folder}",
                 f"capcli evaluate --data-folder {data_folder} --output-folder {output_folder} --beam 1,3,5",
                 f"capcli train --data-folder {data_folder} --output-folder {output_folder} --resume --epochs 10",
                 f"capcli metrics --output-folder {output_folder}",
                 f"capcli dashboard --output-folder {output_folder}"):
        click.echo(f"  {line}")


@cli.command("a2c")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False),
              help="The trained model to start from, e.g. model_outputs/BEST_shapes_5_5.pth.tar.")
@click.option("--data-folder", default=None, type=click.Path(file_okay=False),
              help="Folder of prepared data [default: where the model's training data was].")
@click.option("--name", default=None, help="Prepared data set name [default: the one the model was trained on].")
@click.option("--output-folder", default="model_outputs", show_default=True, type=click.Path(file_okay=False),
              help="Where A2C checkpoints are written and the metrics feed is appended.")
@click.option("--overwrite", is_flag=True, help="Start a new A2C run even though A2C_{name}.pth.tar exists.")
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(1), help="Total A2C epochs.")
@click.option("--batch-size", "--batch_size", default=32, show_default=True, type=click.IntRange(1),
              help="Images per batch (one sampled caption each).")
@click.option("--temperature", default=1.0, show_default=True, type=click.FloatRange(0.05),
              help="Sampling temperature (higher: more exploration).")
@click.option("--entropy-weight", "--entropy_weight", default=0.01, show_default=True, type=click.FloatRange(0),
              help="Initial weight of the entropy bonus.")
@click.option("--no-entropy-annealing", "--no_entropy_annealing", is_flag=True,
              help="Keep the entropy weight constant (default: anneal linearly to a tenth).")
@click.option("--value-loss-weight", "--value_loss_weight", default=0.5, show_default=True, type=click.FloatRange(0),
              help="Weight of the critic's squared error.")
@click.option("--freeze-encoder/--train-encoder", "--freeze_encoder", default=True, show_default=True,
              help="Keep every encoder weight fixed.")
@click.option("--gamma", default=1.0, show_default=True, type=click.FloatRange(0, 1), help="Discount factor.")
@click.option("--reward", type=click.Choice(["cider", "bleu4"]), default="cider", show_default=True,
              help="Caption reward: CIDEr-D (document frequencies from the training references) or BLEU-4.")
@click.option("--reward-clip", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Clip rewards to ± this (0: no clipping).")
@click.option("--baseline", type=click.Choice(["critic", "greedy"]), default="critic", show_default=True,
              help="critic: return − value; greedy: reward of the greedy caption (self-critical training).")
@click.option("--actor-lr", default=2e-5, show_default=True, type=float, help="Decoder learning rate.")
@click.option("--critic-lr", default=1e-3, show_default=True, type=float, help="Critic learning rate.")
@click.option("--encoder-lr", default=1e-5, show_default=True, type=float,
              help="Encoder learning rate (with --train-encoder).")
@click.option("--grad-clip", default=5.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Clip the gradient norm to this.")
@click.option("--max-len", default=0, show_default=True, type=click.IntRange(0),
              help="Longest sampled caption (0: the data's maximum).")
@click.option("--max-val-images", default=0, show_default=True, type=click.IntRange(0),
              help="Validate on at most this many images (0: all).")
@click.option("--resume", is_flag=True, help="Continue from model_outputs/A2C_{name}.pth.tar.")
@device_option
@precision_option
@click.option("--seed", default=42, show_default=True, type=int, help="Random seed (data order, critic, sampling).")
@click.pass_context
def a2c_command(ctx: click.Context, no_entropy_annealing: bool, **options) -> None:
    """Fine-tune a trained model with Advantage Actor-Critic (or self-critical) reinforcement learning.

    \b
    Example:
      capcli a2c --checkpoint model_outputs/BEST_shapes_5_5.pth.tar --epochs 5
      capcli a2c --checkpoint model_outputs/BEST_shapes_5_5.pth.tar --reward cider --baseline greedy
      capcli a2c --resume --epochs 10
    """
    from capcli.a2c import run_a2c
    from capcli.config import A2CConfig
    from capcli.progress import TerminalProgress
    from capcli.runlog import nothing_to_train

    if options["checkpoint"] is None and not options["resume"]:
        raise click.UsageError("give --checkpoint FILE (a trained model) or --resume")
    config = A2CConfig(entropy_annealing=not no_entropy_annealing, **options)
    explicit = frozenset(k for k in options if _option_given(ctx, k))
    if _option_given(ctx, "no_entropy_annealing"):
        explicit |= {"entropy_annealing"}
    result = run_a2c(config, TerminalProgress(), explicit, _given_args(ctx))
    if result.epochs_trained == 0:
        click.echo(f"Nothing was trained ({nothing_to_train(result.epochs_done, config.epochs)}).")
        return
    click.echo(f"A2C on {result.name}: {result.epochs_done} epoch(s), best validation "
               f"{'CIDEr-D' if config.reward == 'cider' else 'BLEU-4'} {result.best_score:.4f} at epoch "
               f"{result.best_epoch} ({result.seconds:.0f} s).")
    click.echo(f"Checkpoints: {result.checkpoint}, {result.best_checkpoint}")


@cli.command("metrics")
@click.option("--output-folder", default="model_outputs", show_default=True, type=click.Path(file_okay=False),
              help="The run folder (where `capcli train` wrote).")
@click.option("--name", default=None, help="Run name, e.g. flickr8k_5_5 [default: the only run there].")
@click.option("--width", default=None, type=click.IntRange(30, 400), help="Chart width [default: the terminal's].")
@click.option("--height", default=15, show_default=True, type=click.IntRange(8, 200), help="Chart height.")
@click.option("--no-charts", is_flag=True, help="Only the summary.")
@click.option("--save-png", is_flag=True,
              help="Also write loss_plot_, accuracy_plot_, bleu_scores_ and training_visualization_{name}.png "
                   "(needs matplotlib: pip install 'capcli[plots]').")
def metrics_command(output_folder: str, name: str | None, width: int | None, height: int, no_charts: bool,
                    save_png: bool) -> None:
    """Summarise a run and chart its loss, top-5 accuracy and BLEU-4 (works while it runs).

    \b
    Example:
      capcli metrics
      capcli metrics --name flickr8k_5_5 --save-png
      capcli metrics | less                        # plain text when piped
    """
    import shutil
    import sys

    from capcli.metrics import save_pngs, summary_text, terminal_charts
    from capcli.paths import run_name_of_feed
    from capcli.runs import find_feed, read_summary

    path = find_feed(output_folder, name)
    run_name = run_name_of_feed(path)
    summary = read_summary(path)
    click.echo(summary_text(run_name, path, summary))
    if not no_charts:
        colour = sys.stdout.isatty()
        chart_width = width or min(shutil.get_terminal_size((100, 24)).columns, 120)
        for chart in terminal_charts(summary, chart_width, height, colour):
            click.echo()
            click.echo(chart, color=colour)
    if save_png:
        for written in save_pngs(run_name, summary, output_folder):
            click.echo(f"wrote {written}")


@cli.command("arch")
@click.option("--checkpoint", "-m", "checkpoint", default=None, type=click.Path(dir_okay=False),
              help="Describe the model in this checkpoint (else build one from the options below).")
@click.option("--encoder", type=click.Choice(["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]),
              default="resnet34", show_default=True, help="ResNet encoder.")
@click.option("--decoder", type=click.Choice(["attention", "plain"]), default="attention", show_default=True,
              help="Decoder kind.")
@click.option("--vocab-size", default=2600, show_default=True, type=click.IntRange(5), help="Vocabulary size.")
@click.option("--embed-dim", default=512, show_default=True, type=click.IntRange(1), help="Word embedding size.")
@click.option("--attention-dim", default=512, show_default=True, type=click.IntRange(1), help="Attention size.")
@click.option("--decoder-dim", default=512, show_default=True, type=click.IntRange(1), help="LSTM hidden size.")
@click.option("--one-hot", is_flag=True, help="Fixed one-hot word vectors.")
@click.option("--fine-tune-encoder", is_flag=True, help="Count ResNet stages 2-4 as trainable.")
@click.option("--image-size", default=256, show_default=True, type=click.IntRange(32, 2048),
              help="Side of the sample image (a checkpoint uses its own).")
@click.option("--graph", default=None, type=click.Path(dir_okay=False),
              help="Also render a diagram to this PNG, e.g. model_outputs/model_architecture.png "
                   "(needs torchviz and Graphviz).")
def arch_command(checkpoint: str | None, graph: str | None, **options) -> None:
    """Show a model's layers, output shapes and parameter counts (total / trainable / frozen).

    \b
    Example:
      capcli arch --encoder resnet50 --decoder attention --vocab-size 2600
      capcli arch --checkpoint model_outputs/BEST_flickr8k_5_5.pth.tar --graph model_outputs/model_architecture.png
    """
    from capcli.arch import describe, load_model, render_graph, report_text

    encoder, decoder, config, fine_tune, image_size, source = load_model(checkpoint, dict(options))
    report = describe(encoder, decoder, config, fine_tune, image_size, source)
    click.echo(report_text(report))
    if graph:
        click.echo(f"wrote {render_graph(encoder, decoder, report, graph)}")


@cli.command("dashboard")
@click.option("--output-folder", default="model_outputs", show_default=True, type=click.Path(file_okay=False),
              help="The run folder to follow.")
@click.option("--name", default=None, help="Run name [default: the only metrics_*.jsonl there].")
@click.option("--poll", default=0.5, show_default=True, type=click.FloatRange(0.1, 60), help="Seconds between reads.")
def dashboard_command(output_folder: str, name: str | None, poll: float) -> None:
    """Follow a live run in the terminal: run panel, charts, checkpoints and caption queries.

    Keyboard only (? shows the keys); readable at 80 × 24 over SSH.

    \b
    Example:
      capcli dashboard
      capcli dashboard --output-folder runs/flickr8k --name flickr8k_5_5
    """
    import sys

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise CapcliError("capcli dashboard needs an interactive terminal (use `capcli metrics` in scripts and pipes)")
    from capcli.dashboard.app import Dashboard
    from capcli.runs import find_feed, run_feeds

    if name is None and len(run_feeds(output_folder)) > 1:
        find_feed(output_folder)  # several runs and no --name: its error lists them (no runs yet: wait)

    app = Dashboard(output_folder, name, poll_seconds=poll)
    app.run()
    if app.return_code:  # an unexpected error ended it: one line naming the log with its traceback
        raise CapcliError(app.error_message or f"the dashboard stopped with return code {app.return_code}")


@cli.command("bench")
@click.option("--quick", is_flag=True, help="Fewer repeats and smaller inputs (under 3 minutes on 2 cores).")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False),
              help="Also write every figure as JSON to this file.")
@device_option
@click.option("--prep-workers", default=None, type=click.IntRange(2, 64),
              help="Worker count compared with 1 for prep [default: CPU cores, 2 to 8].")
@click.option("--only", multiple=True, help="Run only measurements whose name contains this (repeatable).")
def bench_command(quick: bool, json_path: str | None, device: str, prep_workers: int | None,
                  only: tuple[str, ...]) -> None:
    """Measure encoder, training, captioning and prep speed (medians after warm-up) and peak memory.

    \b
    Example:
      capcli bench --quick
      capcli bench --json bench.json --device cuda
      capcli bench --quick --only caption --only prep
    """
    from capcli.bench import machine_info, run_bench
    from capcli.data.jsonfiles import write_json
    from capcli.device import resolve_device

    torch_device = resolve_device(device)
    machine = machine_info(torch_device)
    click.echo(f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, device {machine['device']}"
               + (f" ({machine['gpu']})" if "gpu" in machine else "")
               + f"; CPU bf16: {'yes' if machine['cpu_bf16'] else 'no'}, AMX: {'yes' if machine['cpu_amx'] else 'no'}"
               + ("" if machine["malloc_keeps_freed_memory"] else "; malloc options left as they were"))
    click.echo(f"{'measurement':<32} {'value':>10} {'unit':<9} {'median s':>9} {'peak MB':>8}")

    def show(name: str, row: dict) -> None:
        import statistics

        click.echo(f"{name:<32} {row['value']:>10.1f} {row['unit']:<9} {statistics.median(row['times']):>9.3f} "
                   f"{row.get('peak_gpu_mb', row['peak_rss_mb']):>8.0f}")

    report = run_bench(torch_device, quick, prep_workers, only, on_row=show)
    click.echo("ratios: " + ", ".join(f"{k} {'n/a' if v is None else f'{v:.2f}×'}"
                                      for k, v in report["ratios"].items()))
    comparison = report["beam_comparison"]
    if comparison is not None:
        counts = f"{comparison['images'] - comparison['differing']} of {comparison['images']} images"
        gap = "" if comparison["differing"] == 0 else \
            f"; where they differ, the two captions' scores differ by at most {comparison['largest_score_gap']:.2g}"
        click.echo(f"batched and one-at-a-time beam search give the same captions: "
                   f"{'yes' if report['beam_same_captions'] else 'NO'} ({counts}{gap})")
    if json_path:
        write_json(json_path, report)
        click.echo(f"wrote {json_path}")


def main() -> None:
    keep_freed_memory()
    cli(prog_name="capcli")


if __name__ == "__main__":
    main()
