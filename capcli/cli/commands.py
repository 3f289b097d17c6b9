"""The ``capcli`` command line: a Click group of thin commands.

Each command parses its options (declared in :mod:`capcli.cli.options` and
:mod:`capcli.cli.command_options`), builds a config, calls one
service and renders the result (:mod:`capcli.cli.render`). Heavy imports (torch, h5py, textual)
happen inside the commands so ``capcli --help`` is instant. :class:`~capcli.errors.CapcliError`
from a service becomes a one-line error with exit code 1.
"""

from __future__ import annotations

import errno
import os
import sys

import click

from capcli import __version__
from capcli.cli import command_options, options, renamed, render
from capcli.cli import env as cli_env
from capcli.cli import runs as cli_runs
from capcli.cli.bench import bench_command
from capcli.cli.export import export_command
from capcli.cli.options import option_given
from capcli.config import SHAPES_IMAGE_SIZE
from capcli.errors import CapcliError, Interrupted, os_error_message, out_of_memory_message
from capcli.runtime.progress import close_open_bars


class _Failure(click.ClickException):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class CapcliGroup(click.Group):
    """The one error boundary: service errors and failures of the machine (a full disk, a
    read-only folder, memory running out) become one line and exit code 1; an interrupt exits
    128 + the signal."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        return name, command, renamed.rewrite(name, rest)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Interrupted as exc:
            raise _Failure(str(exc), exc.exit_code) from None
        except CapcliError as exc:
            if exc.ends_process_at_once:
                _end_now(_Failure(str(exc)))
            raise _Failure(str(exc)) from None
        except OSError as exc:
            if exc.errno == errno.EPIPE:  # `capcli metrics | head`: Click ends it quietly
                raise
            raise _Failure(os_error_message(exc)) from None
        except KeyboardInterrupt:
            raise _Failure("interrupted", 130) from None
        except RuntimeError as exc:  # torch's out-of-memory errors; anything else is a bug, with its traceback
            message = out_of_memory_message(exc)
            if message is None:
                raise
            raise _Failure(message) from None
        finally:
            close_open_bars()  # a loop that raised leaves its bar drawn; the error gets its own line


def _end_now(failure: _Failure) -> None:
    """Print ``failure`` as Click would, then end the process without its teardown."""
    close_open_bars()
    failure.show()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(failure.exit_code)


@click.group(cls=CapcliGroup, context_settings={"help_option_names": ["-h", "--help"],
                                                "max_content_width": 100})
@click.version_option(__version__, prog_name="capcli")
def cli() -> None:
    """Train, evaluate, fine-tune and run Show, Attend and Tell captioning models.

    \b
    Example:
      capcli prep                      # the shapes dataset, into data_output/
      capcli prep --captions dataset_flickr8k.json --image-folder flickr8k/
    """


@cli.command("prep")
@command_options.prep_options
def prep_command(dataset: str | None, **params) -> None:
    """Prepare a dataset: word map, HDF5 images, encoded captions, every image's reference
    captions and a manifest.

    The caption file's format is told from its content (docs/data.md). Raw captions
    are tokenised as the COCO caption evaluation does (lower case, punctuation dropped). Rows that
    cannot be used are skipped and listed with their file and line. Without a split in the file,
    images are split deterministically by a hash of their names (--val-fraction, --test-fraction).

    \b
    Example:
      capcli prep                                  # synthetic shapes, no download
      capcli prep --captions data/dataset_flickr8k.json \\
                  --image-folder data/Flicker8k_Dataset
      capcli prep --captions Flickr8k_text/Flickr8k.token.txt \\
                  --image-folder Flicker8k_Dataset
      capcli prep --captions annotations/captions_train2014.json \\
                  --captions annotations/captions_val2014.json --image-folder coco
      capcli prep --captions mine.jsonl --dataset birds --image-folder photos
    """
    from capcli.config import PrepConfig
    from capcli.data.prep import run_prep
    from capcli.runtime.progress import TerminalProgress

    params["captions"], params["split_lists"] = tuple(params["captions"]), tuple(params["split_lists"])
    if params["image_size"] is None:
        given = params["captions"]
        params["image_size"] = SHAPES_IMAGE_SIZE if dataset == "shapes" or not (dataset or given) else 256
    render.prep_result(run_prep(PrepConfig(dataset=dataset, **params), TerminalProgress()))


@cli.command("train")
@command_options.train_options
@click.pass_context
def train_command(ctx: click.Context, **params) -> None:
    """Train a captioning model on prepared data (resumable).

    On the shapes dataset the defaults are its own (a small ResNet trained from scratch, first
    on the kinds of object drawn, then with a 256-wide decoder on one complete caption of each
    image a step; 8 epochs); options you give still win.

    \b
    Example:
      capcli train --epochs 20 --batch-size 32
      capcli train --resume --epochs 30            # 30 in total
      torchrun --standalone --nproc_per_node=2 -m capcli.cli train --epochs 10
    """
    from capcli.config import TrainConfig
    from capcli.runtime.progress import TerminalProgress
    from capcli.training.train import run_train

    model_options = {k: params.pop(k) for k in ("encoder", "decoder", "one_hot", "embed_dim", "attention_dim",
                                                "decoder_dim", "dropout")}
    given = frozenset(k for k in (*model_options, *params) if option_given(ctx, k))
    config = TrainConfig(compile=params.pop("compile_"), feature_cache=not params.pop("no_feature_cache"), **params)
    result = run_train(config, model_options, given, TerminalProgress(), options.given_args(ctx))
    if result.main_rank:  # the other torchrun ranks print nothing
        render.train_result(result)


@cli.command("caption")
@click.argument("images", nargs=-1, type=click.Path())
@command_options.caption_options
@options.decoding_options
def caption_command(images: tuple[str, ...], img: tuple[str, ...], model: str | None, word_map: str | None,
                    beam_size: int, length_penalty: float, visualize: bool, per_word: bool, captions_json: str | None,
                    as_json: bool, no_pictures: bool, output_folder: str, device: str, precision: str) -> None:
    """Caption images (files or folders) with beam search.

    Writes caption_result.png (and attention_visualization.png with -v, caption_comparison.png
    with -cj) into --output-folder; with several images, one file each named after the image.

    \b
    Example:
      capcli caption photo.jpg --beam 10
      capcli caption -i dog.jpg -m model_outputs/BEST_flickr8k_5_5.pth.tar -v
      capcli caption dog.jpg -v --per-word   # each word on its own scale
      capcli caption test_images/ --json
    """
    from capcli.inference.captioning import caption_files, check_word_map, expand_inputs, load_model, original_captions
    from capcli.inference.pictures import write_pictures
    from capcli.runtime.progress import TerminalProgress

    if not img and not images:
        raise click.UsageError("give at least one image or folder (e.g. capcli caption photo.jpg)")
    paths = expand_inputs(list(img) + list(images))
    captioner = load_model(model, output_folder, device, precision)
    if word_map is not None:
        check_word_map(captioner, word_map)
    originals = original_captions(captions_json) if captions_json else {}
    results = caption_files(captioner, paths, beam_size, length_penalty, progress=TerminalProgress())
    written = write_pictures(results, output_folder, not no_pictures, visualize, originals, per_word=per_word)
    render.captions(results, originals, written, as_json, visualize and not captioner.decoder.has_attention)
    if any(r.error for r in results):
        raise SystemExit(1)


@cli.command("evaluate")
@command_options.evaluate_options
@options.decoding_options
def evaluate_command(model: str | None, data_folder: str, data_name: str | None, split: str, beams: list[int],
                     metrics: list[str] | None, length_penalty: float, batch_size: int, max_images: int,
                     output_folder: str, device: str, precision: str) -> None:
    """Score a model on a split per beam size: BLEU-1..4, ROUGE-L and CIDEr-D as pycocoevalcap computes
    them, against every raw reference; METEOR and SPICE too where Java and the coco extra are there.

    \b
    Example:
      capcli evaluate --split test --beams 1,3,5
      capcli evaluate -m model_outputs/BEST_A2C_shapes_5_5.pth.tar --beams 3 \\
                      --metrics bleu,cider
    """
    from capcli.evaluation.evaluate import run_evaluate
    from capcli.inference.captioning import load_model
    from capcli.runtime.progress import TerminalProgress

    captioner = load_model(model, output_folder, device, precision)
    result = run_evaluate(captioner, data_folder, data_name, split, beams, output_folder, length_penalty,
                          batch_size, max_images, TerminalProgress(), metrics)
    render.evaluation(result, captioner.path)


@cli.command("demo")
@command_options.demo_options
def demo_command(data_folder: str, output_folder: str, epochs: int | None, image_size: int | None, num_images: int,
                 workers: int, seed: int) -> None:
    """Run the embedded demo end to end on the synthetic shapes dataset (no download needed):
    prep, a short training run, evaluation, and captions with attention pictures. It first times a
    few training steps and picks the scenes' size that trains within its minutes on this machine.

    \b
    Example:
      capcli demo
      capcli demo --epochs 8           # the shapes defaults' full run
      capcli demo --image-size 128     # full-size scenes, however long they take
    """
    from capcli.demo.pipeline import run_demo
    from capcli.runtime.allocator import tune_for_device
    from capcli.runtime.progress import TerminalProgress

    tune_for_device("auto")  # the demo trains on whatever device is there
    result = run_demo(data_folder, output_folder, num_images, workers, epochs, TerminalProgress(), seed, image_size)
    render.demo_result(result, data_folder, output_folder)


@cli.command("a2c")
@command_options.a2c_options
@click.pass_context
def a2c_command(ctx: click.Context, no_entropy_annealing: bool, **params) -> None:
    """Fine-tune a trained model with Advantage Actor-Critic (or self-critical) reinforcement learning.

    \b
    Example:
      capcli a2c --checkpoint model_outputs/BEST_shapes_5_5.pth.tar --epochs 5
      capcli a2c --checkpoint model_outputs/BEST_shapes_5_5.pth.tar \\
                 --reward cider --baseline greedy
      capcli a2c --resume --epochs 10
    """
    from capcli.config import A2CConfig
    from capcli.runtime.progress import TerminalProgress
    from capcli.training.a2c import run_a2c

    if params["checkpoint"] is None and not params["resume"]:
        raise click.UsageError("give --checkpoint FILE (a trained model) or --resume")
    config = A2CConfig(entropy_annealing=not no_entropy_annealing, **params)
    explicit = frozenset(k for k in params if option_given(ctx, k))
    if option_given(ctx, "no_entropy_annealing"):
        explicit |= {"entropy_annealing"}
    result = run_a2c(config, TerminalProgress(), explicit, options.given_args(ctx))
    render.a2c_result(result)


@cli.command("metrics")
@options.output_folder_option("The run folder (where `capcli train` wrote).")
@options.run_name_option("Run name, e.g. flickr8k_5_5 [default: the only run there].")
@command_options.chart_options
def metrics_command(output_folder: str, run_name: str | None, width: int | None, height: int, no_charts: bool,
                    save_png: bool) -> None:
    """Summarise a run and chart its loss, top-5 accuracy and BLEU-4 (works while it runs).

    \b
    Example:
      capcli metrics
      capcli metrics --run-name flickr8k_5_5 --save-png
      capcli metrics | less                        # plain text when piped
    """
    from capcli.paths import run_name_of_feed
    from capcli.runs.metrics import save_pngs
    from capcli.runs.summary import find_feed, read_summary

    path = find_feed(output_folder, run_name)
    run_name = run_name_of_feed(path)
    summary = read_summary(path)
    render.run_summary(run_name, path, summary, None if no_charts else (width, height))
    if save_png:
        for written in save_pngs(run_name, summary, output_folder):
            click.echo(f"wrote {written}")


@cli.command("arch")
@command_options.arch_options
def arch_command(model: str | None, checkpoint: str | None, graph: str | None, **params) -> None:
    """Show a model's layers, output shapes and parameter counts (total / trainable / frozen).

    \b
    Example:
      capcli arch --encoder resnet50 --decoder attention --vocab-size 2600
      capcli arch -m model_outputs/BEST_flickr8k_5_5.pth.tar \\
                  --graph model_outputs/model_architecture.png
    """
    from capcli.inference.arch import describe, render_graph, report_text, subject_of

    if model and checkpoint:
        raise click.UsageError("give -m/--model only (--checkpoint is its old name)")
    subject = subject_of(model or checkpoint, dict(params))
    report = describe(subject)
    click.echo(report_text(report))
    if graph:
        click.echo(f"wrote {render_graph(subject, report, graph)}")


@cli.command("dashboard")
@options.output_folder_option("The run folder to follow.")
@options.run_name_option("Run to follow first [default: the one updated last; l lists the others].")
@command_options.poll_option
def dashboard_command(output_folder: str, run_name: str | None, poll: float) -> None:
    """Follow live runs in the terminal: state, throughput, charts, samples, checkpoints, captions.

    Keyboard only (? shows the keys); readable at 80 × 24 over SSH, four charts from 120 columns.

    \b
    Example:
      capcli dashboard
      capcli dashboard --output-folder runs/flickr8k --run-name flickr8k_5_5
    """
    import sys

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise CapcliError("capcli dashboard needs an interactive terminal (use `capcli metrics` in scripts and pipes)")
    from capcli.dashboard.app import Dashboard

    app = Dashboard(output_folder, run_name, poll_seconds=poll)
    app.run()
    if app.return_code:  # an unexpected error ended it: one line naming the log with its traceback
        raise CapcliError(app.error_message or f"the dashboard stopped with return code {app.return_code}")


cli.add_command(cli_runs.runs_command)
cli.add_command(cli_env.env_command)
cli.add_command(export_command)  # commands in modules of their own keep this one small
cli.add_command(bench_command)


def main() -> None:
    """The console script (``capcli``); malloc is tuned per command once its device is known."""
    if sys.platform == "darwin":  # an operator Apple's GPU lacks runs on the CPU, with torch's one-line warning
        os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")  # read once torch loads: before any import of it
    cli(prog_name="capcli")


if __name__ == "__main__":
    main()
