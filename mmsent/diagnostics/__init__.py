"""Training diagnostics."""

from mmsent.diagnostics.lanczos import LanczosResult, lanczos
from mmsent.diagnostics.probe import ProbeResult, probe_neighbourhood
from mmsent.diagnostics.saddle import (
    VERDICT_CODES,
    CriticalPointDiagnosis,
    classify_critical_point,
    diagnose_critical_point,
    extreme_hessian_eigenvalues,
    first_order_gain,
    flat_curvature,
    hessian_extremes,
    hessian_vector_product,
    is_indefinite,
    smooth_l1_surrogate,
)

__all__ = ["VERDICT_CODES", "CriticalPointDiagnosis", "LanczosResult", "ProbeResult",
           "classify_critical_point", "diagnose_critical_point", "extreme_hessian_eigenvalues",
           "first_order_gain", "flat_curvature", "hessian_extremes", "hessian_vector_product",
           "is_indefinite", "lanczos", "probe_neighbourhood", "smooth_l1_surrogate"]
