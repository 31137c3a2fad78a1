"""Telling when training has stalled, from the training loss alone."""

from __future__ import annotations

import math

import torch
from torch import Tensor


class PlateauDetector:
    """Detects a stall: a window mean of the loss improving too little on the previous one.

    Args:
        window (int): Steps per window.
        min_rel_improvement (float): The relative improvement below which training has stalled.
    """

    def __init__(self, window: int, min_rel_improvement: float) -> None:
        self.window = window
        self.min_rel_improvement = min_rel_improvement
        self.reset()

    def reset(self) -> None:
        """Forgets the windows seen so far."""
        self._current: list[Tensor] = []
        self._means: list[float] = []

    def add(self, loss: Tensor) -> bool:
        """Adds a step's loss.

        Args:
            loss (Tensor): The step's detached loss.

        Returns:
            bool: Whether the window it completes shows that training has stalled.
        """
        self._current.append(loss)
        if len(self._current) < self.window:
            return False
        # One device sync per window rather than per step.
        self._means = [*self._means, float(torch.stack(self._current).float().mean())][-2:]
        self._current = []
        return len(self._means) == 2 and self.stalled(*self._means)

    def stalled(self, previous: float, current: float) -> bool:
        """Tells whether a window mean improved on the previous one by less than the threshold.

        Args:
            previous (float): The earlier window mean.
            current (float): The later window mean.

        Returns:
            bool: Whether training has stalled; ``False`` for non-finite losses.
        """
        if not (math.isfinite(previous) and math.isfinite(current)):
            return False
        improvement = (previous - current) / max(abs(previous), 1e-12)
        return improvement < self.min_rel_improvement
