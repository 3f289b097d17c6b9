"""What a run keeps on disk about its model: the checkpoint record (`checkpoint`, its fields read
and checked in `fields`, its epochs as `epochs.EpochRecord`), its small JSON sidecar read by
listings (`sidecar`), the inference bundle `capcli export` writes (`bundle`, with its model card
from `model_card`), `files` to read a checkpoint or a bundle and save one with its sidecar, and the
one sentence for a file torch refused to load (`load_failure`)."""
