"""Training diagnostics."""

from mmsent.diagnostics.saddle import (
    ProbeResult,
    extreme_hessian_eigenvalues,
    hessian_vector_product,
    is_indefinite,
    probe_neighbourhood,
)

__all__ = [
    "ProbeResult",
    "extreme_hessian_eigenvalues",
    "hessian_vector_product",
    "is_indefinite",
    "probe_neighbourhood",
]
