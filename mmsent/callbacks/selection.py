"""Callback that keeps only what a fused stage gains significantly on validation."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import move_data_to_device, rank_zero_info, rank_zero_warn
from torch import nn

from mmsent.models.late_fusion import LateFusionModel
from mmsent.models.weights import omit_rebuilt
from mmsent.selection import as_records, bootstrap_p_value, select_modalities, video_groups
from mmsent.tasks.checkpoint_io import atomic_torch_save
from mmsent.tasks.checkpoints import META_KEY, load_weights

SELECTED_FILE = "selected.ckpt"


class ModalitySelection(pl.Callback):
    """At the end of a fused stage, hands on only what validation can vouch for.

    The best checkpoint is loaded, the validation split is scored with every subset of
    modalities that backward elimination asks for (see :mod:`mmsent.selection`), and
    each modality whose gain is not significant at ``alpha``, or smaller than
    ``min_gain``, is switched off (:meth:`LateFusionModel.switch_off`). With
    ``keep_start_unless_better``, the result must also beat the stage's starting
    weights (the model before its first training step) significantly (at
    ``start_alpha``), or the starting model is handed on: the one-standard-error habit
    of preferring the simpler, earlier model when a small validation split cannot tell
    the two apart. A validation split of few videos gives that test little power; with
    ``start_alpha: 1.0`` the start is only one more candidate checkpoint. The
    modalities of a handed-on start are selected again on its own errors, so one it
    does not use (a ``GatedResidualFusion`` input whose projection is still zero) is
    switched off, not reported as kept.

    With ``no_worse_than_unimodal``, the model handed on must also be no worse on
    validation than the best unimodal stage the fused task records
    (``FusionTask.unimodal``). If it is worse, the task becomes that unimodal model
    when its fusion can pass the modality through (:meth:`FusionTask.fall_back_to_unimodal`);
    otherwise a warning says so. Either way the record says which was handed on.

    The selected model is written to ``selected.ckpt`` beside the best checkpoint
    (which keeps what its epoch trained) and named by :attr:`selected_path`: the
    pipeline evaluates, predicts with and hands on that file. Its evidence goes to the
    checkpoint's metadata (``mmsent.modality_selection``) and to the logger
    (``selection/<modality>/...``, ``selection/start/...``). A modality already switched
    off stays off.

    Args:
        alpha (float): Significance level of the one-sided bootstrap tests.
        min_gain (float): Smallest relative validation MAE gain (gain over the MAE
            without the modality) that keeps a modality; 0.005 is 0.5 %.
        no_worse_than_unimodal (bool): Never hand on a model worse on validation than
            the best unimodal stage.
        samples (int): Bootstrap resamples (of whole videos).
        seed (int): Seed of the resampling.
        keep_start_unless_better (bool): Test the result against the starting weights,
            whose trainable part is kept in this callback's checkpointed state so a
            resumed stage still knows them.
        start_alpha (float | None): Significance level of that test; None uses
            ``alpha``. The trained weights are handed on when their mean validation
            gain over the start is positive and its p-value is below ``start_alpha``,
            so 1.0 drops the significance requirement: the start then competes as one
            more checkpoint, selected on validation MAE like the others.

    Attributes:
        record (dict | None): The last outcome: ``alpha``, ``kept``, ``switched_off``,
            every modality test, and with ``keep_start_unless_better`` the test against
            the start and ``handed_on`` (``"trained"`` or ``"start"``), and with the
            unimodal check ``unimodal`` (the best unimodal stage's ``modality`` and
            ``val_MAE``, the fused model's ``fused_val_MAE`` and ``handed_on``:
            ``"fused"``, ``"unimodal"`` or ``"fused, worse"``).
        selected_path (str | None): After fitting, the checkpoint of the selected
            model; None when the trainer keeps no checkpoint (the selected model is
            then only in memory).
    """

    def __init__(self, alpha: float = 0.05, min_gain: float = 0.005, samples: int = 10000, seed: int = 0,
                 keep_start_unless_better: bool = False, start_alpha: float | None = None,
                 no_worse_than_unimodal: bool = True) -> None:
        super().__init__()
        if not 0 < alpha < 1:
            raise ValueError(f"ModalitySelection: alpha must be in (0, 1), got {alpha}")
        if start_alpha is not None and not 0 < start_alpha <= 1:
            raise ValueError(f"ModalitySelection: start_alpha must be in (0, 1] or null, got {start_alpha}")
        if min_gain < 0:
            raise ValueError(f"ModalitySelection: min_gain must be >= 0, got {min_gain}")
        self.alpha = alpha
        self.start_alpha = alpha if start_alpha is None else start_alpha
        self.min_gain = min_gain
        self.no_worse_than_unimodal = no_worse_than_unimodal
        self.samples = samples
        self.seed = seed
        self.keep_start_unless_better = keep_start_unless_better
        self.start: dict[str, torch.Tensor] | None = None
        self.record: dict | None = None
        self.selected_path: str | None = None

    def state_dict(self) -> dict:
        return {"start": self.start}

    def load_state_dict(self, state_dict: dict) -> None:
        self.start = state_dict.get("start")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Keeps the starting weights, unless a resumed stage brought them back.

        Args:
            trainer (pl.Trainer): The running trainer.
            pl_module (pl.LightningModule): The model about to be trained.
        """
        if self.keep_start_unless_better and self.start is None:
            # What training can change; frozen weights (a word-piece table) would only
            # double every checkpoint's size.
            changing = {n for n, p in pl_module.named_parameters() if p.requires_grad}
            changing |= {n for n, _ in pl_module.named_buffers()}
            self.start = _cpu_copy({k: v for k, v in pl_module.state_dict().items() if k in changing})

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Selects on the best checkpoint's weights and writes the outcome to ``selected.ckpt``.

        Args:
            trainer (pl.Trainer): The trainer that just finished fitting.
            pl_module (pl.LightningModule): A task whose ``model`` is a
                :class:`LateFusionModel`.

        Raises:
            TypeError: If the task holds no fused model.
        """
        model = getattr(pl_module, "model", None)
        if not isinstance(model, LateFusionModel):
            raise TypeError(f"ModalitySelection needs a fused model (FusionTask), got {type(pl_module).__name__}")
        self.selected_path = None
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best:
            checkpoint = load_weights(pl_module, best, "ModalitySelection: the best checkpoint")
        candidates = model.active_modalities
        errors, ids = validation_errors(trainer, pl_module)
        groups = video_groups(ids)
        self.record = {"alpha": self.alpha, "min_gain": self.min_gain}
        if self.keep_start_unless_better:
            self.record["start_alpha"] = self.start_alpha
        kept = self._select(trainer, model, candidates, errors, groups)
        if self.keep_start_unless_better and self.start is not None:
            self._against_start(trainer, pl_module, kept, errors(frozenset(kept)), groups)
        if self.no_worse_than_unimodal and getattr(pl_module, "unimodal", {}).get("scores"):
            self._against_unimodal(trainer, pl_module)
        if trainer.world_size > 1:
            self._adopt_rank_zero(trainer, pl_module)
        if best:
            selected = Path(best).with_name(SELECTED_FILE)
            if trainer.is_global_zero:
                checkpoint["state_dict"] = _cpu_copy(pl_module.state_dict())
                meta = checkpoint.setdefault(META_KEY, {})
                meta["rebuilt"] = omit_rebuilt(pl_module, checkpoint["state_dict"])
                meta["modality_selection"] = self.record
                atomic_torch_save(checkpoint, selected)
            trainer.strategy.barrier()
            self.selected_path = str(selected)

    def _adopt_rank_zero(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Makes every process hand on rank 0's outcome: its record and its selected
        weights (the ``active`` flags included), whatever another device's floating
        point would have decided on a borderline test.

        Frozen weights rebuilt from the config (a pretrained table) are the same in
        every process and are not sent.
        """
        state = _cpu_copy(pl_module.state_dict())
        rebuilt = omit_rebuilt(pl_module, state)
        self.record, state = trainer.strategy.broadcast((self.record, state), src=0)
        own = pl_module.state_dict()
        # Strict: only the rebuilt weights, which every process holds alike, come from this one.
        pl_module.load_state_dict({**{key: own[key] for key in rebuilt}, **state})

    def _select(self, trainer: pl.Trainer, model: LateFusionModel, candidates: list[str], errors,
                groups: list[str]) -> list[str]:
        kept, tests = select_modalities(candidates, errors, groups, self.alpha, self.samples, self.seed,
                                        self.min_gain)
        for modality in candidates:
            if modality not in kept:
                model.switch_off(modality)
        self.record.update(kept=kept, switched_off=[m for m in candidates if m not in kept],
                           tests=as_records(tests))
        self._report_modalities(trainer, tests)
        return kept

    def _against_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, kept: list[str],
                       trained_errors: torch.Tensor, groups: list[str]) -> None:
        """Leaves the starting weights in ``pl_module`` unless the trained ones are significantly better.

        Both sides use the selected modalities: the selection decides what is fused,
        this test only which weights fuse it.
        """
        trained = _cpu_copy(pl_module.state_dict())
        pl_module.load_state_dict({**trained, **self.start})
        for modality in pl_module.model.active_modalities:
            if modality not in kept:
                pl_module.model.switch_off(modality)
        start_errors, _ = validation_errors(trainer, pl_module)
        gain = start_errors(frozenset(kept)) - trained_errors
        p_value = bootstrap_p_value(gain, groups, self.samples, self.seed)
        better = float(gain.mean()) > 0 and p_value < self.start_alpha
        if better:
            pl_module.load_state_dict(trained)
        else:
            earlier = {key: self.record[key] for key in ("switched_off", "tests")}
            self._select(trainer, pl_module.model, kept, start_errors, groups)
            for key, values in earlier.items():
                self.record[key] = values + self.record[key]
        self.record.update(start_gain=float(gain.mean()), start_p_value=p_value,
                           handed_on="trained" if better else "start")
        rank_zero_info(f"ModalitySelection: {'trained' if better else 'starting'} model handed on "
                       f"(validation MAE gain over the start {float(gain.mean()):+.4f}, p = {p_value:.3f}, "
                       f"start_alpha {self.start_alpha:g})")
        _log(trainer, {"selection/start/gain_MAE": float(gain.mean()), "selection/start/p_value": p_value,
                       "selection/start/kept": float(not better)})

    def _against_unimodal(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        scores = pl_module.unimodal["scores"]
        best = min(scores, key=scores.get)
        errors, _ = validation_errors(trainer, pl_module)
        fused = float(errors(frozenset(pl_module.model.active_modalities)).mean())
        handed_on = "fused"
        # A tolerance for float32 sums: a fused model that starts as the unimodal one ties it.
        if fused > scores[best] + 1e-5:
            handed_on = "unimodal" if pl_module.fall_back_to_unimodal(best) else "fused, worse"
        if handed_on == "unimodal":
            self.record.update(kept=[best], switched_off=[m for m in pl_module.model.encoders if m != best])
        self.record["unimodal"] = {"modality": best, "val_MAE": scores[best], "fused_val_MAE": fused,
                                   "handed_on": handed_on}
        message = (f"ModalitySelection: fused validation MAE {fused:.4f}, best unimodal stage ({best}) "
                   f"{scores[best]:.4f}: ")
        if handed_on == "fused, worse":
            rank_zero_warn(message + "the fused model is worse, and its fusion cannot pass the "
                           f"{best} embedding through (use GatedResidualFusion with head_from: best)")
        else:
            rank_zero_info(message + f"{handed_on} model handed on")
        _log(trainer, {"selection/unimodal/fused_val_MAE": fused, "selection/unimodal/val_MAE": scores[best],
                       "selection/unimodal/handed_on": float(handed_on == "unimodal")})

    def _report_modalities(self, trainer: pl.Trainer, tests) -> None:
        final = {t.modality: t for t in tests}  # the last test of each modality
        metrics = {}
        for modality, test in final.items():
            kept = modality in self.record["kept"]
            metrics.update({f"selection/{modality}/gain_MAE": test.gain, f"selection/{modality}/p_value": test.p_value,
                            f"selection/{modality}/kept": float(kept)})
            rank_zero_info(f"ModalitySelection: {modality} {'kept' if kept else 'switched off'} "
                           f"(validation MAE gain {test.gain:+.4f} = {100 * test.relative_gain:+.2f} %, "
                           f"p = {test.p_value:.3f} over {test.groups} videos, alpha {self.alpha}, "
                           f"min_gain {100 * self.min_gain:g} %)")
        _log(trainer, metrics)


def validation_errors(trainer: pl.Trainer, pl_module: pl.LightningModule):
    """Embeds the validation split once, for scoring any set of modalities.

    Args:
        trainer (pl.Trainer): Gives the validation dataloader.
        pl_module (pl.LightningModule): A task whose ``model`` is a :class:`LateFusionModel`.

    Returns:
        tuple: A function from a set of modalities to the per-clip absolute errors of
        the model using exactly those (results cached), and the clip ids.
    """
    data = trainer.datamodule
    if hasattr(data, "split_dataloader"):
        # The whole split in every process, so that all of them decide alike.
        loader = data.split_dataloader("valid")
    else:
        loader = data.val_dataloader() if data else trainer.val_dataloaders
    model: LateFusionModel = pl_module.model
    embeddings, present, labels, ids = [], [], [], []
    with _evaluating(pl_module):
        for batch in loader:
            batch = move_data_to_device(batch, pl_module.device)
            embeddings.append(model.encode(batch))
            present.append({m: batch[f"{m}_present"].bool() for m in model.encoders})
            labels.append(batch["label"])
            ids.extend(batch["id"])
    embeddings = {m: torch.cat([e[m] for e in embeddings]) for m in model.encoders}
    present = {m: torch.cat([p[m] for p in present]) for m in model.encoders}
    labels = torch.cat(labels)
    cache: dict[frozenset[str], torch.Tensor] = {}

    def errors(used: frozenset[str]) -> torch.Tensor:
        # Scored with the fusion weights the model holds when first asked for this set.
        if used not in cache:
            with _evaluating(pl_module):
                scores = model.predict_from_embeddings(embeddings, {m: present[m] & (m in used) for m in embeddings})
            cache[used] = (scores - labels).abs().cpu()
        return cache[used]

    return errors, ids


@contextmanager
def _evaluating(module: nn.Module):
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu().clone() for key, value in state.items()}


def _log(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    if trainer.logger is not None and metrics:
        trainer.logger.log_metrics(metrics, step=trainer.global_step)

