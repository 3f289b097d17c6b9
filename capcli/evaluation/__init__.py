"""Scoring captions: `capcli evaluate` over a split and several beam sizes (`evaluate`), the COCO
caption metrics BLEU, CIDEr-D and ROUGE-L (`scores`), METEOR and SPICE through Java
(`java_metrics`), and content accuracy on the shapes set (`content`)."""
