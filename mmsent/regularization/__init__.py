"""Weight penalties added to the training loss, and the configurable :class:`Regularizer`
that applies them to a model's weight matrices and kernels.
"""

from mmsent.regularization.penalties import (
    TIKHONOV_OPERATORS,
    elastic_net_penalty,
    l1_penalty,
    l2_penalty,
    mahalanobis_penalty,
    row_covariance,
    soft_threshold_,
    tikhonov_penalty,
)
from mmsent.regularization.regularizer import PenaltyTerms, Regularizer

__all__ = ["TIKHONOV_OPERATORS", "PenaltyTerms", "Regularizer", "elastic_net_penalty", "l1_penalty",
           "l2_penalty", "mahalanobis_penalty", "row_covariance", "soft_threshold_",
           "tikhonov_penalty"]
