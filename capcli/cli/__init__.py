"""The `capcli` command line: one Click group of thin commands (`commands`), every option declared
once (`options`), what the commands print (`render`), the commands kept in modules of their own
(`bench`, `env`, `export`, `runs`), the old option spellings rewritten with a note (`renamed`)
and the generated command reference (`reference`). Commands parse, call a service and print its
result; errors from the services become one line at the group's error boundary."""
