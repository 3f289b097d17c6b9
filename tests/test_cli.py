"""Every command has help with its defaults and an example; misuse exits 2 with Click's message."""

from __future__ import annotations

import click
import pytest

from capcli.cli.commands import cli


def test_top_level_help_lists_commands_and_an_example(run):
    result = run("--help")
    assert result.exit_code == 0
    assert "Example:" in result.output
    for name in cli.commands:
        assert name in result.output


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_has_help_with_example_and_defaults(run, name):
    result = run(name, "--help")
    assert result.exit_code == 0
    assert "Example:" in result.output
    command = cli.commands[name]
    ctx = click.Context(command)
    for param in command.params:
        if not isinstance(param, click.Option) or param.name == "help":
            continue
        assert param.help, f"{name} {param.opts[0]} has no help"
        if param.hidden:  # only an old option name is hidden, and it says what replaced it
            assert param.deprecated, f"{name} {param.opts[0]} is hidden without being deprecated"
            continue
        assert param.opts[0] in result.output
        record = param.get_help_record(ctx)[1]
        default = param.get_default(ctx)
        if not param.is_flag and default is not None and not repr(default).endswith("UNSET"):
            assert "default:" in record, f"{name} {param.opts[0]} hides its default"


def test_choices_are_the_models_own_names(run):
    from capcli.config import DECODER_NAMES, ENCODER_NAMES, PRECISIONS, RESNET_ENCODERS, TORCHVISION_ENCODERS
    from capcli.model.backbones import FAMILIES
    from capcli.model.captioner import DECODERS as MODEL_DECODERS
    from capcli.model.encoder import ENCODER_DIMS
    from capcli.runtime import device
    from capcli.runtime.torch_compat import import_torchvision

    assert RESNET_ENCODERS == tuple(ENCODER_DIMS) and TORCHVISION_ENCODERS == tuple(FAMILIES)
    assert set(TORCHVISION_ENCODERS) <= set(import_torchvision().models.list_models())
    assert ENCODER_NAMES == RESNET_ENCODERS + TORCHVISION_ENCODERS
    assert DECODER_NAMES == tuple(MODEL_DECODERS)
    assert device.PRECISIONS is PRECISIONS
    choices = {(c, p.name): tuple(p.type.choices) for c in ("train", "arch") for p in cli.commands[c].params
               if isinstance(p.type, click.Choice)}
    assert choices[("train", "decoder")] == choices[("arch", "decoder")] == DECODER_NAMES
    for command in ("train", "arch"):  # an unknown name is a usage error, before anything runs
        result = run(command, "--encoder", "vit_b_99")
        assert result.exit_code == 2 and "unknown encoder 'vit_b_99'" in result.output
    result = run("train", "--encoder", "clip:ViT-B-32", "--data-folder", "/nonexistent/data")
    assert result.exit_code == 1 and "--encoder" not in result.output  # the name passed; the data did not


def test_option_defaults_are_the_configs_defaults():
    from capcli.cli.options import default
    from capcli.config import ModelConfig, PrepConfig, TrainConfig
    from capcli.training.a2c import A2CConfig

    checked = 0
    for command, config in (("train", TrainConfig), ("train", ModelConfig), ("a2c", A2CConfig), ("prep", PrepConfig)):
        ctx = click.Context(cli.commands[command])
        for param in cli.commands[command].params:
            if not isinstance(param, click.Option) or param.name not in config.__dataclass_fields__ \
                    or param.is_flag or callable(param.default):
                continue
            value = param.get_default(ctx)
            if value is not None and not repr(value).endswith("UNSET"):
                assert value == default(config, param.name), (command, param.name)
                checked += 1
    assert checked > 40


def test_unknown_option_values_exit_2(run):
    for args in (["prep", "--dataset", "../imagenet"], ["prep", "--max-len", "0"], ["prep", "--workers", "x"],
                 ["prep", "--bogus"]):
        result = run(*args)
        assert result.exit_code == 2, args
        assert "Error:" in result.output


def test_version(run):
    result = run("--version")
    assert result.exit_code == 0 and "capcli" in result.output


def test_a_closed_pipe_ends_quietly(trained_run):
    import subprocess
    import sys

    _, out = trained_run
    done = subprocess.run(f"{sys.executable} -m capcli.cli metrics --output-folder {out} | head -c 10",
                          shell=True, capture_output=True, text=True, timeout=120)
    assert done.stdout and "Error" not in done.stderr and "Broken pipe" not in done.stderr


def test_an_os_error_without_a_message_is_still_one_line():
    from capcli.errors import os_error_message

    assert os_error_message(OSError()) == "OSError"
    assert os_error_message(TimeoutError()) == "TimeoutError"
    assert os_error_message(OSError(28, "No space left on device", "/x/y")) == \
        "/x/y: no space left on the device; free some space or write to another folder"
