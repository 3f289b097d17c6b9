"""The options several commands share, each declared once, and the helpers that declare options.

Shared bundles (device / precision / seed, folders, names, architecture, decoding, --json) are
decorators the commands stack; each command's own options are in :mod:`capcli.cli.command_options`.
Choices come from the name tables in :mod:`capcli.config` (the model's own tables hold the same
names) and defaults from the config dataclasses, so a default is written in one place. Nothing
here imports torch at module level: ``capcli --help`` stays instant.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import click

from capcli.config import (
    DECODER_NAMES,
    PRECISIONS,
    ModelConfig,
    PrepConfig,
    TrainConfig,
    encoder_problem,
)
from capcli.limits import int_range

Decorator = Callable[[Callable], Callable]


def default(config: type, field: str):
    """The default of ``config``'s dataclass field ``field``: the one place an option's default lives."""
    return next(f.default for f in dataclasses.fields(config) if f.name == field)


def from_config(config: type, *decls: str, field: str | None = None, **attrs) -> Decorator:
    """``click.option`` whose default, shown in ``--help``, is ``config``'s for the option's field."""
    name = field or next(d for d in decls if d.startswith("--"))[2:].replace("-", "_")
    return click.option(*decls, default=default(config, name), show_default=True, **attrs)


def bundle(*options: Decorator) -> Decorator:
    """One decorator applying ``options`` as if they were stacked in this order over the command."""
    def apply(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command
    return apply


def option_given(ctx: click.Context, name: str) -> bool:
    """Whether the user gave option ``name`` (rather than Click filling in its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def given_args(ctx: click.Context, leave_out: tuple[str, ...] = ("overwrite", "checkpoint")) -> list[str]:
    """The options the user gave, as command-line words (for the command that resumes a run)."""
    words: list[str] = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in leave_out or not option_given(ctx, param.name):
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


def _tune_allocator(ctx: click.Context, param: click.Parameter, device: str) -> str:
    """Once the device is known, a CPU run keeps freed memory for reuse (CAPCLI_MALLOC_TUNING decides)."""
    if not ctx.resilient_parsing:
        from capcli.runtime.allocator import tune_for_device

        tune_for_device(device)
    return device


def checked_by(problem: Callable[[str], str | None]) -> Callable:
    """An option callback refusing a value ``problem`` finds fault with (its words as the usage error)."""
    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        found = problem(value) if value is not None else None
        if found:
            raise click.BadParameter(found, ctx, param)
        return value
    return check


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


# --- shared bundles ------------------------------------------------------------------------------

device_option = from_config(TrainConfig, "--device", callback=_tune_allocator,
                            help="auto (a CUDA GPU, else Apple's GPU, else the CPU), cpu, cuda, cuda:N or mps.")


def precision_option(help: str = "Autocast precision for inference.") -> Decorator:
    return from_config(TrainConfig, "--precision", type=click.Choice(PRECISIONS), help=help)


def run_options(config: type, seed_help: str,
                precision_help: str = "auto: bf16 on CPUs with native bf16, fp16/bf16 autocast on CUDA, "
                                      "else fp32.") -> Decorator:
    """Where and how a training run computes: --device, --precision, --seed."""
    return bundle(device_option, precision_option(precision_help),
                  from_config(config, "--seed", type=int, help=seed_help))


def data_folder_option(help: str = "Folder of prepared data (from `capcli prep`).", **attrs) -> Decorator:
    attrs.setdefault("default", default(TrainConfig, "data_folder"))
    return click.option("--data-folder", show_default=True, type=click.Path(file_okay=False), help=help, **attrs)


def output_folder_option(help: str = "Where checkpoints, metrics and summaries are written.") -> Decorator:
    return from_config(TrainConfig, "--output-folder", type=click.Path(file_okay=False), help=help)


def data_name_option(help: str) -> Decorator:
    """The prepared data set's name (``--name`` before 0.2: see ``cli.renamed``)."""
    return click.option("--data-name", "data_name", default=None, metavar="NAME", help=help)


def run_name_option(help: str) -> Decorator:
    """The run a command writes (train, a2c) or shows (metrics, dashboard: ``--name`` before 0.2)."""
    return click.option("--run-name", default=None, metavar="NAME", help=help)


tensorboard_option = click.option(
    "--tensorboard", is_flag=True,
    help="Also write the feed's scalars and sample captions as TensorBoard events to "
         "{output-folder}/tensorboard/{run}/ (needs pip install 'capcli[tensorboard]').")


def model_option(help: str = "Checkpoint, or a bundle of `capcli export` (its folder or model.safetensors) "
                              "[default: the only BEST_*.pth.tar in --output-folder].") -> Decorator:
    """The checkpoint or bundle to use, ``-m/--model`` in every command that reads one."""
    return click.option("-m", "--model", default=None, type=click.Path(), help=help)


architecture_options = bundle(
    from_config(ModelConfig, "--encoder", callback=checked_by(encoder_problem), metavar="NAME",
                help="Image encoder: resnet18...resnet152 (resnet-small: shapes), torchvision's convnext_tiny/small/"
                     "base, efficientnet_v2_s/m, regnet_y_400mf...32gf, swin_t/s/b, swin_v2_t/s/b, vit_b_16, "
                     "vit_b_32, vit_l_16, or clip:ARCH[:TAG] from open_clip (pip install 'capcli[clip]'), e.g. "
                     "clip:ViT-B-32."),
    from_config(ModelConfig, "--decoder", type=click.Choice(DECODER_NAMES),
                help="LSTM decoder with soft attention, or ImgCap's plain one."),
    from_config(ModelConfig, "--embed-dim", type=int_range("embed_dim"), help="Word embedding size."),
    from_config(ModelConfig, "--attention-dim", type=int_range("attention_dim"), help="Attention size."),
    from_config(ModelConfig, "--decoder-dim", type=int_range("decoder_dim"), help="LSTM hidden size."),
    click.option("--one-hot", "--one_hot", is_flag=True, help="Fixed one-hot word vectors instead of embeddings."),
)

decoding_options = bundle(
    click.option("--length-penalty", default=0.0, show_default=True, type=click.FloatRange(0),
                 help="Rank finished captions by log-probability / length^this (0: the sum)."),
    output_folder_option("Where models are found and results are written."),
    device_option,
    precision_option(),
)

prep_workers_option = click.option("--workers", default=_default_workers, show_default="CPU cores, at most 8",
                                   type=click.IntRange(1, 256), help="Image decoding processes.")
num_images_option = from_config(PrepConfig, "--num-images", type=click.IntRange(10),
                                help="shapes only: images in total, split 80/10/10 into train/val/test.")


def json_option(help: str) -> Decorator:
    """``--json``: print JSON instead of text (it never names a file; those are ``--*-file`` options)."""
    return click.option("--json", "as_json", is_flag=True, help=help)
