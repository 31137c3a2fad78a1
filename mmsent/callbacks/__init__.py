"""Lightning callbacks."""

from mmsent.callbacks.dropout import EpochDropoutCallback
from mmsent.callbacks.saddle import SaddlePointMonitor
from mmsent.callbacks.selection import ModalitySelection

__all__ = [
    "EpochDropoutCallback",
    "ModalitySelection",
    "SaddlePointMonitor",
]
