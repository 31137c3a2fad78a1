"""Lightning's ModelCheckpoint with a ``last.ckpt`` that really is the last epoch and
no best checkpoint whose monitored value is not a number."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint


class LastEpochCheckpoint(ModelCheckpoint):
    """A :class:`~pytorch_lightning.callbacks.ModelCheckpoint` that writes ``last.ckpt``
    for every epoch it judges, not only when it keeps a new best checkpoint.

    Lightning 2.6 writes ``last.ckpt`` only with a new top-k one, so with ``save_top_k: 1``
    it would hold the best epoch and a resumed run would train the epochs since again. The
    state is stored under ModelCheckpoint's key, so either class resumes the other's runs.
    An epoch whose monitored value is not finite is never kept as a best one.
    """

    passed_over_at_step: int | None = None

    def check_monitor_top_k(self, trainer: pl.Trainer, current: torch.Tensor | None = None) -> bool:
        finite = current is None or bool(torch.isfinite(torch.as_tensor(current)).all())
        kept = finite and super().check_monitor_top_k(trainer, current)
        self.passed_over_at_step = None if kept else trainer.global_step
        return kept

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_if_passed_over(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._save_last_if_passed_over(trainer)

    def _save_last_if_passed_over(self, trainer: pl.Trainer) -> None:
        """Writes ``last.ckpt`` when this step's epoch was judged and not kept."""
        if self.save_last and self.passed_over_at_step == trainer.global_step:
            self.passed_over_at_step = None
            metrics = {**trainer.callback_metrics, "epoch": trainer.current_epoch, "step": trainer.global_step}
            # Set before saving, as Lightning does: the path is part of the saved state.
            self.last_model_path = self.format_checkpoint_name(metrics, self.CHECKPOINT_NAME_LAST)
            trainer.save_checkpoint(self.last_model_path, self.save_weights_only)
