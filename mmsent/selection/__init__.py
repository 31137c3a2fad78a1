"""Choosing what a fused stage hands on, from validation evidence: the statistics
(:mod:`~mmsent.selection.evidence`) and the step after the stage's fit that runs them
(:func:`~mmsent.selection.step.select`)."""

from mmsent.selection.evidence import (
    GainTest,
    bootstrap_p_value,
    measure_gain,
    select_modalities,
    video_groups,
)
from mmsent.selection.step import (
    SELECTED_FILE,
    Selection,
    select,
    starting_weights,
    validation_errors,
)

__all__ = [
    "SELECTED_FILE",
    "GainTest",
    "Selection",
    "bootstrap_p_value",
    "measure_gain",
    "select",
    "select_modalities",
    "starting_weights",
    "validation_errors",
    "video_groups",
]
