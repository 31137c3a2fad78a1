"""Tests for the Hessian diagnostics and the saddle-point monitor."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from mmsent.callbacks.saddle import SaddlePointMonitor
from mmsent.diagnostics import (
    VERDICT_CODES,
    classify_critical_point,
    diagnose_critical_point,
    extreme_hessian_eigenvalues,
    hessian_extremes,
    hessian_vector_product,
    is_indefinite,
    lanczos,
    probe_neighbourhood,
)

A = torch.diag(torch.tensor([3.0, -2.0, 1.0]))


def _quadratic(matrix: torch.Tensor, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Returns the closure ``0.5 xᵀ M x``, whose Hessian is ``M``."""
    return lambda: 0.5 * x @ matrix @ x


def test_hessian_vector_product_of_quadratic() -> None:
    x = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
    v = torch.tensor([1.0, 2.0, -1.0])
    (hv,) = hessian_vector_product(_quadratic(A, x), [x], [v])
    assert torch.allclose(hv, A @ v)
    assert x.grad is None


def test_hessian_vector_product_over_several_tensors() -> None:
    w = torch.tensor([[1.0, 2.0]], requires_grad=True)
    b = torch.tensor([0.5], requires_grad=True)
    unused = torch.zeros(2, requires_grad=True)

    def loss() -> torch.Tensor:
        return (w.sum() * b.sum()) ** 2

    hw, hb, hu = hessian_vector_product(
        loss, [w, b, unused], [torch.ones(1, 2), torch.ones(1), torch.ones(2)]
    )
    # Compare with the dense Hessian of the same function of the flattened parameters.
    flat = torch.cat([w.detach().flatten(), b.detach()]).requires_grad_(True)
    dense = torch.autograd.functional.hessian(lambda z: (z[:2].sum() * z[2]) ** 2, flat)
    assert torch.allclose(torch.cat([hw.flatten(), hb]), dense @ torch.ones(3))
    assert torch.equal(hu, torch.zeros(2))


def test_extreme_eigenvalues_of_known_quadratic() -> None:
    x = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
    lambda_max, lambda_min, (v,) = extreme_hessian_eigenvalues(_quadratic(A, x), [x])
    assert lambda_max == pytest.approx(3.0, abs=1e-4)
    assert lambda_min == pytest.approx(-2.0, abs=1e-4)
    assert is_indefinite(lambda_max, lambda_min, tol=1e-3)
    assert torch.allclose(v.abs(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-4)


def test_extreme_eigenvalues_when_magnitudes_tie() -> None:
    # ±2 defeats plain power iteration, which cannot tell the two ends apart.
    z = torch.tensor([1e-3, 1e-3], requires_grad=True)
    lambda_max, lambda_min, _ = extreme_hessian_eigenvalues(
        lambda: z[0] ** 2 - z[1] ** 2, [z], iterations=5
    )
    assert (lambda_max, lambda_min) == (pytest.approx(2.0, abs=1e-4), pytest.approx(-2.0, abs=1e-4))


def test_extreme_eigenvalues_of_larger_matrix() -> None:
    generator = torch.Generator().manual_seed(1)
    n = 60
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    spectrum = torch.cat(
        [
            torch.linspace(-1.0, 1.0, n - 2, dtype=torch.float64),
            torch.tensor([4.0, -5.0], dtype=torch.float64),
        ]
    )
    matrix = ((q * spectrum) @ q.T).float()
    x = torch.randn(n, generator=generator).requires_grad_(True)
    lambda_max, lambda_min, (v,) = extreme_hessian_eigenvalues(
        _quadratic(matrix, x), [x], iterations=20
    )
    assert lambda_max == pytest.approx(4.0, abs=1e-3)
    assert lambda_min == pytest.approx(-5.0, abs=1e-3)
    assert torch.allclose(matrix @ v, lambda_min * v, atol=1e-3)


def test_extreme_eigenvalues_of_small_network_match_dense_hessian() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    x, y = torch.randn(10, 2), torch.randn(10, 1)
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def flat_loss(flat: torch.Tensor) -> torch.Tensor:
        chunks = flat.split([s.numel() for s in shapes])
        params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        return nn.functional.mse_loss(torch.func.functional_call(model, params, (x,)), y)

    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    dense = torch.autograd.functional.hessian(flat_loss, flat)
    expected = torch.linalg.eigvalsh(dense.double())
    lambda_max, lambda_min, _ = extreme_hessian_eigenvalues(
        lambda: nn.functional.mse_loss(model(x), y), model.parameters(), iterations=20
    )
    assert lambda_max == pytest.approx(expected[-1].item(), abs=1e-4)
    assert lambda_min == pytest.approx(expected[0].item(), abs=1e-4)


@pytest.fixture(scope="module")
def rotation() -> torch.Tensor:
    """A random 2000 x 2000 orthogonal matrix, shared by the ill-conditioned spectra."""
    generator = torch.Generator().manual_seed(7)
    q, _ = torch.linalg.qr(torch.randn(2000, 2000, generator=generator, dtype=torch.float64))
    return q


def _spectrum(kind: str, top: float, n: int = 2000) -> torch.Tensor:
    """One large eigenvalue ``top`` above either a positive bulk with a single ``-1``
    (``"one_negative"``) or a negative bulk reaching down to ``-1`` (``"negative_bulk"``)."""
    if kind == "one_negative":
        values = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
        values[0] = -1.0
    else:
        values = -torch.linspace(0.5, 1.0, n, dtype=torch.float64)
    values[-1] = top
    return values


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("ratio", [1e3, 1e4, 1e5, 1e6])
@pytest.mark.parametrize("kind", ["one_negative", "negative_bulk"])
def test_lanczos_finds_negative_curvature_below_a_dominant_eigenvalue(
    rotation: torch.Tensor, kind: str, ratio: float, dtype: torch.dtype
) -> None:
    matrix = ((rotation * _spectrum(kind, ratio)) @ rotation.T).to(dtype)
    x = torch.zeros(2000, dtype=dtype, requires_grad=True)
    lambda_max, lambda_min, _ = extreme_hessian_eigenvalues(_quadratic(matrix, x), [x])
    # float32 products carry an error of about eps * ratio next to the eigenvalue -1.
    atol = 2e-3 if dtype == torch.float64 else 3e-2
    assert lambda_min == pytest.approx(-1.0, abs=atol)
    assert lambda_max == pytest.approx(ratio, rel=1e-5)
    assert is_indefinite(lambda_max, lambda_min)


def test_lanczos_restarts_when_the_start_spans_an_invariant_subspace() -> None:
    # Starting on an eigenvector, the first residual vanishes: stopping there would
    # report lambda_min = lambda_max = 3.
    matrix = torch.diag(torch.tensor([3.0, 1.0, -2.0], dtype=torch.float64))
    start = [torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)]
    result = lanczos(lambda v: [matrix @ v[0]], start, iterations=3, start=start)
    assert result.restarts >= 1 and result.exhausted
    assert result.lambda_min == pytest.approx(-2.0) and result.lambda_max == pytest.approx(3.0)


def test_lanczos_leaves_the_global_random_state_alone() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    matrix = torch.diag(torch.linspace(-1.0, 1.0, 50))
    lanczos(lambda v: [matrix @ v[0]], [torch.zeros(50)], iterations=30)
    assert torch.equal(torch.get_rng_state(), before)


def _trained_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 745-parameter tanh MLP after 2000 full-batch SGD steps on a toy regression,
    stopped near (not at) a point where the loss still curves downwards."""
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = torch.sin(2 * x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3] + 0.1 * torch.randn(64, 1)
    model = nn.Sequential(
        nn.Linear(4, 24), nn.Tanh(), nn.Linear(24, 24), nn.Tanh(), nn.Linear(24, 1)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(2000):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return model, x, y


def _dense_hessian_eigenvalues(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The exact spectrum of the MSE loss's Hessian, in float64."""
    model = copy.deepcopy(model).double()
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def flat_loss(flat: torch.Tensor) -> torch.Tensor:
        chunks = flat.split([s.numel() for s in shapes])
        params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        prediction = torch.func.functional_call(model, params, (x.double(),))
        return nn.functional.mse_loss(prediction, y.double())

    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    return torch.linalg.eigvalsh(torch.func.hessian(flat_loss)(flat))


def test_lanczos_finds_the_tiny_negative_curvature_of_a_trained_network() -> None:
    model, x, y = _trained_mlp()
    expected = _dense_hessian_eigenvalues(model, x, y)
    assert expected[0] < -0.01 < 20.0 < expected[-1]
    lambda_max, lambda_min, _ = extreme_hessian_eigenvalues(
        lambda: nn.functional.mse_loss(model(x), y), model.parameters(), iterations=100)
    assert lambda_min == pytest.approx(expected[0].item(), abs=1e-4)
    assert lambda_max == pytest.approx(expected[-1].item(), rel=1e-4)


def test_a_small_budget_sees_the_negative_curvature_and_a_warm_start_sharpens_it() -> None:
    model, x, y = _trained_mlp()
    expected = _dense_hessian_eigenvalues(model, x, y)
    monitor = SaddlePointMonitor(iterations=20)
    params = list(model.parameters())

    def loss_fn() -> torch.Tensor:
        return nn.functional.mse_loss(model(x), y)

    cold = diagnose_critical_point(loss_fn, params, monitor.iterations, monitor.rtol)
    # 20 products from a random start: lambda_min is a Rayleigh quotient, so never below
    # the true one, and already negative, so the Hessian is known to be indefinite.
    assert expected[0].item() - 1e-9 <= cold.spectrum.lambda_min < 0
    assert cold.spectrum.lambda_max == pytest.approx(expected[-1].item(), rel=1e-4)
    start = [a + b for a, b in zip(cold.spectrum.eigenvector_min, cold.spectrum.eigenvector_max, strict=True)]
    warm = diagnose_critical_point(loss_fn, params, monitor.iterations, monitor.rtol, seed=1, start=start)
    assert expected[0].item() - 1e-9 <= warm.spectrum.lambda_min
    assert abs(warm.spectrum.lambda_min - expected[0].item()) < 0.2 * abs(cold.spectrum.lambda_min - expected[0].item())


def _at(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def test_verdict_saddle_at_the_origin_of_x2_minus_y2() -> None:
    z = _at(0.0, 0.0)
    diagnosis = diagnose_critical_point(lambda: z[0] ** 2 - z[1] ** 2, [z])
    assert diagnosis.verdict == "saddle" and diagnosis.code == VERDICT_CODES["saddle"]
    assert diagnosis.gradient_norm == 0.0
    assert diagnosis.spectrum.lambda_min == pytest.approx(-2.0)


def test_verdict_cannot_tell_away_from_a_critical_point() -> None:
    z = _at(1.0, 0.5)
    diagnosis = diagnose_critical_point(lambda: z[0] ** 2 - z[1] ** 2, [z])
    assert diagnosis.verdict == "cannot tell"
    assert diagnosis.gradient_norm == pytest.approx(5**0.5)
    assert "not a critical point" in diagnosis.reason
    # The curvature is still reported: it is the point, not the Hessian, that is unfit.
    assert diagnosis.spectrum.lambda_min == pytest.approx(-2.0)


def test_verdict_minimum_at_the_origin_of_x2_plus_y2() -> None:
    z = _at(0.0, 0.0)
    diagnosis = diagnose_critical_point(lambda: z[0] ** 2 + z[1] ** 2, [z])
    assert diagnosis.verdict == "minimum" and diagnosis.spectrum.converged


def test_verdict_cannot_tell_with_zero_curvature() -> None:
    z = _at(0.0)
    diagnosis = diagnose_critical_point(lambda: z[0] ** 4, [z])
    assert diagnosis.verdict == "cannot tell" and "zero curvature" in diagnosis.reason


def test_verdict_saddle_of_a_two_layer_linear_network_at_zero() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=generator, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
    first = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    second = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)

    def loss() -> torch.Tensor:
        return nn.functional.mse_loss(x @ first.T @ second.T, y)

    diagnosis = diagnose_critical_point(loss, [first, second])
    assert diagnosis.gradient_norm == 0.0
    assert diagnosis.verdict == "saddle"


def test_verdict_cannot_confirm_a_minimum_before_convergence() -> None:
    # Positive definite, but three products cannot have converged on 500 dimensions.
    values = torch.linspace(1e-3, 1.0, 500, dtype=torch.float64)
    x = torch.zeros(500, dtype=torch.float64, requires_grad=True)
    diagnosis = diagnose_critical_point(lambda: 0.5 * (values * x**2).sum(), [x], iterations=3)
    assert diagnosis.spectrum.lambda_min > 0 and not diagnosis.spectrum.converged_min
    assert diagnosis.verdict == "cannot tell" and "upper bound" in diagnosis.reason
    converged = diagnose_critical_point(lambda: 0.5 * (values * x**2).sum(), [x], iterations=500)
    assert converged.verdict == "minimum"


def test_verdict_without_positive_curvature_cannot_tell() -> None:
    z = _at(0.0, 0.0)
    spectrum = hessian_extremes(lambda: -(z[0] ** 2) - z[1] ** 2, [z])
    verdict, reason = classify_critical_point(0.0, spectrum)
    assert verdict == "cannot tell" and "no positive curvature" in reason


def test_positive_definite_quadratic_is_not_indefinite() -> None:
    x = torch.ones(3, requires_grad=True)
    lambda_max, lambda_min, _ = extreme_hessian_eigenvalues(
        _quadratic(torch.diag(torch.tensor([3.0, 2.0, 1.0])), x), [x]
    )
    assert lambda_min == pytest.approx(1.0, abs=1e-4)
    assert not is_indefinite(lambda_max, lambda_min)


def test_linear_loss_has_zero_hessian() -> None:
    w = torch.ones(4, requires_grad=True)
    assert extreme_hessian_eigenvalues(lambda: (2 * w).sum(), [w])[:2] == (0.0, 0.0)


def test_is_indefinite_tolerance() -> None:
    assert is_indefinite(1.0, -0.5)
    assert not is_indefinite(1.0, -1e-8, tol=1e-6)
    assert not is_indefinite(-0.1, -0.5)


def test_probe_restores_parameters_bit_exactly() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 1))
    x, y = torch.randn(16, 5), torch.randn(16, 1)
    before = [p.detach().clone() for p in model.parameters()]

    def loss() -> torch.Tensor:
        return nn.functional.mse_loss(model(x), y)

    result = probe_neighbourhood(loss, model.parameters(), radius=0.3, num_directions=6, seed=3)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert result.base_loss == pytest.approx(loss().item())
    assert len(result.losses) == 6
    assert result.best_delta == pytest.approx(min(result.losses) - result.base_loss)
    norm = sum(d.pow(2).sum() for d in result.best_direction).sqrt()
    assert norm.item() == pytest.approx(1.0, abs=1e-5)


def test_probe_restores_parameters_when_loss_fails() -> None:
    w = torch.ones(3, requires_grad=True)
    calls = []

    def loss() -> torch.Tensor:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("boom")
        return w.sum()

    with pytest.raises(RuntimeError):
        probe_neighbourhood(loss, [w], radius=1.0, num_directions=2, seed=0)
    assert torch.equal(w, torch.ones(3))


def test_probe_finds_descent_at_a_saddle() -> None:
    x = torch.zeros(3, requires_grad=True)
    result = probe_neighbourhood(_quadratic(A, x), [x], radius=0.5, num_directions=16, seed=0)
    assert result.best_delta < 0


class _Saddle(pl.LightningModule):
    """``f(x, y) = 1 + x² - y²`` started next to its saddle at the origin.

    The offset keeps the loss away from 0 so that relative improvements are meaningful.
    """

    def __init__(self) -> None:
        super().__init__()
        self.point = nn.Parameter(torch.tensor([1e-3, 1e-4]))
        self.dropout = nn.Dropout(0.5)
        self.modes_seen: list[bool] = []
        self.losses: list[float] = []

    def compute_loss(self, batch: dict) -> torch.Tensor:
        self.modes_seen.append(self.dropout.training)
        x, y = self.point
        return 1.0 + x**2 - y**2 + 0.0 * batch["x"].sum()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)

    def train_dataloader(self) -> DataLoader:
        return DataLoader([{"x": torch.zeros(1)}] * 64, batch_size=1)


def _fit(monitor: SaddlePointMonitor, model: pl.LightningModule, steps: int) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=steps,
        callbacks=[monitor],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model)
    return trainer


def test_monitor_detects_plateau_logs_and_escapes() -> None:
    model = _Saddle()
    monitor = SaddlePointMonitor(
        window=5, iterations=5, num_directions=4, escape=True, escape_step=0.5, max_overhead=None
    )
    trainer = _fit(monitor, model, steps=12)

    assert len(monitor.history) == 1, "the plateau was not detected"
    check = monitor.history[0]
    assert check["reason"] == "plateau" and check["step"] == 10
    assert check["lambda_max"] == pytest.approx(2.0, abs=1e-3)
    assert check["lambda_min"] == pytest.approx(-2.0, abs=1e-3)
    assert check["indefinite"] and check["escaped"]
    assert check["escape_delta"] == pytest.approx(-0.25, abs=1e-2)
    assert model.losses[-1] < model.losses[9] - 0.2
    for key in ("lambda_max", "lambda_min", "indefinite", "probe_best_delta"):
        assert f"saddle/{key}" in trainer.callback_metrics
    assert trainer.callback_metrics["saddle/indefinite"].item() == 1.0
    # Training steps run in train mode, the check in eval mode, and the mode comes back.
    during_check = model.modes_seen[10:-2]
    assert all(model.modes_seen[:10]) and all(model.modes_seen[-2:])
    assert during_check and not any(during_check)


def test_monitor_without_escape_leaves_parameters_and_runs_on_schedule() -> None:
    model = _Saddle()
    monitor = SaddlePointMonitor(window=100, iterations=3, num_directions=2, every_n_steps=4, max_overhead=None)
    _fit(monitor, model, steps=8)
    assert [c["reason"] for c in monitor.history] == ["schedule", "schedule"]
    assert all(c["indefinite"] and not c["escaped"] for c in monitor.history)
    # Plain SGD from y = 1e-4 with lr 1e-3 grows y by 0.2 % per step: no jump.
    assert abs(model.point[1].item()) < 2e-4


def test_monitor_requires_compute_loss() -> None:
    class NoLoss(pl.LightningModule):
        pass

    with pytest.raises(TypeError, match="compute_loss"):
        SaddlePointMonitor().setup(trainer=None, pl_module=NoLoss(), stage="fit")


def test_monitor_validates_arguments() -> None:
    with pytest.raises(ValueError, match="window"):
        SaddlePointMonitor(window=0)
    with pytest.raises(ValueError, match="every_n_steps"):
        SaddlePointMonitor(every_n_steps=0)


def test_monitor_logs_the_verdict_beside_the_gradient_norm() -> None:
    model = _Saddle()
    monitor = SaddlePointMonitor(window=100, num_directions=2, every_n_steps=4, grad_tol=1.0, max_overhead=None)
    trainer = _fit(monitor, model, steps=4)
    (check,) = monitor.history
    x, y = model.point.detach().tolist()
    assert check["gradient_norm"] == pytest.approx((4 * x**2 + 4 * y**2) ** 0.5, rel=1e-4)
    assert check["verdict"] == "saddle" and check["verdict_code"] == VERDICT_CODES["saddle"]
    assert "indefinite" in check["verdict_reason"] and check["converged"]
    assert trainer.callback_metrics["saddle/verdict"].item() == VERDICT_CODES["saddle"]
    assert trainer.callback_metrics["saddle/gradient_norm"].item() == pytest.approx(
        check["gradient_norm"], rel=1e-4
    )
    # With the absolute tolerance alone a gradient of 2e-3 is not small: not a critical point.
    strict = SaddlePointMonitor(window=100, num_directions=2, every_n_steps=4, grad_rtol=None, max_overhead=None)
    _fit(strict, _Saddle(), steps=4)
    assert strict.history[0]["verdict"] == "cannot tell" and strict.history[0]["indefinite"]


class _NoisyRegression(pl.LightningModule):
    """A linear model behind dropout, so training draws from the global generator."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Dropout(0.3), nn.Linear(6, 1))
        self.data = [{"x": torch.randn(4, 6), "y": torch.randn(4, 1)} for _ in range(12)]

    def compute_loss(self, batch: dict) -> torch.Tensor:
        return nn.functional.mse_loss(self.net(batch["x"]), batch["y"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.compute_loss(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=None)


def test_monitor_leaves_the_training_figures_unchanged() -> None:
    def train(callbacks: list[pl.Callback]) -> list[torch.Tensor]:
        model = _NoisyRegression()
        torch.manual_seed(1)
        pl.Trainer(
            max_steps=12, callbacks=callbacks, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
        ).fit(model)
        return [p.detach().clone() for p in model.parameters()]

    monitor = SaddlePointMonitor(window=100, num_directions=3, every_n_steps=3, max_overhead=None)
    with_monitor = train([monitor])
    assert len(monitor.history) == 4
    assert all(torch.equal(a, b) for a, b in zip(train([]), with_monitor, strict=True))


def test_a_gradient_small_in_the_losss_own_units_makes_the_point_critical() -> None:
    z = _at(0.01, 0.0)

    def loss_fn() -> torch.Tensor:
        return 1.0 + 0.5 * (z[0] ** 2 - z[1] ** 2)

    # Gradient 0.01 > grad_tol 1e-3, but a gradient step can gain only 0.01² / 2 = 5e-5,
    # 5e-5 of the loss: critical for grad_rtol 1e-3, not for 1e-5 or without it.
    assert diagnose_critical_point(loss_fn, [z], grad_rtol=1e-3).verdict == "saddle"
    for grad_rtol in (1e-5, None):
        diagnosis = diagnose_critical_point(loss_fn, [z], grad_rtol=grad_rtol)
        assert diagnosis.verdict == "cannot tell" and "not a critical point" in diagnosis.reason
    assert diagnose_critical_point(loss_fn, [z]).loss == pytest.approx(1.00005)


class _L1Regression(pl.LightningModule):
    """A linear model trained with the L1 loss, whose Hessian is zero: only the smooth
    surrogate has curvature. Its batches are dicts with a per-sample ``id`` list."""

    loss_name = "l1"

    def __init__(self, lr: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(3, 1)
        self.lr = lr
        self.data = [{"x": torch.randn(8, 3), "label": torch.randn(8), "id": [f"{b}-{i}" for i in range(8)]}
                     for b in range(6)]

    def forward(self, batch: dict) -> torch.Tensor:
        return self.net(batch["x"]).squeeze(1)

    def compute_loss(self, batch: dict, loss_fn: Callable | None = None) -> torch.Tensor:
        return (loss_fn or nn.functional.l1_loss)(self(batch), batch["label"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.compute_loss(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=None)


def test_an_l1_task_is_checked_on_the_smooth_surrogate_of_a_fixed_subsample() -> None:
    from mmsent.diagnostics import smooth_l1_surrogate

    model = _L1Regression()
    monitor = SaddlePointMonitor(window=100, num_directions=2, every_n_steps=2, subsample=4, max_overhead=None)
    _fit(monitor, model, steps=6)
    assert len(monitor.history) == 3 and all(c["surrogate"] for c in monitor.history)
    subsample = monitor._check_batch
    assert subsample["id"] == ["1-0", "1-1", "1-2", "1-3"]
    assert torch.equal(subsample["x"], model.data[1]["x"][:4])
    with torch.no_grad():
        expected = smooth_l1_surrogate(model(subsample), subsample["label"], 0.1).item()
    # lr 0: the parameters stay, so every check sees the same loss on the same subsample.
    assert [c["loss"] for c in monitor.history] == pytest.approx([expected] * 3)
    # The L1 loss of a linear model has no curvature; its surrogate has.
    assert monitor.history[0]["lambda_max"] > 1e-3
    plain = SaddlePointMonitor(window=100, num_directions=2, every_n_steps=2, max_overhead=None, smooth_l1_delta=None)
    _fit(plain, _L1Regression(), steps=2)
    assert not plain.history[0]["surrogate"] and plain.history[0]["lambda_max"] == 0.0


def test_the_checks_are_warm_started_from_the_last_eigenvectors() -> None:
    monitor = SaddlePointMonitor(window=100, num_directions=2, every_n_steps=2, max_overhead=None)
    model = _L1Regression(lr=0.05)
    _fit(monitor, model, steps=4)
    params = [p for p in model.parameters() if p.requires_grad]
    start = monitor._warm_start(params)
    assert start is not None and [s.shape for s in start] == [p.shape for p in params]
    cold = SaddlePointMonitor(window=100, num_directions=2, every_n_steps=2, max_overhead=None, warm_start=False)
    _fit(cold, _L1Regression(lr=0.05), steps=4)
    assert cold._warm_start(params) is None
    # Four parameters: both runs exhaust the space and agree, the warm start only saves products.
    assert monitor.history[1]["lambda_max"] == pytest.approx(cold.history[1]["lambda_max"], rel=1e-6)


def test_the_overhead_budget_defers_checks_that_would_exceed_it() -> None:
    import time

    def run(max_overhead: float | None) -> SaddlePointMonitor:
        monitor = SaddlePointMonitor(every_n_steps=1, max_overhead=max_overhead)

        def slow_check(trainer, pl_module, batch, reason):
            monitor._steps_since_check = 0
            time.sleep(0.01)
            monitor.history.append({"step": monitor._steps})

        monitor._check = slow_check
        for step in range(steps):
            time.sleep(0.001)
            monitor.on_train_batch_end(None, None, {"loss": torch.tensor(1.0)}, None, step)
        return monitor

    steps = 400
    bounded = run(0.05)
    spent = sum(c["seconds"] for c in bounded.history)
    # A check starts once 5 % of the training time covers 5 training steps (about step
    # 100 here); each then spends 10 steps' time, so the next waits about 200 more (fewer on
    # a loaded machine, where a step takes longer than its 1 ms sleep).
    assert 1 <= len(bounded.history) <= steps // 40 and bounded.deferred == steps - len(bounded.history)
    assert bounded.history[0]["step"] >= 100
    # A check may overrun what was left (it ignores the deadline here), by at most itself.
    assert spent <= 0.05 * bounded._train_seconds + max(c["seconds"] for c in bounded.history)
    unbounded = run(None)
    assert len(unbounded.history) == steps and unbounded.deferred == 0


def test_curvature_within_the_relative_flat_level_is_not_read_as_negative() -> None:
    eigenvalues = torch.tensor([8.0, 1.0, 0.5, -2e-6], dtype=torch.float64)
    z = torch.zeros(4, dtype=torch.float64, requires_grad=True)

    def loss_fn() -> torch.Tensor:
        return 0.5 * (eigenvalues * z**2).sum()

    # At a critical point whose smallest eigenvalue is float32-rounding-sized.
    assert diagnose_critical_point(loss_fn, [z]).verdict == "saddle"
    flat = diagnose_critical_point(loss_fn, [z], curvature_rtol=1e-5)
    assert flat.verdict == "cannot tell" and "zero curvature" in flat.reason


def test_lanczos_starts_no_product_after_its_deadline() -> None:
    import time

    matrix = torch.diag(torch.linspace(-1.0, 1.0, 50, dtype=torch.float64))
    like = [torch.zeros(50, dtype=torch.float64)]

    def operator(vector):
        return [matrix @ vector[0]]

    late = lanczos(operator, like, iterations=30, rtol=0.0, deadline=time.perf_counter())
    assert late.products == 1
    assert lanczos(operator, like, iterations=30, rtol=0.0).products == 30
