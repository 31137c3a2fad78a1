"""Lightning callbacks."""

from mmsent.callbacks.dropout import EpochDropoutCallback
from mmsent.callbacks.saddle import SaddlePointMonitor

__all__ = [
    "EpochDropoutCallback",
    "SaddlePointMonitor",
]
