"""A curvature check's subsample, its eval mode and its step off a saddle."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mmsent.diagnostics.vectors import LossFn, Vector


def rows_of(batch: Any) -> int | None:
    """The number of samples in a batch: its ``label``'s length, else its first tensor's."""
    if isinstance(batch, dict) and isinstance(batch.get("label"), Tensor):
        return len(batch["label"])
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, list | tuple) else [batch]
    for value in values:
        if isinstance(value, Tensor) and value.ndim:
            return len(value)
        rows = rows_of(value) if isinstance(value, dict | list | tuple) else None
        if rows is not None:
            return rows
    return None


def first_rows(batch: Any, count: int, rows: int) -> Any:
    """Copies the first ``count`` samples of a collated batch; what is not per sample stays whole.

    Args:
        batch (Any): The batch.
        count (int): Samples to keep.
        rows (int): The batch's sample count: a tensor or list this long is per sample.

    Returns:
        Any: The subsample, detached from the batch's storage.
    """
    if isinstance(batch, Tensor):
        return batch[:count].clone() if batch.ndim and len(batch) == rows else batch
    if isinstance(batch, dict):
        return {key: first_rows(value, count, rows) for key, value in batch.items()}
    if isinstance(batch, list | tuple):
        if len(batch) == rows and not any(isinstance(v, Tensor | dict | list | tuple) for v in batch):
            return type(batch)(batch[:count])
        return type(batch)(first_rows(value, count, rows) for value in batch)
    return batch


def loss_from_outputs(outputs: Any) -> Tensor | None:
    """Extracts the training loss from what ``training_step`` returned.

    Args:
        outputs (Any): A tensor, a dict with ``"loss"``, or ``None``.

    Returns:
        Tensor | None: The detached loss, or ``None`` if there is none.
    """
    if isinstance(outputs, dict):
        outputs = outputs.get("loss")
    if isinstance(outputs, Tensor):
        return outputs.detach()
    return None


class EvalMode:
    """Puts a module in eval mode, then restores every submodule's own flag.

    ``module.train()`` would also wake submodules deliberately frozen in eval mode.

    Args:
        module (nn.Module): The model.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.modes: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        return self.module

    def __exit__(self, *exc_info: object) -> None:
        for m, training in self.modes:
            m.training = training


@torch.no_grad()
def escape_along(loss_fn: LossFn, params: list[Tensor], direction: Vector, base_loss: float,
                 step: float) -> float | None:
    """Moves the parameters by ``±step * direction``, whichever lowers the loss (neither: no move).

    Args:
        loss_fn (LossFn): Zero-argument callable returning the loss.
        params (list[Tensor]): The parameters, moved in place.
        direction (Vector): The unit negative-curvature direction.
        base_loss (float): The loss before the move.
        step (float): The length of the step.

    Returns:
        float | None: The loss change of the step taken, or ``None`` if none was.
    """
    # Every trial starts from a saved copy so that undoing a trial is bit-exact.
    saved = [p.detach().clone() for p in params]
    deltas = {}
    for sign in (1.0, -1.0):
        move_to(params, saved, direction, sign * step)
        deltas[sign] = float(loss_fn()) - base_loss
    sign = min(deltas, key=deltas.__getitem__)
    if deltas[sign] >= 0:
        move_to(params, saved, direction, 0.0)
        return None
    move_to(params, saved, direction, sign * step)
    return deltas[sign]


def move_to(params: list[Tensor], origin: Vector, direction: Vector, step: float) -> None:
    """Sets the parameters to ``origin + step * direction`` in place."""
    for p, o, d in zip(params, origin, direction, strict=True):
        p.copy_(o)
        if step:
            p.add_(d, alpha=step)
