"""A generated raw dataset laid out like MMSA's raw CMU-MOSI, CMU-MOSEI and CH-SIMS.

The generator writes real files, so the code path it exercises is the one a user with
real clips takes::

    <out_dir>/label.csv                     one row per clip
    <out_dir>/Raw/<video_id>/<clip_id>.mp4  H.264 (libx264, yuv420p) cartoon face
    <out_dir>/Raw/<video_id>/<clip_id>.wav  16-bit PCM mono voice-like signal
    <out_dir>/generated.json                the generation parameters and a completion marker

Every clip has three independent latent scores in ``[-1, 1]``, one per modality, and
its noise-free sentiment is a weighted sum of them
(:data:`~mmsent.data.synthetic.plan.MODALITY_WEIGHTS`). Each modality alone therefore
predicts the score only in part, and all three together predict it strictly better.
The cues are built so that a model must use structure, not just statistics:

* text (:mod:`.text`): the score of a review sentence is compositional (intensifiers
  scale, negation flips and attenuates, the clause after "but" dominates), so word
  order matters;
* audio (:mod:`.audio`): pitch, loudness and spectral tilt carry the score, under
  speaker and recording nuisance;
* video (:mod:`.video`): the mouth curvature moves linearly over the clip and the
  score is the direction of that movement: the multiset of frames says nothing about
  its sign and any single frame little, so only a model that sees time order can
  recover it.

:mod:`.plan` draws the videos, splits, scores and sentences; :mod:`.writer` writes the
files. Run ``python -m mmsent.data.synthetic --out_dir DIR --num_clips N --seed S`` to
generate from the command line (``--help`` lists every option).
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
