"""The base LightningModule: loss, metrics, logging, optimizers, checkpoint metadata."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import OptimizerCallable
from torch import nn
from torchmetrics.aggregation import CatMetric, MeanMetric

from mmsent import optim
from mmsent.data.schema import MODALITIES
from mmsent.errors import NonFiniteError, check_choice
from mmsent.metrics import baseline_metrics, sentiment_metrics
from mmsent.models.weights import add_recorded_sha1
from mmsent.regularization import Regularizer
from mmsent.tasks.checkpoints import META_KEY

Loss = Literal["l1", "mse", "huber"]
LOSSES = {"l1": nn.functional.l1_loss, "mse": nn.functional.mse_loss,
          "huber": nn.functional.smooth_l1_loss}
STAGES = ("val", "test")


class BaseTask(pl.LightningModule):
    """Shared training logic for every sentiment regression task.

    Args:
        input_dims (dict[str, int] | None): Per modality, the input size of its
            encoder; linked from the DataModule by the CLI.
        label_statistics (dict[str, float] | None): The training labels' median, mean
            and majority classes, linked from the DataModule: heads start at the median
            (the mean under ``mse``) and each evaluation also logs the trivial
            predictors' metrics (``<split>/baseline/<metric>``). None: heads start at 0.
        loss (Loss): ``"l1"`` (the field's default), ``"mse"`` or ``"huber"``.
        optimizer (OptimizerCallable): Builds the optimizer from parameter groups.
        param_groups (dict[str, ParamGroup] | None): Per part (see :meth:`parameter_parts`),
            its own ``lr``, ``weight_decay``, ``momentum``, ``schedule``...
        regularizer (Regularizer | None): A weight penalty added to the training loss.
    """

    def __init__(self, input_dims: dict[str, int] | None = None,
                 label_statistics: dict[str, float] | None = None, loss: Loss = "l1",
                 optimizer: OptimizerCallable = torch.optim.Adam,
                 param_groups: dict[str, optim.ParamGroup] | None = None,
                 regularizer: Regularizer | None = None) -> None:
        super().__init__()
        check_choice("model.loss", loss, Loss)
        self.input_dims = dict(input_dims or {})
        self.label_statistics = dict(label_statistics) if label_statistics else None
        self.loss_name = loss
        self.loss_fn = LOSSES[loss]
        self.optimizer_factory = optimizer
        self.group_settings = optim.plain_groups(param_groups)
        self.regularizer = regularizer
        self.metrics = nn.ModuleDict({stage: sentiment_metrics(f"{stage}/") for stage in STAGES})
        # Gathered over the processes like the metrics, so that the loss, the best
        # achievable error and the baselines are those of the whole split too; the last
        # two depend on the data alone, so each split's are computed once per fit,
        # validate or test. The loss is each batch's mean weighted by its size, which
        # nan_strategy="disable" would ignore; imputing nan with nan keeps a nan loss nan.
        self.losses = nn.ModuleDict({stage: MeanMetric(nan_strategy=math.nan) for stage in STAGES})
        self.best_errors = nn.ModuleDict({stage: CatMetric(nan_strategy="disable") for stage in STAGES})
        self.targets = nn.ModuleDict({stage: CatMetric(nan_strategy="disable") for stage in STAGES})
        self.split_statistics: dict[str, dict[str, float]] = {}

    @property
    def label_center(self) -> float | None:
        """float | None: Where a new head starts: the labels' mean under ``mse``, else median."""
        if self.label_statistics is None:
            return None
        return self.label_statistics["mean" if self.loss_name == "mse" else "median"]

    def start_head(self, head: nn.Module) -> None:
        """Starts a new head at :attr:`label_center` (nothing without label statistics).

        Args:
            head (nn.Module): A :class:`mmsent.models.fusion.RegressionHead`.
        """
        if self.label_center is not None:
            head.start_at(self.label_center)

    def save_plain_hyperparameters(self, ignore: tuple[str, ...] = ()) -> None:
        """Saves the plain-data init arguments, so checkpoints load with ``weights_only=True``.

        Args:
            ignore (tuple[str, ...]): Further argument names to leave out.
        """
        self.save_hyperparameters(ignore=["optimizer", "regularizer", *ignore])
        if self.group_settings is not None:
            self.hparams["param_groups"] = self.group_settings

    def parameter_parts(self) -> dict[str, nn.Module]:
        """dict[str, nn.Module]: Named parts that get one optimizer group each."""
        return {"model": self}

    def param_groups(self) -> list[dict]:
        """The optimizer's parameter groups, one per part, with their settings.

        Subclasses also call it at the end of ``__init__``, so a misspelt group or an
        unfit regularizer matrix fails before any data is prepared.

        Returns:
            list[dict]: Groups for the optimizer callable.
        """
        if self.regularizer is not None:
            self.regularizer.check_fits(self)
        return optim.build_param_groups(self.parameter_parts(), self.group_settings, optional=MODALITIES)

    def compute_loss(self, batch: dict, loss_fn: Callable | None = None) -> torch.Tensor:
        """The training objective on one batch (used by diagnostics too).

        Args:
            batch (dict): A collated batch.
            loss_fn (Callable | None): ``(prediction, label) -> loss`` in place of the
                task's own (a diagnostic's smooth surrogate of it).

        Returns:
            torch.Tensor: The scalar loss, regularization included.
        """
        loss = (loss_fn or self.loss_fn)(self(batch), batch["label"])
        if self.regularizer is not None:
            loss = loss + self.regularizer(self)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        preds = self(batch)
        loss = self.loss_fn(preds, batch["label"])
        written = self.loggers_write_this_step()
        if written:
            self.log("train/loss", loss, prog_bar=True, batch_size=len(preds))
        if self.regularizer is not None:
            penalty = self.regularizer(self)
            if written:
                self.log("train/penalty", penalty, batch_size=len(preds))
            loss = loss + penalty
        return loss

    def on_before_backward(self, loss: torch.Tensor) -> None:
        """Stops the fit before a non-finite loss reaches the weights or a checkpoint.

        Called before every backward pass, with automatic and manual optimization alike.

        Args:
            loss (torch.Tensor): The loss about to be backpropagated.

        Raises:
            NonFiniteError: Naming the epoch, the step and, where it can tell, the part
                at fault (non-finite parameter groups, the penalty, or the loss itself).
        """
        if not bool(torch.isfinite(loss.detach()).all()):
            raise NonFiniteError(self._non_finite_report(loss))

    def _non_finite_report(self, loss: torch.Tensor) -> str:
        steps = self.global_step
        where = (f"training stopped in epoch {self.current_epoch} after {steps} optimizer "
                 f"step{'' if steps == 1 else 's'}: the loss is {loss.detach().float().flatten()[0].item()}")
        groups = [group for optimizer in (self.attached_trainer.optimizers if self.attached_trainer else [])
                  for group in optimizer.param_groups]
        broken = [group for group in groups if any(not bool(torch.isfinite(p).all()) for p in group["params"])]
        if broken:
            names = ", ".join(f"{group.get('name', 'model')!r} (lr {group.get('lr')})" for group in broken)
            return (f"{where} because the weights of parameter group(s) {names} are no longer finite: "
                    f"an earlier step diverged; lower the learning rate")
        if self.regularizer is not None:
            penalty = self.regularizer(self).detach()
            if not bool(torch.isfinite(penalty).all()):
                return f"{where} because the penalty of model.regularizer is {penalty.float().item()}"
        largest = max(((p.detach().abs().max().item(), group.get("name", "model"))
                       for group in groups for p in group["params"] if p.numel()), default=None)
        weights = (f"the weights are finite, the largest {largest[0]:.3g} in parameter group {largest[1]!r}"
                   if largest else "the weights are finite")
        return f"{where}; {weights}: lower the learning rate, or look at this batch's inputs and labels"

    @property
    def attached_trainer(self) -> pl.Trainer | None:
        """pl.Trainer | None: The trainer running this task; None outside one."""
        try:
            return self.trainer
        except RuntimeError:
            return None

    def loggers_write_this_step(self) -> bool:
        """Whether the loggers write this training step's values.

        Each ``self.log`` call costs about half a millisecond, a sixth of a small model's
        CPU step, so steps between ``trainer.log_every_n_steps`` log nothing.

        Returns:
            bool: True on the steps Lightning writes, and outside a fit.
        """
        trainer = self.attached_trainer
        if trainer is None or trainer.fast_dev_run or trainer.log_every_n_steps < 1:
            return True
        return (self.global_step + 1) % trainer.log_every_n_steps == 0

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {"id": batch["id"], "transcript": batch["transcript"], "label": batch["label"],
                **self.predictions(batch)}

    def predictions(self, batch: dict) -> dict[str, torch.Tensor]:
        """dict[str, torch.Tensor]: What ``predict`` records per sample besides its id,
        transcript and label: ``prediction``, the model's score."""
        return {"prediction": self(batch).detach()}

    def _evaluate(self, batch: dict, stage: str, preds: torch.Tensor | None = None) -> torch.Tensor:
        preds = self(batch) if preds is None else preds
        self.losses[stage].update(self.loss_fn(preds, batch["label"]).detach(), len(preds))
        self.metrics[stage].update(preds, batch["label"])
        # Lightning computes, gathers and resets them at the end of the epoch.
        metrics = dict(self.metrics[stage].items(copy_state=False))
        shown = {name: metrics.pop(name) for name in (f"{stage}/Corr", f"{stage}/MAE")}
        self.log_dict(metrics)
        self.log_dict(shown, prog_bar=True)
        if stage not in self.split_statistics:
            self.best_errors[stage].update((batch["label"] - batch["clean_label"]).abs())
            self.targets[stage].update(batch["label"].detach())
        return preds

    def setup(self, stage: str) -> None:
        self.split_statistics = {}

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def _log_epoch_metrics(self, stage: str) -> None:
        """Logs the split's loss, and its best achievable error and baselines, computed
        on the first epoch that sees all of it (not Lightning's sanity check of a few batches)."""
        if self.losses[stage].update_called:
            self.log_gathered(f"{stage}/loss", self.losses[stage].compute())
            self.losses[stage].reset()
        statistics = self.split_statistics.get(stage, {})
        if stage not in self.split_statistics and self.targets[stage].update_called:
            best = self.best_errors[stage].compute().mean().item()
            if math.isfinite(best):
                statistics[f"{stage}/best_achievable_MAE"] = best
            if self.label_statistics is not None:
                baselines = baseline_metrics(self.label_statistics, self.targets[stage].compute())
                statistics.update({f"{stage}/baseline/{name}": value for name, value in baselines.items()})
            self.best_errors[stage].reset()
            self.targets[stage].reset()
            if not self.trainer.sanity_checking:
                self.split_statistics[stage] = statistics
        for name, value in statistics.items():
            self.log_gathered(name, value)

    def log_gathered(self, name: str, value: float | torch.Tensor, prog_bar: bool = False) -> None:
        """Logs an epoch value computed from states gathered over every process.

        Every process holds the same value, so the cross-process reduction is a
        maximum, which keeps it exact (a mean of equal floats may not be), and
        Lightning does not warn about an unsynchronised epoch value.

        Args:
            name (str): The metric's name.
            value (float | torch.Tensor): The value, the same in every process.
            prog_bar (bool): Show it in the progress bar.
        """
        self.log(name, value, prog_bar=prog_bar, sync_dist=True, reduce_fx="max")

    def checkpoint_meta(self) -> dict:
        """dict: What a checkpoint records about the task (under ``META_KEY``), for the
        stages that load it to check it against their configuration."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[META_KEY] = self.checkpoint_meta()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        add_recorded_sha1(checkpoint["state_dict"], checkpoint.get(META_KEY, {}).pop("rebuilt", {}), "checkpoint")

    def configure_optimizers(self):
        groups = self.param_groups()
        if not groups:
            raise ValueError("no trainable parameter: every part of the model is frozen")
        optimizer = self.optimizer_factory(groups)
        if not optim.has_schedules(self.group_settings):
            return optimizer
        steps = self._steps_per_epoch() if optim.has_step_warmup(self.group_settings) else None
        epochs = getattr(self._trainer, "max_epochs", None)
        epochs = epochs if (epochs or 0) > 0 else None  # -1 or None: unbounded
        scheduler = optim.per_group_scheduler(optimizer, self.group_settings, steps, epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step" if steps else "epoch"}}

    def _steps_per_epoch(self) -> int:
        self.trainer.estimated_stepping_batches  # noqa: B018 (sets up the training data)
        batches = self.trainer.num_training_batches
        if not math.isfinite(batches):
            raise ValueError("param_groups: schedule warmup_steps needs a training set of known length")
        return max(1, math.ceil(batches / self.trainer.accumulate_grad_batches))

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # A proximal L1 step completes the gradient step it follows (regularizer.l1_proximal).
        if self.regularizer is not None:
            self.regularizer.proximal_step(self, optimizer)
