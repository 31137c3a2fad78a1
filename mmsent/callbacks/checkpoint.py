"""Lightning's ModelCheckpoint with a ``last.ckpt`` that really is the last epoch and
no best checkpoint whose monitored value is not a number."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint


class LastEpochCheckpoint(ModelCheckpoint):
    """A :class:`~pytorch_lightning.callbacks.ModelCheckpoint` that writes ``last.ckpt``
    after every validation, not only when a new best checkpoint is saved.

    Lightning 2.6 saves the last checkpoint only in a step that also saved a top-k one,
    so with ``save_top_k: 1`` its ``last.ckpt`` is the best epoch: a run stopped after
    a few epochs without improvement resumed from the best epoch and trained those
    epochs again, and ``--ckpt_path=last.ckpt`` evaluated the best weights, not the
    last. The callback state is stored under ModelCheckpoint's key, so checkpoints
    written with either class resume with either.

    An epoch whose monitored value is NaN or infinite is never kept as a best one:
    Lightning counts a NaN as the worst score, yet keeps it while it has fewer than
    ``save_top_k`` checkpoints, so the first epoch of a diverged fit was the best.
    """

    def check_monitor_top_k(self, trainer: pl.Trainer, current: torch.Tensor | None = None) -> bool:
        if current is not None and not bool(torch.isfinite(torch.as_tensor(current)).all()):
            return False
        return super().check_monitor_top_k(trainer, current)

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def _save_last_if_missed(self, trainer: pl.Trainer) -> None:
        """Writes ``last.ckpt`` when the step saved nothing and saving is not skipped."""
        if (self.save_last and not self._should_skip_saving_checkpoint(trainer)
                and self._last_global_step_saved != trainer.global_step):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
