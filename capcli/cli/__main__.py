"""``python -m capcli.cli``: what torchrun starts on each rank."""

from capcli.cli.commands import main

main()
