"""``capcli bench``: the speed figures of this machine (``capcli.runtime.bench``), registered on the
``cli`` group by :mod:`capcli.cli.commands`."""

from __future__ import annotations

import click

from capcli.cli import command_options, render


@click.command("bench")
@command_options.bench_options
def bench_command(quick: bool, json_path: str | None, device: str, prep_workers: int | None,
                  only: tuple[str, ...]) -> None:
    """Measure encoder, training, captioning and prep speed (medians after warm-up) and peak memory.

    \b
    Example:
      capcli bench --quick
      capcli bench --json-file bench.json --device cuda
      capcli bench --quick --only caption --only prep
    """
    from capcli.data.jsonfiles import write_json
    from capcli.runtime.bench import machine_info, run_bench
    from capcli.runtime.device import resolve_device

    torch_device = resolve_device(device)
    render.bench_machine(machine_info(torch_device))
    report = run_bench(torch_device, quick, prep_workers, only, on_row=render.bench_row)
    render.bench_summary(report)
    if json_path:
        write_json(json_path, report)
        click.echo(f"wrote {json_path}")
