"""Training a captioner: supervised training (`capcli train`, in `train` with its starting point
decided in `setup`), Advantage Actor-Critic fine-tuning (`capcli a2c`), the run life shared by both
(`lifecycle`: steps, epochs, saving, the feed), picking the best epoch (`selection`), the frozen
encoder's feature cache (`features`), object pretraining for the shapes set (`concepts`) and the
validation samples shown while a run goes (`samples`)."""
