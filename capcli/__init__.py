"""capcli: Show, Attend and Tell image captioning from the terminal."""

__version__ = "0.1.0"
