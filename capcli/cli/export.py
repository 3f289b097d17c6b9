"""``capcli export``: a checkpoint → an inference bundle (``capcli.store.bundle``), registered on the
``cli`` group by :mod:`capcli.cli`."""

from __future__ import annotations

import click

from capcli.cli import options, render


@click.command("export")
@options.model_option("Checkpoint to export (train or A2C) [default: the only BEST_*.pth.tar in --output-folder].")
@click.option("-o", "--output", default=None, type=click.Path(),
              help="The bundle folder to write [default: the checkpoint's name with .bundle instead of .pth.tar]. "
                   "Only a previous bundle there is replaced.")
@options.output_folder_option("The run folder whose BEST checkpoint is exported when -m is not given.")
def export_command(model: str | None, output: str | None, output_folder: str) -> None:
    """Export a checkpoint as an inference bundle: the weights as safetensors (no optimiser state),
    the word map, config.json and a model card (README.md) with the run's scores.

    `capcli caption`, `capcli evaluate`, `capcli arch` and the dashboard take the bundle wherever
    they take a checkpoint (-m FOLDER or -m FOLDER/model.safetensors). Prints both sizes.

    \b
    Example:
      capcli export                                   # model_outputs/BEST_shapes_5_5.bundle
      capcli export -m model_outputs/BEST_A2C_flickr8k_5_5.pth.tar -o ship/flickr8k
      capcli caption photo.jpg -m model_outputs/BEST_shapes_5_5.bundle
    """
    from capcli.inference.captioning import find_best_checkpoint
    from capcli.store.bundle import export_bundle

    render.export_result(export_bundle(model or find_best_checkpoint(output_folder), output))
