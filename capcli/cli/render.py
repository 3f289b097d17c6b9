"""What the commands print: services return results, these functions turn them into terminal text.

Results go to stdout; notes on written files and per-image errors go to stderr, so
``capcli caption img.jpg --json | jq`` reads clean JSON.
"""

from __future__ import annotations

import os
import shlex
import statistics

import click

from capcli.config import MONITOR_LABELS, is_shapes
from capcli.text import visible


def prep_result(result) -> None:
    counts = ", ".join(f"{split} {n}" for split, n in result.counts.items())
    if result.up_to_date:
        click.echo(f"{result.output_folder}: {result.name} is up to date ({counts} images); "
                   "use --force to rebuild.")
        return
    for bad in result.bad_rows[:10]:
        click.echo(f"skipped {bad['file']}: {bad['where']}: {bad['reason']}", err=True)
    if len(result.bad_rows) > 10:
        click.echo(f"... and {len(result.bad_rows) - 10} more bad rows (see bad_rows in the manifest)", err=True)
    for skip in result.skipped[:10]:
        split = f"{skip['split']} " if skip.get("split") else ""
        click.echo(f"skipped {split}{skip['source']}: {skip['reason']}", err=True)
    if len(result.skipped) > 10:
        click.echo(f"... and {len(result.skipped) - 10} more (see the manifest)", err=True)
    rows = f"{len(result.bad_rows)} bad caption row(s) and " if result.bad_rows else ""
    click.echo(f"Prepared {result.name} in {result.output_folder}/ in {result.seconds:.1f} s: "
               f"{counts} images, vocabulary {result.vocab_size} tokens, "
               f"{rows}{len(result.skipped)} image(s) skipped, peak memory {result.peak_rss_mb:.0f} MB.")
    real = not is_shapes(result.name)
    click.echo(f"Next: capcli train --data-folder {shlex.quote(result.output_folder)} --data-name {result.name}"
               + (" --pretrained --output-folder model_outputs   # ImageNet weights, downloaded once" if real else ""))


def train_result(result) -> None:
    if result.epochs_trained == 0:
        click.echo(f"Nothing was trained ({result.stop_reason}).")
        return
    best = f"BLEU-4 {result.best_bleu4:.4f}"
    if result.monitor != "bleu4":
        best = f"{MONITOR_LABELS[result.monitor]} {result.best_score:.4f} (BLEU-4 {result.best_bleu4:.4f})"
    click.echo(f"Trained {result.name}: {result.epochs_done} epoch(s), best validation {best} at epoch "
               f"{result.best_epoch} ({result.stop_reason}, {result.seconds:.0f} s).")
    click.echo(f"Checkpoints: {result.checkpoint}, {result.best_checkpoint}")


def a2c_result(result) -> None:
    if result.epochs_trained == 0:
        click.echo(f"Nothing was trained ({result.stop_reason}).")
        return
    click.echo(f"A2C on {result.name}: {result.epochs_done} epoch(s), best validation "
               f"{MONITOR_LABELS[result.monitor]} {result.best_score:.4f} at epoch "
               f"{result.best_epoch} ({result.seconds:.0f} s).")
    click.echo(f"Checkpoints: {result.checkpoint}, {result.best_checkpoint}")


def run_summary(run_name: str, path: str, summary, charts: tuple[int | None, int] | None) -> None:
    """The run's summary, then its charts (``charts``: width or None for the terminal's, height) in
    colour on a terminal, plain when piped."""
    import shutil
    import sys

    from capcli.runs.metrics import summary_text, terminal_charts

    click.echo(summary_text(run_name, path, summary))
    if charts is None:
        return
    width, height = charts
    colour = sys.stdout.isatty()
    for chart in terminal_charts(summary, width or min(shutil.get_terminal_size((100, 24)).columns, 120), height,
                                 colour):
        click.echo()
        click.echo(chart, color=colour)


def captions(results, originals: dict[str, list[str]], written: dict[str, list[str]], as_json: bool,
             no_attention: bool) -> None:
    """Each caption (with the original captions, when given), the pictures written, then per-image errors."""
    import json

    several = len(results) > 1
    if as_json:
        click.echo(json.dumps([r.as_json() for r in results], indent=2))
    else:
        for r in results:
            if r.error is None:
                # the words come from the model's word map, a file like any other: shown, never obeyed
                click.echo(visible(f"{r.image}: {r.caption}" if several else r.caption))
                for ref in originals.get(os.path.basename(r.image), []):
                    click.echo(f"    original: {visible(ref)}")
        if no_attention:
            click.echo("(the plain decoder has no attention to visualise)", err=True)
        for path in (p for paths in written.values() for p in paths):
            click.echo(f"wrote {path}", err=True)
    for r in results:
        if r.error:
            click.echo(f"Error: {visible(r.error)}", err=True)


def evaluation(result, checkpoint: str) -> None:
    from capcli.evaluation.evaluate import format_table

    click.echo(f"{result.name} {result.split}: {result.images} images, one caption each "
               f"({result.seconds:.0f} s, {checkpoint})")
    click.echo(format_table(result))
    for note in result.notes:
        click.echo(note)
    if result.java:
        click.echo(f"Java metrics ran on {result.java}")
    click.echo(f"Wrote {result.json_path} and {', '.join(result.results_paths.values())}")


def demo_result(result, data_folder: str, output_folder: str) -> None:
    from capcli.demo.pipeline import SHOWN_BEAM
    from capcli.evaluation.evaluate import format_table

    prep_result(result.prep)
    train = result.train
    click.echo(f"\nTrained {train.name}: {train.epochs_done} epoch(s), best validation BLEU-4 {train.best_bleu4:.4f} "
               f"({train.seconds:.0f} s) → {train.best_checkpoint}")
    click.echo(f"\nTest split, {result.evaluation.images} images, one caption each:")
    click.echo(format_table(result.evaluation))
    content = result.evaluation.content
    if content is not None and SHOWN_BEAM in content.beams:
        s, refs = content.beams[SHOWN_BEAM], content.references
        click.echo(f"\nContent accuracy at beam {SHOWN_BEAM}: {s.colour_shape:.0%} of the test captions name exactly "
                   f"the coloured shapes drawn, {s.with_size:.0%} with their sizes too (the reference captions: "
                   f"{refs.colour_shape:.0%} and {refs.with_size:.0%})")
    for item in result.captions:
        verdict = ("right shapes and sizes" if item.right[1] else "right shapes, wrong sizes") if item.right[0] \
            else "wrong: not exactly the shapes drawn"
        click.echo(f"\n{item.result.image}")
        click.echo(f"  generated: {item.result.caption}  [{verdict}]")
        for ref in item.references:
            click.echo(f"  reference: {ref}")
        click.echo(f"  pictures:  {', '.join(item.pictures)}")
    image = result.captions[0].result.image if result.captions else "IMAGE.jpg"
    click.echo("\nNext, try:")
    for line in (f"capcli caption {image} --beam 10 -v --output-folder {output_folder}",
                 f"capcli evaluate --data-folder {data_folder} --output-folder {output_folder} --beams 1,3,5",
                 f"capcli train --data-folder {data_folder} --output-folder {output_folder} --resume --epochs 10",
                 f"capcli metrics --output-folder {output_folder}",
                 f"capcli dashboard --output-folder {output_folder}"):
        click.echo(f"  {line}")


def bench_machine(machine: dict) -> None:
    """The machine line (whether malloc was tuned for this run included) and the table's header."""
    click.echo(f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, device {machine['device']}"
               + (f" ({machine['gpu']})" if "gpu" in machine else "")
               + f"; CPU bf16: {'yes' if machine['cpu_bf16'] else 'no'}, AMX: {'yes' if machine['cpu_amx'] else 'no'}"
               + ("" if machine["malloc_keeps_freed_memory"] else "; malloc options left as they were"))
    click.echo(f"{'measurement':<32} {'value':>10} {'unit':<9} {'median s':>9} {'peak MB':>8}")


def bench_row(name: str, row: dict) -> None:
    click.echo(f"{name:<32} {row['value']:>10.1f} {row['unit']:<9} {statistics.median(row['times']):>9.3f} "
               f"{row.get('peak_gpu_mb', row['peak_rss_mb']):>8.0f}")


def bench_summary(report: dict) -> None:
    click.echo("ratios: " + ", ".join(f"{k} {'n/a' if v is None else f'{v:.2f}×'}"
                                      for k, v in report["ratios"].items()))
    comparison = report["beam_comparison"]
    if comparison is not None:
        counts = f"{comparison['images'] - comparison['differing']} of {comparison['images']} images"
        gap = "" if comparison["differing"] == 0 else \
            f"; where they differ, the two captions' scores differ by at most {comparison['largest_score_gap']:.2g}"
        click.echo(f"batched and one-at-a-time beam search give the same captions ({comparison['precision']}): "
                   f"{'yes' if report['beam_same_captions'] else 'NO'} ({counts}{gap})")


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def export_result(result) -> None:
    """The bundle written, and the checkpoint's and bundle's sizes (and what the difference was)."""
    share = result.optimizer_bytes / result.checkpoint_bytes
    critic = f", critic {_size(result.critic_bytes)}" if result.critic_bytes else ""
    click.echo(f"wrote {result.bundle} (model.safetensors, word_map.json, config.json, README.md)")
    click.echo(f"checkpoint {_size(result.checkpoint_bytes):>9}  {result.checkpoint}")
    click.echo(f"{'':>20}  optimizer state {_size(result.optimizer_bytes)} ({share:.0%}){critic}")
    click.echo(f"bundle     {_size(result.bundle_bytes):>9}  {result.bundle_bytes / result.checkpoint_bytes:.0%} "
               f"of the checkpoint (weights {_size(result.weights_bytes)})")
    for path in result.evaluations:
        click.echo(f"model card: test scores of {path}")
