"""The step after a fused stage's fit: which model and modalities it hands on."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import move_data_to_device, rank_zero_info, rank_zero_warn
from torch import nn

from mmsent.models.late_fusion import LateFusionModel
from mmsent.selection.evidence import bootstrap_p_value, select_modalities, video_groups
from mmsent.tasks.checkpoint_io import META_KEY, atomic_torch_save
from mmsent.tasks.checkpoints import load_encoder, load_head, load_weights, reading_once

SELECTED_FILE = "selected.ckpt"


@dataclass
class Selection:
    """The ``selection:`` section of a fused stage's config: what :func:`select` does after the fit.

    The test against the start is the one-standard-error habit: prefer the simpler, earlier
    model when a small validation split cannot tell the two apart.

    Attributes:
        alpha: Significance level of the one-sided bootstrap tests.
        min_gain: Smallest relative validation MAE gain that keeps a modality; 0.005 is 0.5 %.
        samples: Bootstrap resamples (of whole videos).
        seed: Seed of the resampling.
        keep_start_unless_better: Hand on the starting weights unless beaten significantly.
        start_alpha: Significance level of that test; None uses ``alpha``; 1.0 makes the start
            one more checkpoint, selected on validation MAE like the others.
        no_worse_than_unimodal: Never hand on a model worse on validation than the best
            unimodal stage, when its figures are known (a pipeline reads them from its manifest).

    Raises:
        ValueError: If ``alpha`` is not in (0, 1), ``start_alpha`` not in (0, 1] or ``min_gain``
            negative.
    """

    alpha: float = 0.05
    min_gain: float = 0.005
    samples: int = 10000
    seed: int = 0
    keep_start_unless_better: bool = False
    start_alpha: float | None = None
    no_worse_than_unimodal: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"selection.alpha must be in (0, 1), got {self.alpha}")
        if self.start_alpha is not None and not 0 < self.start_alpha <= 1:
            raise ValueError(f"selection.start_alpha must be in (0, 1] or null, got {self.start_alpha}")
        if self.min_gain < 0:
            raise ValueError(f"selection.min_gain must be >= 0, got {self.min_gain}")


def starting_weights(task: nn.Module, settings: Selection | None) -> dict[str, torch.Tensor] | None:
    """The weights :func:`select` tests the trained ones against, taken before the fit.

    A resumed fit starts from a task built anew from the same config and seed, so it takes the
    same start.

    Args:
        task: The task about to be fitted.
        settings: The stage's ``selection``.

    Returns:
        What training can change (not frozen weights), on the CPU; None unless
            ``keep_start_unless_better``.
    """
    if settings is None or not settings.keep_start_unless_better:
        return None
    changing = {n for n, p in task.named_parameters() if p.requires_grad}
    changing |= {n for n, _ in task.named_buffers()}
    return _cpu_copy({k: v for k, v in task.state_dict().items() if k in changing})


def select(trainer: pl.Trainer, task: pl.LightningModule, settings: Selection | None,
           start: dict[str, torch.Tensor] | None = None, unimodal: dict[str, dict] | None = None
           ) -> tuple[dict | None, str | None]:
    """After a fused stage's fit, hands on only what validation can vouch for.

    Modalities that do not earn their place are switched off; then, as ``settings`` ask, the
    result is tested against ``start`` and the best unimodal stage. The main process decides
    and writes ``selected.ckpt`` beside the best checkpoint; every process then reads it.

    Args:
        trainer: The trainer that fitted ``task``.
        task: A task whose ``model`` is a :class:`LateFusionModel`.
        settings: What to test; None selects nothing.
        start: From :func:`starting_weights`.
        unimodal: Per modality, its unimodal stage's ``val_MAE`` and ``checkpoint``.

    Returns:
        The record (None in the other processes or without ``settings``): ``alpha``, ``kept``,
            ``switched_off``, the tests and, as tested, ``handed_on`` and ``unimodal``. Then
            ``selected.ckpt``, or None when the trainer keeps no checkpoint (the selection is then
            in ``task`` only).

    Raises:
        TypeError: If the task holds no fused model.
    """
    if settings is None:
        return None, None
    if not isinstance(getattr(task, "model", None), LateFusionModel):
        raise TypeError(f"selection needs a fused model (FusionTask), got {type(task).__name__}")
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    selected = str(Path(best).with_name(SELECTED_FILE)) if best else None
    record = None
    if trainer.is_global_zero:
        checkpoint = load_weights(task, best, "selection: the best checkpoint") if best else None
        record = _decide(trainer, task, settings, start, unimodal or {})
        if checkpoint is not None:
            checkpoint["state_dict"] = _cpu_copy(task.state_dict())
            checkpoint.setdefault(META_KEY, {})["modality_selection"] = record
            atomic_torch_save(checkpoint, selected)
    trainer.strategy.barrier("mmsent.selection: selected.ckpt written")
    return record, selected


def _decide(trainer: pl.Trainer, task: pl.LightningModule, settings: Selection,
            start: dict[str, torch.Tensor] | None, unimodal: dict[str, dict]) -> dict:
    """Leaves the selected model in ``task`` and returns the record of :func:`select`."""
    model: LateFusionModel = task.model
    candidates = model.active_modalities
    errors, ids = validation_errors(trainer, task)
    groups = video_groups(ids)
    record = {"alpha": settings.alpha, "min_gain": settings.min_gain}
    start_alpha = settings.alpha if settings.start_alpha is None else settings.start_alpha
    if settings.keep_start_unless_better:
        record["start_alpha"] = start_alpha
    kept = _switch_off_weak(trainer, settings, record, model, candidates, errors, groups)
    if settings.keep_start_unless_better and start is not None:
        trained_errors = errors(frozenset(kept))
        trained = _cpu_copy(task.state_dict())
        task.load_state_dict({**trained, **start})
        for modality in model.active_modalities:
            if modality not in kept:
                model.switch_off(modality)
        start_errors, _ = validation_errors(trainer, task)
        # Both sides use the selected modalities: this test only chooses which weights fuse them.
        gain = start_errors(frozenset(kept)) - trained_errors
        p_value = bootstrap_p_value(gain, groups, settings.samples, settings.seed)
        better = float(gain.mean()) > 0 and p_value < start_alpha
        if better:
            task.load_state_dict(trained)
        else:
            earlier = {key: record[key] for key in ("switched_off", "tests")}
            _switch_off_weak(trainer, settings, record, model, kept, start_errors, groups)
            for key, values in earlier.items():
                record[key] = values + record[key]
        record.update(start_gain=float(gain.mean()), start_p_value=p_value,
                      handed_on="trained" if better else "start")
        rank_zero_info(f"selection: {'trained' if better else 'starting'} model handed on "
                       f"(validation MAE gain over the start {float(gain.mean()):+.4f}, p = {p_value:.3f}, "
                       f"start_alpha {start_alpha:g})")
        _log(trainer, {"selection/start/gain_MAE": float(gain.mean()), "selection/start/p_value": p_value,
                       "selection/start/kept": float(not better)})
    if settings.no_worse_than_unimodal and unimodal:
        _against_unimodal(trainer, task, record, unimodal)
    return record


def _switch_off_weak(trainer: pl.Trainer, settings: Selection, record: dict, model: LateFusionModel,
                     candidates: list[str], errors, groups: list[str]) -> list[str]:
    kept, tests = select_modalities(candidates, errors, groups, settings.alpha, settings.samples, settings.seed,
                                    settings.min_gain)
    for modality in candidates:
        if modality not in kept:
            model.switch_off(modality)
    record.update(kept=kept, switched_off=[m for m in candidates if m not in kept],
                  tests=[{**asdict(t), "others": list(t.others)} for t in tests])  # plain data, for JSON
    metrics = {}
    for modality, test in {t.modality: t for t in tests}.items():  # the last test of each modality
        on = modality in kept
        metrics.update({f"selection/{modality}/gain_MAE": test.gain, f"selection/{modality}/p_value": test.p_value,
                        f"selection/{modality}/kept": float(on)})
        rank_zero_info(f"selection: {modality} {'kept' if on else 'switched off'} "
                       f"(validation MAE gain {test.gain:+.4f} = {100 * test.relative_gain:+.2f} %, "
                       f"p = {test.p_value:.3f} over {test.groups} videos, alpha {settings.alpha}, "
                       f"min_gain {100 * settings.min_gain:g} %)")
    _log(trainer, metrics)
    return kept


def _against_unimodal(trainer: pl.Trainer, task: pl.LightningModule, record: dict,
                      unimodal: dict[str, dict]) -> None:
    model: LateFusionModel = task.model
    scores = {m: figures["val_MAE"] for m, figures in unimodal.items()}
    best = min(scores, key=scores.get)
    errors, _ = validation_errors(trainer, task)
    fused = float(errors(frozenset(model.active_modalities)).mean())
    handed_on = "fused"
    # A tolerance for float32 sums: a fused model that starts as the unimodal one ties it.
    if fused > scores[best] + 1e-5:
        handed_on = "unimodal" if become_unimodal(model, best, unimodal[best].get("checkpoint")) else "fused, worse"
    if handed_on == "unimodal":
        record.update(kept=[best], switched_off=[m for m in model.encoders if m != best])
    record["unimodal"] = {"modality": best, "val_MAE": scores[best], "fused_val_MAE": fused, "handed_on": handed_on}
    message = f"selection: fused validation MAE {fused:.4f}, best unimodal stage ({best}) {scores[best]:.4f}: "
    if handed_on == "fused, worse":
        rank_zero_warn(message + "the fused model is worse, and its fusion cannot pass the "
                       f"{best} embedding through (use GatedResidualFusion with head_from: best)")
    else:
        rank_zero_info(message + f"{handed_on} model handed on")
    _log(trainer, {"selection/unimodal/fused_val_MAE": fused, "selection/unimodal/val_MAE": scores[best],
                   "selection/unimodal/handed_on": float(handed_on == "unimodal")})


def become_unimodal(model: LateFusionModel, modality: str, checkpoint: str | None) -> bool:
    """Turns a fused model into the unimodal model of ``modality``, when its fusion allows.

    The fusion must pass that modality's embedding through unchanged once the others are off
    (a ``GatedResidualFusion`` built on it); encoder and head come from the stage's checkpoint.

    Args:
        model: The fused model.
        modality: The modality whose unimodal stage to become.
        checkpoint: That stage's checkpoint.

    Returns:
        Whether the model is now that unimodal model.
    """
    if getattr(model.fusion, "primary", None) != modality or not checkpoint or not Path(checkpoint).is_file():
        return False
    what = f"the {modality} stage's checkpoint"
    with reading_once():
        load_encoder(model.encoders[modality], modality, checkpoint, what)
        load_head(model.head, modality, checkpoint, what)
    model.active.copy_(torch.tensor([m == modality for m in model.encoders]))
    return True


def validation_errors(trainer: pl.Trainer, task: pl.LightningModule):
    """Embeds the validation split once, for scoring any set of modalities.

    Args:
        trainer: Gives the validation dataloader.
        task: A task whose ``model`` is a :class:`LateFusionModel`.

    Returns:
        A function from a set of modalities to the per-clip absolute errors of the model using
            exactly those (cached), and the clip ids.
    """
    data = trainer.datamodule
    if hasattr(data, "split_dataloader"):
        loader = data.split_dataloader("valid")  # the whole split, whatever the processes
    else:
        loader = data.val_dataloader() if data else trainer.val_dataloaders
    model: LateFusionModel = task.model
    embeddings, present, labels, ids = [], [], [], []
    with _evaluating(task):
        for batch in loader:
            batch = move_data_to_device(batch, task.device)
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
            with _evaluating(task):
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
