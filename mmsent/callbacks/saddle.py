"""Callback that checks for saddle points when training stalls and can step off them."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from mmsent.diagnostics.lanczos import DEFAULT_ITERATIONS, DEFAULT_RTOL
from mmsent.diagnostics.probe import probe_neighbourhood
from mmsent.diagnostics.saddle import (
    DEFAULT_CURVATURE_TOL,
    DEFAULT_GRAD_TOL,
    diagnose_critical_point,
    is_indefinite,
)
from mmsent.diagnostics.vectors import LossFn, Vector


def _loss_from_outputs(outputs: Any) -> Tensor | None:
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


class _EvalMode:
    """Context manager that puts a module in eval mode and restores every submodule's
    own train/eval flag afterwards (``module.train()`` would also wake up submodules that
    were deliberately frozen in eval mode).

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


class SaddlePointMonitor(pl.Callback):
    """Detects training plateaus and tests whether they are saddle points.

    The training loss is averaged over consecutive windows of ``window`` steps. When the
    relative improvement of one window mean over the previous one falls below
    ``min_rel_improvement`` (or every ``every_n_steps`` steps, if set), the monitor takes
    the current batch and, with the model in eval mode so that dropout adds no noise:

    1. computes the gradient norm and estimates the extreme Hessian eigenvalues of
       ``pl_module.compute_loss(batch)`` over the trainable parameters (Lanczos, at most
       ``iterations`` Hessian-vector products, fewer once both ends have converged to
       ``rtol``), and gives the verdict of
       :func:`~mmsent.diagnostics.saddle.classify_critical_point`: ``"minimum"``,
       ``"saddle"`` or ``"cannot tell"`` (a point whose batch gradient norm exceeds
       ``grad_tol`` is not critical, and an unconverged positive ``λ_min`` cannot confirm
       a minimum);
    2. probes the loss at ``num_directions`` random points at distance ``probe_radius``;
    3. if ``escape`` is set and the Hessian is indefinite, moves the parameters by
       ``escape_step`` along the negative-curvature eigenvector, in whichever sign lowers
       the loss (no move if neither does).

    It logs ``saddle/lambda_max``, ``saddle/lambda_min``, ``saddle/indefinite`` (0/1),
    ``saddle/probe_best_delta``, ``saddle/gradient_norm`` and ``saddle/verdict`` (the code
    of :data:`~mmsent.diagnostics.saddle.VERDICT_CODES`: 0 cannot tell, 1 minimum,
    2 saddle) and appends a dict per check, with the verdict in words, to
    :attr:`history`. Random vectors come from a private generator, so a check leaves the
    training's random draws, and hence its figures, unchanged (unless it escapes).

    The model must define ``compute_loss(batch: dict) -> Tensor``. The diagnostics cost
    about ``iterations + num_directions + 3`` forward/backward passes per check and hold
    up to ``iterations`` copies of the trainable parameters. ``escape`` is refused under
    multi-process training, where each rank would move its replica differently.

    Args:
        window (int): Steps per averaging window.
        min_rel_improvement (float): A plateau is a relative improvement of the window
            mean below this.
        iterations (int): The most Hessian-vector products per eigenvalue estimate.
        rtol (float): Lanczos stops once both extreme Ritz residuals are below ``rtol``
            times their Ritz values.
        grad_tol (float): The largest batch gradient norm at which the point counts as
            critical.
        probe_radius (float): Step length of the random probe.
        num_directions (int): Random directions probed.
        escape (bool): Whether to step along negative curvature at a saddle.
        escape_step (float): Length of that step.
        every_n_steps (int | None): Also check every this many steps.
        tol (float): Eigenvalues within ``tol`` of 0 (or within the products' rounding
            level, if larger) count as flat.
        seed (int): Seed for the random vectors; check ``k`` uses ``seed + k``.

    Attributes:
        history (list[dict[str, Any]]): One record per check: ``step``, ``reason``
            (``"plateau"`` or ``"schedule"``), ``loss``, ``lambda_max``, ``lambda_min``,
            ``indefinite``, ``probe_best_delta``, ``escaped``, ``escape_delta`` (the
            loss change of the escape step, or ``None``), ``gradient_norm``,
            ``verdict`` and ``verdict_reason`` (text), ``verdict_code``, ``converged``
            (both extreme eigenvalues), ``residual_min`` and ``hessian_products``.

    Raises:
        ValueError: If a count or length is not positive.
    """

    def __init__(
        self,
        window: int = 50,
        min_rel_improvement: float = 1e-3,
        iterations: int = DEFAULT_ITERATIONS,
        rtol: float = DEFAULT_RTOL,
        grad_tol: float = DEFAULT_GRAD_TOL,
        probe_radius: float = 1e-2,
        num_directions: int = 8,
        escape: bool = False,
        escape_step: float = 1e-2,
        every_n_steps: int | None = None,
        tol: float = DEFAULT_CURVATURE_TOL,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("window", window),
            ("iterations", iterations),
            ("num_directions", num_directions),
            ("probe_radius", probe_radius),
            ("escape_step", escape_step),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or None, got {every_n_steps!r}")
        self.window = window
        self.min_rel_improvement = min_rel_improvement
        self.iterations = iterations
        self.rtol = rtol
        self.grad_tol = grad_tol
        self.probe_radius = probe_radius
        self.num_directions = num_directions
        self.escape = escape
        self.escape_step = escape_step
        self.every_n_steps = every_n_steps
        self.tol = tol
        self.seed = seed
        self.history: list[dict[str, Any]] = []
        self._current: list[Tensor] = []
        self._window_means: list[float] = []
        self._steps_since_check = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Checks that the model and the run support the monitor.

        Args:
            trainer (pl.Trainer): The trainer.
            pl_module (pl.LightningModule): The model.
            stage (str): ``"fit"``, ``"validate"``, ...

        Raises:
            TypeError: If the model has no ``compute_loss`` method.
            ValueError: If ``escape`` is set and training runs in several processes.
        """
        if stage != "fit":
            return
        if not callable(getattr(pl_module, "compute_loss", None)):
            raise TypeError(
                f"SaddlePointMonitor needs {type(pl_module).__name__}.compute_loss(batch)"
            )
        if self.escape and trainer.world_size > 1:
            raise ValueError("SaddlePointMonitor(escape=True) supports single-process runs only")

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Records the step's loss and runs a check when one is due.

        Args:
            trainer (pl.Trainer): The trainer.
            pl_module (pl.LightningModule): The model.
            outputs (Any): What ``training_step`` returned.
            batch (Any): The batch just trained on.
            batch_idx (int): Its index in the epoch.
        """
        loss = _loss_from_outputs(outputs)
        if loss is None:
            return
        self._steps_since_check += 1
        reason = self._due(loss)
        if reason is not None:
            self._check(trainer, pl_module, batch, reason)

    def _due(self, loss: Tensor) -> str | None:
        """Adds a loss to the current window and decides whether a check is due.

        Args:
            loss (Tensor): The step's detached loss.

        Returns:
            str | None: ``"plateau"``, ``"schedule"`` or ``None``.
        """
        self._current.append(loss)
        if len(self._current) == self.window:
            # One device sync per window rather than per step.
            self._window_means.append(float(torch.stack(self._current).float().mean()))
            self._window_means = self._window_means[-2:]
            self._current = []
            if len(self._window_means) == 2 and self._stalled(*self._window_means):
                return "plateau"
        if self.every_n_steps is not None and self._steps_since_check >= self.every_n_steps:
            return "schedule"
        return None

    def _stalled(self, previous: float, current: float) -> bool:
        """Tells whether the window mean improved by less than the threshold.

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

    def _check(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, reason: str
    ) -> None:
        """Runs the diagnostics on ``batch``, logs them and optionally escapes.

        Args:
            trainer (pl.Trainer): The trainer.
            pl_module (pl.LightningModule): The model.
            batch (Any): The batch the loss is computed on.
            reason (str): Why the check runs, for :attr:`history`.
        """
        self._steps_since_check = 0
        self._current, self._window_means = [], []
        params = [p for p in pl_module.parameters() if p.requires_grad]
        if not params:
            return
        seed = self.seed + len(self.history)

        def loss_fn() -> Tensor:
            return pl_module.compute_loss(batch)

        with _EvalMode(pl_module), torch.enable_grad():
            diagnosis = diagnose_critical_point(
                loss_fn, params, self.iterations, self.rtol, self.grad_tol, self.tol, seed
            )
            spectrum = diagnosis.spectrum
            probe = probe_neighbourhood(
                loss_fn, params, self.probe_radius, self.num_directions, seed
            )
            flat = max(self.tol, spectrum.rounding)
            indefinite = is_indefinite(spectrum.lambda_max, spectrum.lambda_min, flat)
            escape_delta = None
            if self.escape and indefinite:
                escape_delta = self._escape(
                    loss_fn, params, spectrum.eigenvector_min, probe.base_loss
                )
        record = {
            "step": trainer.global_step,
            "reason": reason,
            "loss": probe.base_loss,
            "lambda_max": spectrum.lambda_max,
            "lambda_min": spectrum.lambda_min,
            "indefinite": indefinite,
            "probe_best_delta": probe.best_delta,
            "escaped": escape_delta is not None,
            "escape_delta": escape_delta,
            "gradient_norm": diagnosis.gradient_norm,
            "verdict": diagnosis.verdict,
            "verdict_code": diagnosis.code,
            "verdict_reason": diagnosis.reason,
            "converged": spectrum.converged,
            "residual_min": spectrum.residual_min,
            "hessian_products": spectrum.products,
        }
        self.history.append(record)
        self._log(pl_module, record)

    @torch.no_grad()
    def _escape(
        self, loss_fn: LossFn, params: list[Tensor], direction: Vector, base_loss: float
    ) -> float | None:
        """Moves the parameters by ``±escape_step * direction``, whichever sign lowers the
        loss more, or leaves them if neither lowers it.

        Args:
            loss_fn (LossFn): Zero-argument callable returning the loss.
            params (list[Tensor]): The parameters, moved in place.
            direction (Vector): The unit negative-curvature direction.
            base_loss (float): The loss before the move.

        Returns:
            float | None: The loss change of the step taken, or ``None`` if none was.
        """
        # Every trial starts from a saved copy so that undoing a trial is bit-exact.
        saved = [p.detach().clone() for p in params]
        deltas = {}
        for sign in (1.0, -1.0):
            self._move(params, saved, direction, sign * self.escape_step)
            deltas[sign] = float(loss_fn()) - base_loss
        sign = min(deltas, key=deltas.__getitem__)
        if deltas[sign] >= 0:
            self._move(params, saved, direction, 0.0)
            return None
        self._move(params, saved, direction, sign * self.escape_step)
        return deltas[sign]

    @staticmethod
    def _move(params: list[Tensor], origin: Vector, direction: Vector, step: float) -> None:
        """Sets the parameters to ``origin + step * direction`` in place."""
        for p, o, d in zip(params, origin, direction, strict=True):
            p.copy_(o)
            if step:
                p.add_(d, alpha=step)

    @staticmethod
    def _log(pl_module: pl.LightningModule, record: dict[str, Any]) -> None:
        """Logs a check's numbers through the module's loggers.

        Args:
            pl_module (pl.LightningModule): The model.
            record (dict[str, Any]): The check's record.
        """
        metrics = {
            "saddle/lambda_max": record["lambda_max"],
            "saddle/lambda_min": record["lambda_min"],
            "saddle/indefinite": float(record["indefinite"]),
            "saddle/probe_best_delta": record["probe_best_delta"],
            "saddle/gradient_norm": record["gradient_norm"],
            "saddle/verdict": float(record["verdict_code"]),
        }
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=True, on_epoch=False, batch_size=1)
