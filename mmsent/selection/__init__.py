"""Choosing what a fused stage hands on from validation evidence: the tests, the step after it."""

from mmsent.selection.evidence import bootstrap_p_value, select_modalities, video_groups
from mmsent.selection.step import Selection, select, starting_weights, validation_errors

__all__ = ["Selection", "bootstrap_p_value", "select", "select_modalities", "starting_weights",
           "validation_errors", "video_groups"]
