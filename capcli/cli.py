"""The ``capcli`` command line: a Click group of thin commands.

Each command parses its options, builds a config, calls one service and renders the result.
Heavy imports (torch, h5py, textual) happen inside the commands so ``capcli --help`` is instant.
:class:`~capcli.errors.CapcliError` from a service becomes a one-line error with exit code 1.
"""

from __future__ import annotations

import os

import click

from capcli import __version__
from capcli.config import DATASETS
from capcli.errors import CapcliError


class CapcliGroup(click.Group):
    """Turns service errors into Click errors: one line, exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CapcliError as exc:
            raise click.ClickException(str(exc)) from None


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
@click.option("--image-size", default=256, show_default=True, type=click.IntRange(16, 2048),
              help="Side of the square RGB images stored in HDF5.")
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
    click.echo(f"Next: capcli train --data-folder {result.output_folder} --name {result.name}")


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
              help="Captions per training batch.")
@click.option("--resume", is_flag=True, help="Continue from model_outputs/checkpoint_{name}.pth.tar.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Continue from this checkpoint file.")
@click.option("--overwrite", is_flag=True, help="Start a new run even though this run's checkpoint exists.")
@click.option("--encoder", type=click.Choice(["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]),
              default="resnet34", show_default=True, help="ResNet encoder.")
@click.option("--decoder", type=click.Choice(["attention", "plain"]), default="attention", show_default=True,
              help="LSTM decoder with soft attention, or ImgCap's plain one.")
@click.option("--pretrained", is_flag=True, help="Start the encoder from torchvision's ImageNet weights.")
@click.option("--pretrained-weights", type=click.Path(dir_okay=False),
              help="ImageNet weights file to use instead of the torch hub cache.")
@click.option("--fine-tune-encoder", "--fine_tune_encoder", is_flag=True,
              help="Train ResNet stages 2-4 too (no feature cache then).")
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
@click.pass_context
def train_command(ctx: click.Context, encoder: str, decoder: str, one_hot: bool, embed_dim: int,
                  attention_dim: int, decoder_dim: int, dropout: float, compile_: bool, no_feature_cache: bool,
                  **options) -> None:
    """Train a captioning model on prepared data (resumable).

    \b
    Example:
      capcli train --epochs 20 --batch-size 32
      capcli train --resume --epochs 30            # 30 in total
      torchrun --standalone --nproc_per_node=2 -m capcli.cli train --epochs 10
    """
    from capcli.config import ARCHITECTURE_FIELDS, TrainConfig
    from capcli.progress import TerminalProgress
    from capcli.train import run_train

    model_options = {"encoder": encoder, "decoder": decoder, "one_hot": one_hot, "embed_dim": embed_dim,
                     "attention_dim": attention_dim, "decoder_dim": decoder_dim, "dropout": dropout}
    explicit = frozenset(f for f in ARCHITECTURE_FIELDS if _option_given(ctx, f))
    config = TrainConfig(compile=compile_, feature_cache=not no_feature_cache, **options)
    result = run_train(config, model_options, explicit, TerminalProgress())
    click.echo(f"Trained {result.name}: {result.epochs_done} epoch(s), best validation BLEU-4 "
               f"{result.best_bleu4:.4f} at epoch {result.best_epoch} ({result.stop_reason}, {result.seconds:.0f} s).")
    click.echo(f"Checkpoints: {result.checkpoint}, {result.best_checkpoint}")


@cli.command("demo")
@click.option("--data-folder", default="data_output", show_default=True, type=click.Path(file_okay=False),
              help="Where the shapes dataset is generated and prepared.")
@num_images_option
@prep_workers_option
def demo_command(data_folder: str, num_images: int, workers: int) -> None:
    """Run the embedded demo on the synthetic shapes dataset (no download needed).

    \b
    Example:
      capcli demo
    """
    from capcli.demo import run_demo
    from capcli.progress import TerminalProgress

    result = run_demo(data_folder, num_images, workers, TerminalProgress())
    _print_prep_result(result.prep)


def main() -> None:
    cli(prog_name="capcli")


if __name__ == "__main__":
    main()
