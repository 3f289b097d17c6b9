"""The `capcli` command line: one Click group of thin commands (`commands`), every option declared
once (`options`), what the commands print (`render`), and the commands kept in modules of their own
(`env`, `export`, `runs`). Commands parse, call a service and print its result; errors from the
services become one line at the group's error boundary."""
