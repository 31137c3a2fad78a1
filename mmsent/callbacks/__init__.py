"""Lightning callbacks."""

from mmsent.callbacks.checkpoint import LastEpochCheckpoint
from mmsent.callbacks.compile import CompileParts
from mmsent.callbacks.dropout import EpochDropoutCallback
from mmsent.callbacks.pretraining import LayerwisePretraining
from mmsent.callbacks.saddle import SaddlePointMonitor

__all__ = [
    "CompileParts",
    "EpochDropoutCallback",
    "LastEpochCheckpoint",
    "LayerwisePretraining",
    "SaddlePointMonitor",
]
