"""`capcli demo`: the embedded end-to-end run on the synthetic shapes set (`pipeline`), sized to
the machine it runs on (`plan`)."""
