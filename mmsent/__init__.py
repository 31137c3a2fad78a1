"""mmsent: staged multimodal sentiment analysis with PyTorch Lightning."""

__version__ = "0.1.0"
