"""The staged pipeline: ``mmsent pipeline run FILE``.

* :mod:`~mmsent.pipeline.spec`: the pipeline file, validated;
* :mod:`~mmsent.pipeline.runner`: the stages in order, each through the CLI;
* :mod:`~mmsent.pipeline.manifest`: ``manifest.json``, what ran (its only writer);
* :mod:`~mmsent.pipeline.tracking`: a W&B run per stage, artifacts and media;
  :mod:`~mmsent.pipeline.wandb_mode`: online, offline or off, from the credentials;
* :mod:`~mmsent.pipeline.report` and :mod:`~mmsent.pipeline.figures`: the report;
* :mod:`~mmsent.pipeline.command`: the ``mmsent pipeline`` command line.
"""

from mmsent.pipeline.command import main
from mmsent.pipeline.runner import run
from mmsent.pipeline.spec import Pipeline, Stage, WandbSettings, load_pipeline

__all__ = ["Pipeline", "Stage", "WandbSettings", "load_pipeline", "main", "run"]
