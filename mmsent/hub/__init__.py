"""Reusing a trained model: the exported model folder, loading it, scoring raw clips."""

from mmsent.hub.model import SentimentModel

__all__ = ["SentimentModel"]
