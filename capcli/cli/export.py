"""``capcli export``: a checkpoint → an inference bundle (``capcli.store.bundle``), registered on the
``cli`` group by :mod:`capcli.cli`."""

from __future__ import annotations

import os

import click

from capcli.cli import command_options, options, render
from capcli.cli.options import option_given


@click.command("export")
@options.model_option("Checkpoint to export (train or A2C) [default: the only BEST_*.pth.tar in --output-folder].")
@command_options.export_output_option
@options.output_folder_option("The run folder whose BEST checkpoint is exported when -m is not given, and "
                              "where the bundle is written.")
@click.pass_context
def export_command(ctx: click.Context, model: str | None, output: str | None, output_folder: str) -> None:
    """Export a checkpoint as an inference bundle: the weights as safetensors (no optimiser state),
    the word map, config.json and a model card (README.md) with the run's scores.

    `capcli caption`, `capcli evaluate`, `capcli arch` and the dashboard take the bundle wherever
    they take a checkpoint (-m FOLDER or -m FOLDER/model.safetensors). Prints both sizes.

    \b
    Example:
      capcli export                      # model_outputs/BEST_shapes_5_5.bundle
      capcli export -m model_outputs/BEST_A2C_flickr8k_5_5.pth.tar -o ship/f8k
      capcli export -m runs/BEST_coco.pth.tar --output-folder ship
                                         # ship/BEST_coco.bundle
      capcli caption photo.jpg -m model_outputs/BEST_shapes_5_5.bundle
    """
    from capcli.inference.captioning import find_best_checkpoint
    from capcli.paths import bundle_folder
    from capcli.store.bundle import export_bundle

    checkpoint = model or find_best_checkpoint(output_folder)
    if output is None and option_given(ctx, "output_folder"):  # every command writes into its --output-folder
        output = os.path.join(output_folder, os.path.basename(bundle_folder(checkpoint)))
    render.export_result(export_bundle(checkpoint, output))
