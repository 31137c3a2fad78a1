"""Choosing what a fused stage hands on, from validation evidence.

* :mod:`~mmsent.selection.evidence`: the bootstrap tests and backward elimination;
* :mod:`~mmsent.selection.step`: the step after a fused stage's fit (:func:`select`)
  and its settings, the ``selection:`` section of a stage's config (:class:`Selection`).
"""

from mmsent.selection.evidence import bootstrap_p_value, select_modalities, video_groups
from mmsent.selection.step import Selection, select, starting_weights, validation_errors

__all__ = ["Selection", "bootstrap_p_value", "select", "select_modalities", "starting_weights",
           "validation_errors", "video_groups"]
