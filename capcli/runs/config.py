"""A run's configuration as it started, saved next to its checkpoint: ``config_{run}.json`` (train) and
``config_A2C_{run}.json`` (a2c), rewritten each time the stage starts or resumes.

The JSON holds ``version`` (1), ``run``, ``stage``, ``data`` (``folder``, ``name``), the stage's
options (``train_config`` or ``a2c_config``, every field), ``model_config``, ``resumed`` (whether
this start continued a checkpoint), ``started`` (unix time) and ``versions`` (capcli, torch, Python):
what it takes to repeat or compare a run without loading its checkpoint.
"""

from __future__ import annotations

import dataclasses
import platform
import time

from capcli import __version__
from capcli.data.jsonfiles import write_json

VERSION = 1


def run_config(stage: str, run: str, data_folder: str, data_name: str, configs: dict, resumed: bool) -> dict:
    """The JSON of a run's configuration; ``configs`` maps e.g. ``train_config`` to a config dataclass."""
    from capcli.runtime.torch_compat import torch_version

    return {"version": VERSION, "run": run, "stage": stage, "data": {"folder": data_folder, "name": data_name},
            **{key: dataclasses.asdict(value) for key, value in configs.items()}, "resumed": resumed,
            "started": round(time.time(), 3),
            "versions": {"capcli": __version__, "torch": torch_version(), "python": platform.python_version()}}


def write_run_config(path: str, *args, **kwargs) -> dict:
    """Write :func:`run_config` (same arguments) atomically to ``path``; returns it."""
    config = run_config(*args, **kwargs)
    write_json(path, config)
    return config


def saved_data_name(path: str) -> str | None:
    """The data name a saved configuration records (None: no file, not one of ours, or an unsafe name)."""
    from capcli.config import name_problem
    from capcli.data.jsonfiles import MAX_DEPTH, read_json
    from capcli.errors import CapcliError

    try:
        name = read_json(path, max_depth=MAX_DEPTH).get("data", {}).get("name")
    except (OSError, CapcliError, AttributeError):  # absent, malformed, too deep, a FIFO, not ours
        return None
    return name if isinstance(name, str) and not name_problem(name) else None  # a name is checked where read


def preflight_checks(run_name: str | None, tensorboard: bool) -> None:
    """What ``train`` and ``a2c`` check before reading or writing anything.

    Raises:
        InputError: ``run_name`` is not None and not a safe run name (one line).
        TensorBoardMissing: ``tensorboard`` asked for without the tensorboard package.
    """
    from capcli.config import run_name_problem
    from capcli.errors import InputError
    from capcli.runs.tensorboard import check_available

    problem = run_name_problem(run_name) if run_name is not None else None
    if problem:
        raise InputError(problem)
    if tensorboard:
        check_available()
