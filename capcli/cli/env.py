"""``capcli env``: what capcli sees on this machine (:mod:`capcli.runtime.environment`), as short aligned
``key: value`` lines to paste into a bug report, or ``--json`` for scripts; registered on the
``cli`` group by :mod:`capcli.cli`.
"""

from __future__ import annotations

import json
import textwrap

import click

from capcli.cli import options

KEY_WIDTH = 21  # "CUDA_VISIBLE_DEVICES:" fits
WIDTH = 80


def size(n: int | str | None) -> str:
    """Bytes in binary units, one decimal: ``46.8 MiB``, ``23.5 GiB``; a probe's "unknown" as it is."""
    if not isinstance(n, int):
        return "–" if n is None else str(n)
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _yes(value: bool | str, yes: str = "yes", no: str = "no") -> str:
    return value if isinstance(value, str) else (yes if value else no)


def _line(key: str, value: object) -> str:
    return f"  {key + ':':<{KEY_WIDTH}} {value}"


def _header(title: str) -> str:
    return click.style(title, bold=True)


def _software_lines(env) -> list[str]:
    from capcli.runtime.environment import UNKNOWN  # here, not at the top: `capcli --help` stays fast

    sw, torch = env.software, env.torch
    tested = {True: f"tested: {torch.tested_range}", False: f"untested: capcli is tested on {torch.tested_range}"}
    if torch.import_error is not None:
        tested = {UNKNOWN: "does not import: see notes"}
    torchvision = "not installed" if torch.torchvision is None else torch.torchvision
    if torch.torchvision is not None and torch.torchvision_problem is None:
        torchvision += " (matches torch)"
    elif torch.torchvision_problem not in (None, UNKNOWN):
        torchvision += " (does not match torch: see notes)"
    return [_header(f"capcli {sw.capcli}"), _line("python", f"{sw.python} ({sw.executable})"),
            _line("platform", sw.platform), _line("os", sw.os),
            _line("torch", f"{torch.version} ({tested.get(torch.tested, torch.tested)})"),
            _line("torchvision", torchvision)]


def _accelerator_lines(env) -> list[str]:
    accel = env.accelerators
    build = "none (a CPU-only torch)" if accel.cuda_build is None else accel.cuda_build
    lines = [_header("gpu"), _line("cuda build", build)]
    if accel.cuda_build is not None:
        lines.append(_line("cuda", _yes(accel.cuda_available, "available", "no device seen")))
        if isinstance(accel.gpus, str):
            lines.append(_line("devices", accel.gpus))
        for gpu in () if isinstance(accel.gpus, str) else accel.gpus:
            lines.append(_line(f"cuda:{gpu.index}", f"{gpu.name}, {size(gpu.memory_bytes)}, sm {gpu.capability}"))
        lines.append(_line("cudnn", "none" if accel.cudnn is None else accel.cudnn))
    if accel.cuda_visible_devices is not None:
        lines.append(_line("CUDA_VISIBLE_DEVICES", accel.cuda_visible_devices))
    lines.append(_line("mps", _yes(accel.mps_available, "available", "no")))
    return lines


def _cpu_lines(env) -> list[str]:
    cpu = env.cpu
    usable = "" if cpu.usable_cores == cpu.logical_cores else f" ({cpu.usable_cores} usable by this process)"
    lines = [_header("cpu"), _line("model", cpu.model), _line("cores", f"{cpu.logical_cores} logical{usable}"),
             _line("torch threads", cpu.torch_threads), _line("capability", cpu.capability),
             _line("native bf16", _yes(cpu.native_bf16)), _line("amx", _yes(cpu.amx))]
    lines += [_line(name, value) for name, value in cpu.variables.items()]
    if isinstance(cpu.fast_paths, str):
        lines.append(_line("fast paths", cpu.fast_paths))
    else:
        lines += [_line(f"{part} kernels", state) for part, state in cpu.fast_paths.items()]
    return lines


def _precision_lines(env) -> list[str]:
    return [_header("--precision auto picks"), *(_line(device, name) for device, name in env.precision_auto.items())]


def _java_lines(env) -> list[str]:
    java = env.java
    lines = [_header("java (METEOR, SPICE)"), _line("java", "not found" if java.path is None else java.path)]
    if java.path is not None:
        lines.append(_line("version", "`java -version` failed" if java.version is None else java.version))
    if java.java_home is not None:
        lines.append(_line("JAVA_HOME", java.java_home))
    lines.append(_line("pycocoevalcap", _yes(java.pycocoevalcap, "installed", "not installed")))
    return lines


def _space_lines(key: str, place) -> list[str]:
    """``key: folder`` and ``free there:`` (a folder not made yet: measured at its nearest parent)."""
    free = f"{size(place.free_bytes)} of {size(place.total_bytes)}"
    if place.exists:
        return [_line(key, place.folder), _line("free there", free)]
    return [_line(key, f"{place.folder} (not made yet)"), _line("free there", f"{free}, at {place.measured}")]


def _disk_lines(env) -> list[str]:
    from capcli.runtime.environment import SHM_LOW_BYTES

    shm = env.shm
    room = "absent" if shm.measured is None else f"{size(shm.free_bytes)} free of {size(shm.total_bytes)}"
    if isinstance(shm.free_bytes, int) and shm.free_bytes < SHM_LOW_BYTES:
        room += " (under 1 GiB: see notes)"
    return [_header("disk"), _line(shm.folder, room), *_space_lines("data folder", env.data_folder),
            *_space_lines("output folder", env.output_folder)]


def _weights_lines(env) -> list[str]:
    """The hub cache, then the encoders whose weights are cached (with their size), not cached, unknown."""
    weights = env.weights
    groups: dict[str, list[str]] = {"cached": [], "not cached": [], "unknown": []}
    for name, found in weights.files.items():
        if isinstance(found, str):  # the probe failed
            groups["unknown"].append(name)
        else:
            groups["cached" if found.cached else "not cached"].append(
                f"{name} ({size(found.bytes)})" if found.cached else name)
    if len(groups["not cached"]) > 6:  # most of the 28 torchvision encoders, on most machines
        groups["not cached"] = [f"{len(groups['not cached'])} others (capcli train --help lists them)"]
    return [_header("pretrained weights"), _line("hub cache", weights.checkpoints),
            *(_line(state, ", ".join(names)) for state, names in groups.items() if names)]


_SECTIONS = (_software_lines, _accelerator_lines, _cpu_lines, _precision_lines, _java_lines, _disk_lines,
             _weights_lines)


def env_lines(env) -> list[str]:
    """The plain report: a section per concern, then the notes wrapped to 80 columns."""
    lines = []
    for section in _SECTIONS:
        lines += section(env) + [""]
    if env.notes:
        lines.append(_header("notes"))
        for note in env.notes:
            wrapped = textwrap.wrap(note, WIDTH - 4, break_on_hyphens=False, break_long_words=False)
            lines += [click.style(f"  {'- ' if i == 0 else '  '}{text}", fg="yellow") for i, text in enumerate(wrapped)]
    return lines[:-1] if lines[-1] == "" else lines


@click.command("env")
@options.data_folder_option("Folder of prepared data, whose free space is shown (it need not exist yet).")
@options.output_folder_option("Folder of runs, whose free space is shown (it need not exist yet).")
@options.json_option(
    "Print one JSON object: format, software, torch, accelerators, cpu, precision_auto, java, "
    "shm, data_folder, output_folder, weights, notes.")
def env_command(data_folder: str, output_folder: str, as_json: bool) -> None:
    """Show what capcli sees on this machine: versions, GPU, CPU features, precision auto's pick,
    Java for METEOR and SPICE, room in /dev/shm and the folders, cached pretrained weights.

    Paste its output into bug reports. Colours only on a terminal; nothing is written.

    \b
    Example:
      capcli env
      capcli env --json | jq .cpu
      capcli env --data-folder /data/coco --output-folder /runs/coco
    """
    from capcli.runtime.environment import gather

    env = gather(data_folder, output_folder)
    if as_json:
        click.echo(json.dumps(env.as_dict(), indent=2))
        return
    for line in env_lines(env):
        click.echo(line)
