"""A run as its watchers see it: the live metrics feed (`feed`), one process per run (`lock`), the
log lines and resume command (`log`), the configuration it started with (`config`), summaries and
state read back from the feed (`summary`, for `capcli runs`, `capcli metrics` and the dashboard),
charts (`metrics`), TensorBoard event files (`tensorboard`) and speed figures (`throughput`)."""
