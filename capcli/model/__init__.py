"""The captioning model: an image encoder that gives a grid of feature vectors (the paper's ResNet in
`encoder`; torchvision's ConvNeXt, EfficientNetV2, RegNetY, Swin and ViT in `backbones` and CLIP's
towers in `clip`, both as a `grid.GridEncoder`; their weights in `pretrained`) and an attention (or
plain) LSTM decoder (`attention`, `decoder`, beam search in `decoding`), built from a config and
state dicts in `captioner`; `cpu/` holds the CPU's faster forms of the ResNet and the decoder."""
