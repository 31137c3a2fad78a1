"""The staged pipeline, ``mmsent pipeline run FILE``; the guide "Code layout" lists its modules."""

from mmsent.pipeline.command import main
from mmsent.pipeline.runner import run
from mmsent.pipeline.spec import Pipeline, Stage, WandbSettings, load_pipeline

__all__ = ["Pipeline", "Stage", "WandbSettings", "load_pipeline", "main", "run"]
