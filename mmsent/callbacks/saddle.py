"""Callback that checks for saddle points when training stalls and can step off them."""

from __future__ import annotations

import inspect
import time
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from mmsent.diagnostics.plateau import PlateauDetector
from mmsent.diagnostics.probe import probe_neighbourhood
from mmsent.diagnostics.saddle import (
    DEFAULT_CURVATURE_TOL,
    DEFAULT_GRAD_TOL,
    diagnose_critical_point,
    flat_curvature,
    is_indefinite,
    smooth_l1_surrogate,
)
from mmsent.diagnostics.steps import EvalMode, escape_along, first_rows, loss_from_outputs, rows_of
from mmsent.diagnostics.vectors import LossFn, Vector, axpy, norm, scale

# A small Lanczos budget and a 1 % residual never give a wrong verdict, only more "cannot
# tell": a saddle needs no convergence, a minimum needs lambda_min minus its residual > 0.
MONITOR_ITERATIONS = 10
MONITOR_RTOL = 1e-2
# A check starts only when the budget left covers this many training steps, and stops
# starting products when all but this share (kept for the probes) is spent.
MIN_CHECK_STEPS = 5.0
PROBE_SHARE = 0.2


class SaddlePointMonitor(pl.Callback):
    """Detects training plateaus and tests whether they are saddle points.

    A check is due when a window mean of the training loss improves on the previous one
    by less than ``min_rel_improvement`` (or every ``every_n_steps``). In eval mode, on a
    fixed subsample taken at the first check, it:

    1. estimates the gradient norm and the extreme Hessian eigenvalues of
       ``pl_module.compute_loss(batch)`` (warm-started Lanczos) and gives the verdict of
       :func:`~mmsent.diagnostics.saddle.classify_critical_point`: ``"minimum"``,
       ``"saddle"`` or ``"cannot tell"``;
    2. probes the loss at ``num_directions`` random points at distance ``probe_radius``;
    3. with ``escape``, at an indefinite Hessian, steps ``escape_step`` along the
       negative-curvature eigenvector in whichever sign lowers the loss.

    An L1-trained task (``loss_name == "l1"``) is checked on the smooth surrogate
    :func:`~mmsent.diagnostics.saddle.smooth_l1_surrogate`, as the L1 loss has no
    Gauss-Newton curvature; its ``compute_loss`` must accept ``loss_fn``. With
    ``max_overhead``, a check waits until the budget covers ``MIN_CHECK_STEPS`` training
    steps and stops early (saying "cannot tell") once it is spent; check timing then
    depends on the machine, so ``escape`` runs reproduce only on the same machine.

    Logs ``saddle/lambda_max``, ``saddle/lambda_min``, ``saddle/indefinite``,
    ``saddle/probe_best_delta``, ``saddle/gradient_norm`` and ``saddle/verdict`` (0 cannot
    tell, 1 minimum, 2 saddle). Random vectors come from a private generator, so checks
    leave training's random draws unchanged (unless one escapes). ``escape`` is refused
    under multi-process training. A check costs about ``2 * iterations + num_directions + 3``
    forward/backward passes on the subsample.

    Args:
        window (int): Steps per averaging window.
        min_rel_improvement (float): A plateau is a relative improvement of the window
            mean below this.
        iterations (int): The most Hessian-vector products per eigenvalue estimate.
        rtol (float): Lanczos stops once both extreme Ritz residuals are below ``rtol``
            times their Ritz values.
        grad_tol (float): A batch gradient norm at or below this makes the point critical.
        probe_radius (float): Step length of the random probe.
        num_directions (int): Random directions probed.
        escape (bool): Whether to step along negative curvature at a saddle.
        escape_step (float): Length of that step.
        every_n_steps (int | None): Also check every this many steps.
        tol (float): Eigenvalues within ``tol`` of 0 (or the rounding level, if larger)
            count as flat.
        seed (int): Seed for the random vectors; check ``k`` uses ``seed + k``.
        grad_rtol (float | None): A gain of one gradient step at or below this share of
            the loss also makes the point critical; None: ``grad_tol`` alone.
        subsample (int | None): Samples the checks evaluate the loss on; None: the whole
            batch at hand, a new one at every check.
        warm_start (bool): Start Lanczos from the last check's extreme eigenvectors.
        max_overhead (float | None): The largest share of the training time the checks
            may take; None: no limit.
        smooth_l1_delta (float | None): ``δ`` of the surrogate for L1-trained tasks;
            None: check the task's own loss.
        curvature_rtol (float): Eigenvalues within this times the spectrum's scale count as
            flat, so float32 rounding does not read as negative curvature.

    Attributes:
        history (list[dict[str, Any]]): One record per check (step, reason, eigenvalues,
            verdict and its reason, probe and escape results, seconds).
        deferred (int): Due checks put off by ``max_overhead``.

    Raises:
        ValueError: If a count or length is not positive.
    """

    def __init__(self, window: int = 50, min_rel_improvement: float = 1e-3,
                 iterations: int = MONITOR_ITERATIONS, rtol: float = MONITOR_RTOL,
                 grad_tol: float = DEFAULT_GRAD_TOL, probe_radius: float = 1e-2,
                 num_directions: int = 4, escape: bool = False, escape_step: float = 1e-2,
                 every_n_steps: int | None = None, tol: float = DEFAULT_CURVATURE_TOL,
                 seed: int = 0, grad_rtol: float | None = 1e-3, subsample: int | None = 16,
                 warm_start: bool = True, max_overhead: float | None = 0.05,
                 smooth_l1_delta: float | None = 0.1, curvature_rtol: float = 1e-5) -> None:
        super().__init__()
        vars(self).update({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        for name, value in (
            ("window", window), ("iterations", iterations), ("num_directions", num_directions),
            ("probe_radius", probe_radius), ("escape_step", escape_step),
            ("grad_rtol", 1.0 if grad_rtol is None else grad_rtol),
            ("subsample", 1 if subsample is None else subsample),
            ("max_overhead", 1.0 if max_overhead is None else max_overhead),
            ("smooth_l1_delta", 1.0 if smooth_l1_delta is None else smooth_l1_delta)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or None, got {every_n_steps!r}")
        self.history: list[dict[str, Any]] = []
        self.deferred = 0
        self._reset()

    def _reset(self) -> None:
        """Forgets the windows, the subsample, the warm start and the time accounts."""
        self._plateau = PlateauDetector(self.window, self.min_rel_improvement)
        self._steps_since_check = 0
        self._check_batch: Any = None
        self._start: Vector | None = None
        self._train_seconds = 0.0
        self._check_seconds = 0.0
        self._deadline: float | None = None
        self._steps = 0
        self._last_step_end: float | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Checks that the model and the run support the monitor.

        Raises:
            TypeError: If the model has no ``compute_loss`` method.
            ValueError: If ``escape`` is set and training runs in several processes.
        """
        if stage != "fit":
            return
        if not callable(getattr(pl_module, "compute_loss", None)):
            raise TypeError(
                f"SaddlePointMonitor needs {type(pl_module).__name__}.compute_loss(batch)")
        if self.escape and trainer.world_size > 1:
            raise ValueError("SaddlePointMonitor(escape=True) supports single-process runs only")
        self._reset()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        """Records the step's loss and runs a check when one is due and affordable."""
        now = time.perf_counter()
        if self._last_step_end is not None:
            self._train_seconds += now - self._last_step_end
        self._last_step_end = now
        loss = loss_from_outputs(outputs)
        if loss is None:
            return
        self._steps += 1
        self._steps_since_check += 1
        reason = self._due(loss)
        if reason is None:
            return
        budget = self._budget()
        if budget is not None and (not self._train_seconds
                                   or budget < MIN_CHECK_STEPS * self._train_seconds / self._steps):
            self.deferred += 1
            return
        self._deadline = None if budget is None else now + (1.0 - PROBE_SHARE) * budget
        self._check(trainer, pl_module, batch, reason)
        spent = time.perf_counter() - now
        self._check_seconds += spent
        self.history[-1]["seconds"] = spent
        self._last_step_end = time.perf_counter()

    def _budget(self) -> float | None:
        """The seconds the checks may still spend within ``max_overhead`` (None: no limit)."""
        if self.max_overhead is None:
            return None
        return self.max_overhead * self._train_seconds - self._check_seconds

    def _due(self, loss: Tensor) -> str | None:
        """str | None: Why a check is due after this loss: ``"plateau"``, ``"schedule"``."""
        if self._plateau.add(loss):
            return "plateau"
        if self.every_n_steps is not None and self._steps_since_check >= self.every_n_steps:
            return "schedule"
        return None

    def _loss_fn(self, pl_module: pl.LightningModule, batch: Any) -> tuple[LossFn, bool]:
        """The loss a check evaluates, and whether it is the smooth L1 surrogate."""
        surrogate = (self.smooth_l1_delta is not None and getattr(pl_module, "loss_name", None) == "l1"
                     and "loss_fn" in inspect.signature(pl_module.compute_loss).parameters)
        if surrogate:
            smooth = partial(smooth_l1_surrogate, delta=self.smooth_l1_delta)
            return (lambda: pl_module.compute_loss(batch, loss_fn=smooth)), True
        return (lambda: pl_module.compute_loss(batch)), False

    def _check_input(self, batch: Any) -> Any:
        """The batch a check evaluates: the fixed subsample, taken on the first check."""
        if self.subsample is None:
            return batch
        if self._check_batch is None:
            rows = rows_of(batch)
            self._check_batch = batch if rows is None else first_rows(batch, min(self.subsample, rows), rows)
        return self._check_batch

    def _warm_start(self, params: list[Tensor]) -> Vector | None:
        """The last check's extreme eigenvectors, summed and normalised, if they fit."""
        if not self.warm_start or self._start is None:
            return None
        if [s.shape for s in self._start] != [p.shape for p in params]:
            return None
        return self._start

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
               reason: str) -> None:
        """Runs the diagnostics on the subsample, logs them and optionally escapes."""
        self._steps_since_check = 0
        self._plateau.reset()
        params = [p for p in pl_module.parameters() if p.requires_grad]
        if not params:
            return
        seed = self.seed + len(self.history)
        loss_fn, surrogate = self._loss_fn(pl_module, self._check_input(batch))

        with EvalMode(pl_module), torch.enable_grad():
            diagnosis = diagnose_critical_point(
                loss_fn, params, self.iterations, self.rtol, self.grad_tol, self.tol, seed,
                self.grad_rtol, self._warm_start(params), self.curvature_rtol, self._deadline)
            spectrum = diagnosis.spectrum
            if spectrum.eigenvector_max is not None:
                both = axpy(1.0, spectrum.eigenvector_min, spectrum.eigenvector_max)
                length = norm(both)
                self._start = scale(1.0 / length, both) if length > 0 else spectrum.eigenvector_min
            probe = probe_neighbourhood(loss_fn, params, self.probe_radius, self.num_directions,
                                        seed)
            flat = flat_curvature(spectrum, self.tol, self.curvature_rtol)
            indefinite = is_indefinite(spectrum.lambda_max, spectrum.lambda_min, flat)
            escape_delta = None
            if self.escape and indefinite:
                escape_delta = escape_along(
                    loss_fn, params, spectrum.eigenvector_min, probe.base_loss, self.escape_step)
        record = {"step": trainer.global_step, "reason": reason, "loss": probe.base_loss,
                  "lambda_max": spectrum.lambda_max, "lambda_min": spectrum.lambda_min,
                  "indefinite": indefinite, "probe_best_delta": probe.best_delta,
                  "escaped": escape_delta is not None, "escape_delta": escape_delta,
                  "gradient_norm": diagnosis.gradient_norm, "verdict": diagnosis.verdict,
                  "verdict_code": diagnosis.code, "verdict_reason": diagnosis.reason,
                  "converged": spectrum.converged, "residual_min": spectrum.residual_min,
                  "hessian_products": spectrum.products, "surrogate": surrogate, "seconds": None}
        self.history.append(record)
        self._log(pl_module, record)

    @staticmethod
    def _log(pl_module: pl.LightningModule, record: dict[str, Any]) -> None:
        """Logs a check's numbers through the module's loggers."""
        for key in ("lambda_max", "lambda_min", "indefinite", "probe_best_delta", "gradient_norm",
                    "verdict_code"):
            name = "saddle/" + key.removesuffix("_code")
            pl_module.log(name, float(record[key]), on_step=True, on_epoch=False, batch_size=1)
