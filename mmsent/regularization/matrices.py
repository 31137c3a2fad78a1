"""Matrices for the weight penalties, given in a config inline or as a file.

A file holds one tensor: ``.npy`` (``allow_pickle=False``), ``.pt``/``.pth`` or
``.safetensors``; no reader executes code from it. Relative paths start at the working folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mmsent.models.weights import read_weights_file
from mmsent.regularization.penalties import check_covariance

MATRIX_SUFFIXES: tuple[str, ...] = (".npy", ".pt", ".pth", ".safetensors")


def _single_tensor(loaded: object, path: Path, key: str) -> Tensor:
    """The one tensor a file holds, directly or as a dict's only value; ValueError otherwise."""
    if isinstance(loaded, dict) and len(loaded) == 1:
        loaded = next(iter(loaded.values()))
    if isinstance(loaded, np.ndarray):
        loaded = torch.from_numpy(loaded)
    if isinstance(loaded, Tensor):
        return loaded
    kind = type(loaded).__name__
    raise ValueError(f"{key}: {path} must hold exactly one tensor, got {kind}")


def load_matrix(spec: str | list[list[float]], key: str) -> Tensor:
    """Reads a matrix from an inline list of rows or from a file.

    Args:
        spec (str | list[list[float]]): The rows, or the path of a ``.npy``, ``.pt``,
            ``.pth`` or ``.safetensors`` file holding one 2-D tensor.
        key (str): The config key, for messages.

    Returns:
        Tensor: The matrix, float64 on the CPU.

    Raises:
        ValueError: If the file is missing or unreadable, or not a finite 2-D matrix.
    """
    if isinstance(spec, str):
        path = Path(spec)
        if path.suffix not in MATRIX_SUFFIXES:
            raise ValueError(f"{key}: {spec!r} is not a {MATRIX_SUFFIXES} file")
        if not path.is_file():
            raise ValueError(f"{key}: matrix file {path} does not exist")
        try:
            loaded = np.load(path, allow_pickle=False) if path.suffix == ".npy" else read_weights_file(path, key)
        except Exception as error:
            raise ValueError(f"{key}: cannot read matrix file {path}: {error}") from error
        matrix = _single_tensor(loaded, path, key)
    else:
        try:
            matrix = torch.tensor(spec, dtype=torch.float64)
        except (TypeError, ValueError) as error:
            message = f"{key}: an inline matrix must be a list of equal rows: {error}"
            raise ValueError(message) from error
    matrix = matrix.to(torch.float64)
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError(f"{key}: expected a non-empty 2-D matrix, got shape {tuple(matrix.shape)}")
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError(f"{key}: the matrix holds non-finite values")
    return matrix


def load_covariance(spec: str | list[list[float]], key: str) -> Tensor:
    """Reads a covariance matrix and checks that it is one.

    Args:
        spec (str | list[list[float]]): As for :func:`load_matrix`.
        key (str): The config key, for messages.

    Returns:
        Tensor: ``Σ``, float64 on the CPU.

    Raises:
        ValueError: If the matrix is not square, symmetric and positive definite.
    """
    return check_covariance(load_matrix(spec, key), key)
