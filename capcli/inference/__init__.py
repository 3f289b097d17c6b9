"""Using a trained model: captioning image files from a checkpoint or a bundle (`captioning`, for
`capcli caption` and the dashboard), the pictures it draws (`pictures`, with attention heat maps
from `heatmap`), and the layer table of `capcli arch` (`arch`)."""
