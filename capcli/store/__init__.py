"""What a run keeps on disk about its model: the checkpoint record (`checkpoint`), its small JSON
sidecar read by listings (`sidecar`), the inference bundle `capcli export` writes (`bundle`, with
its model card from `model_card`), and the one sentence for a file torch refused to load
(`load_failure`)."""
