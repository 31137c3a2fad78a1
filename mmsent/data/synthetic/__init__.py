"""A generated raw dataset laid out like MMSA's raw CMU-MOSI, CMU-MOSEI and CH-SIMS.

The generator writes real files, so it exercises the path real clips take::

    <out_dir>/label.csv                     one row per clip
    <out_dir>/Raw/<video_id>/<clip_id>.mp4  H.264 (libx264, yuv420p) cartoon face
    <out_dir>/Raw/<video_id>/<clip_id>.wav  16-bit PCM mono voice-like signal
    <out_dir>/generated.json                the generation parameters and a completion marker

Each modality alone predicts the score only in part and all three together strictly
better, and each cue needs structure (word order, time order), not just statistics;
see :mod:`.plan`, :mod:`.text`, :mod:`.audio` and :mod:`.video`. Run
``python -m mmsent.data.synthetic --help`` for the command line.
"""

from mmsent.data.synthetic.plan import (
    LABEL_COLUMNS,
    MODALITY_WEIGHTS,
    best_achievable_mae,
    plan_clips,
)
from mmsent.data.synthetic.writer import GENERATOR_VERSION, generate_raw_dataset

__all__ = ["GENERATOR_VERSION", "LABEL_COLUMNS", "MODALITY_WEIGHTS", "best_achievable_mae",
           "generate_raw_dataset", "plan_clips"]
