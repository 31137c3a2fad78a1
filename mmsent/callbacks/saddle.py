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

# The monitor's Lanczos budget and tolerance: a saddle verdict needs no convergence
# (both Ritz values are Rayleigh quotients: any negative one certifies negative
# curvature), and a minimum verdict still requires lambda_min minus its Ritz residual to
# stay positive, so a small budget and a 1 % residual never give a wrong verdict, only
# more "cannot tell"; warm starts carry the convergence over successive checks.
MONITOR_ITERATIONS = 10
MONITOR_RTOL = 1e-2
# A check starts only when the budget left covers this many training steps (the gradient,
# two products and the probes on the quickstart's LSTM), and stops starting products
# when the budget is spent but for this share, kept for the probes.
MIN_CHECK_STEPS = 5.0
PROBE_SHARE = 0.2


class SaddlePointMonitor(pl.Callback):
    """Detects training plateaus and tests whether they are saddle points.

    The training loss is averaged over consecutive windows of ``window`` steps. When the
    relative improvement of one window mean over the previous one falls below
    ``min_rel_improvement`` (or every ``every_n_steps`` steps, if set), a check is due.
    It runs, with the model in eval mode so that dropout adds no noise, on a **fixed
    subsample**: the first ``subsample`` samples of the batch at hand when the first
    check runs, kept for every later check, so that the checks of a run look at one
    loss surface and cost a fraction of a batch:

    1. computes the loss, its gradient norm and the extreme Hessian eigenvalues of
       ``pl_module.compute_loss(batch)`` over the trainable parameters (Lanczos, at most
       ``iterations`` Hessian-vector products, fewer once both ends have converged to
       ``rtol``; **warm-started** from the last check's extreme eigenvectors, which
       change little between checks), and gives the verdict of
       :func:`~mmsent.diagnostics.saddle.classify_critical_point`: ``"minimum"``,
       ``"saddle"`` or ``"cannot tell"``. The point counts as critical when the
       gradient norm is at most ``grad_tol`` or when one gradient step can gain at most
       ``grad_rtol`` of the loss (:func:`~mmsent.diagnostics.saddle.first_order_gain`,
       a test in the loss's own units);
    2. probes the loss at ``num_directions`` random points at distance ``probe_radius``;
    3. if ``escape`` is set and the Hessian is indefinite, moves the parameters by
       ``escape_step`` along the negative-curvature eigenvector, in whichever sign lowers
       the loss (no move if neither does).

    **L1-trained tasks.** A task whose ``loss_name`` is ``"l1"`` is checked on the
    smooth surrogate :func:`~mmsent.diagnostics.saddle.smooth_l1_surrogate` (pseudo-Huber,
    ``smooth_l1_delta``) of its predictions, not on the L1 loss itself (``None`` turns
    this off): the L1 loss is piecewise linear in the prediction, so its Hessian has no
    Gauss-Newton part and its gradient does not vanish at a minimum, and the
    second-derivative test has nothing to decide on. The surrogate shares the L1 loss's
    minimizers up to ``O(δ)`` and is smooth. The task's ``compute_loss`` must accept
    ``loss_fn`` for this (:class:`~mmsent.tasks.base.BaseTask`'s does).

    **Cost.** With ``max_overhead`` set, the checks may spend that share of the training
    time so far. A due check runs only when what is left of it covers
    ``MIN_CHECK_STEPS`` (5) training steps, otherwise it waits for the next due step;
    and Lanczos starts no product once the budget left (less a fifth, kept for the
    probes) is spent, so a check stops early rather than overrun, and says "cannot
    tell" where it has not seen enough. The monitor's share of a fit therefore stays
    near ``max_overhead`` (overshooting by at most a product and the probes), on any
    stage; set it to ``None`` for every due check, each with its full ``iterations``.
    The timing of the checks then depends on the machine's speed, so with ``escape`` a
    run is reproducible only on the same machine.

    It logs ``saddle/lambda_max``, ``saddle/lambda_min``, ``saddle/indefinite`` (0/1),
    ``saddle/probe_best_delta``, ``saddle/gradient_norm`` and ``saddle/verdict`` (the code
    of :data:`~mmsent.diagnostics.saddle.VERDICT_CODES`: 0 cannot tell, 1 minimum,
    2 saddle) and appends a dict per check, with the verdict in words, to
    :attr:`history`. Random vectors come from a private generator, so a check leaves the
    training's random draws, and hence its figures, unchanged (unless it escapes).

    The model must define ``compute_loss(batch: dict) -> Tensor``. A check costs about
    ``2 * iterations + num_directions + 3`` forward/backward passes on the subsample and
    holds up to ``iterations`` copies of the trainable parameters. ``escape`` is refused
    under multi-process training, where each rank would move its replica differently.

    Args:
        window (int): Steps per averaging window.
        min_rel_improvement (float): A plateau is a relative improvement of the window
            mean below this.
        iterations (int): The most Hessian-vector products per eigenvalue estimate.
        rtol (float): Lanczos stops once both extreme Ritz residuals are below ``rtol``
            times their Ritz values.
        grad_tol (float): A batch gradient norm at or below this makes the point
            critical.
        probe_radius (float): Step length of the random probe.
        num_directions (int): Random directions probed.
        escape (bool): Whether to step along negative curvature at a saddle.
        escape_step (float): Length of that step.
        every_n_steps (int | None): Also check every this many steps.
        tol (float): Eigenvalues within ``tol`` of 0 (or within the products' rounding
            level or ``curvature_rtol`` times the spectrum's scale, if larger) count as
            flat.
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
        curvature_rtol (float): See
            :func:`~mmsent.diagnostics.saddle.flat_curvature`; the default keeps float32
            rounding in the products from reading as negative curvature.

    Attributes:
        history (list[dict[str, Any]]): One record per check: ``step``, ``reason``
            (``"plateau"`` or ``"schedule"``), ``loss``, ``lambda_max``, ``lambda_min``,
            ``indefinite``, ``probe_best_delta``, ``escaped``, ``escape_delta`` (the
            loss change of the escape step, or ``None``), ``gradient_norm``,
            ``verdict`` and ``verdict_reason`` (text), ``verdict_code``, ``converged``
            (both extreme eigenvalues), ``residual_min``, ``hessian_products``,
            ``surrogate`` (whether the smooth L1 surrogate was checked) and ``seconds``.
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
                f"SaddlePointMonitor needs {type(pl_module).__name__}.compute_loss(batch)")
        if self.escape and trainer.world_size > 1:
            raise ValueError("SaddlePointMonitor(escape=True) supports single-process runs only")
        self._reset()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        """Records the step's loss and runs a check when one is due and affordable.

        Args:
            trainer (pl.Trainer): The trainer.
            pl_module (pl.LightningModule): The model.
            outputs (Any): What ``training_step`` returned.
            batch (Any): The batch just trained on.
            batch_idx (int): Its index in the epoch.
        """
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
        """float | None: The seconds the checks may still spend within ``max_overhead``
        of the training time so far (None: no limit)."""
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
        """Runs the diagnostics, logs them and optionally escapes.

        Args:
            trainer (pl.Trainer): The trainer.
            pl_module (pl.LightningModule): The model.
            batch (Any): The batch at hand (the subsample is taken from it once).
            reason (str): Why the check runs, for :attr:`history`.
        """
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
        """Logs a check's numbers through the module's loggers.

        Args:
            pl_module (pl.LightningModule): The model.
            record (dict[str, Any]): The check's record.
        """
        for key in ("lambda_max", "lambda_min", "indefinite", "probe_best_delta", "gradient_norm",
                    "verdict_code"):
            name = "saddle/" + key.removesuffix("_code")
            pl_module.log(name, float(record[key]), on_step=True, on_epoch=False, batch_size=1)
