"""mmsent: staged multimodal sentiment analysis with PyTorch Lightning."""

__version__ = "0.1.0"
__all__ = ["SentimentModel", "register"]


def __getattr__(name: str):
    # Loaded on first use, so importing a light module (mmsent.io) stays light.
    if name == "SentimentModel":
        from mmsent.hub.model import SentimentModel

        return SentimentModel
    if name == "register":
        from mmsent.models.config import register

        return register
    raise AttributeError(f"module 'mmsent' has no attribute {name!r}")
