"""LightningModules: the training logic around the plain networks in mmsent.models."""

from mmsent.tasks.base import BaseTask
from mmsent.tasks.fusion import FusionTask
from mmsent.tasks.generative import GenerativeTask
from mmsent.tasks.unimodal import UnimodalTask

__all__ = ["BaseTask", "FusionTask", "GenerativeTask", "UnimodalTask"]
