"""Stage 4a: a generator of embedding tuples, trained on the frozen unimodal encoders.

The fusion stage mixes its samples into its batches (``generator_checkpoint``). Each
evaluation logs ``recon_error`` (where the generator reconstructs) and the measures of
:func:`mmsent.models.generative.sample_quality`, appends them to
``<log_dir>/generative/quality.jsonl`` and draws real and generated samples beside it
(``val_epoch<NNN>.png`` while fitting, ``val.png`` / ``test.png`` otherwise).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from matplotlib.figure import Figure
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor, nn

from mmsent.models.generative import (
    EmbeddingGenerator,
    RidgeProbe,
    concat_embeddings,
    sample_quality,
    split_embeddings,
)
from mmsent.models.weights import weights_digest
from mmsent.optim import build_param_groups, has_schedules
from mmsent.tasks.base import BaseTask
from mmsent.tasks.checkpoints import (
    EncoderFactory,
    build_encoders,
    encoder_config,
    modality_paths,
    reading_once,
)

GeneratorFactory = Callable[[int], EmbeddingGenerator]


class GenerativeTask(BaseTask):
    """Frozen pretrained encoders and a generator of their embeddings given the score.

    A GAN or BiGAN trains with manual optimization, with ``param_groups`` keys
    ``generator`` and ``discriminator`` for two-time-scale learning rates. Samples that
    lack a modality are left out: the generator models complete tuples.

    Args:
        generator (GeneratorFactory): Builds the generator from the size of the
            concatenated embeddings (in YAML: ``init_args`` without ``data_dim``).
        text_encoder (EncoderFactory | None): Builds the text encoder; None builds the
            one recorded in ``encoders["text"]``, as in the fusion stage.
        audio_encoder (EncoderFactory | None): Builds the acoustic encoder, likewise.
        video_encoder (EncoderFactory | None): Builds the video encoder, likewise.
        encoders (dict[str, str | None] | None): Per modality, where its encoder comes
            from, as in the fusion stage.
        discriminator_steps (int): Discriminator updates per generator update (GAN).
        probe_alpha (float): Ridge penalty of the regressor, fitted on real training
            embeddings, that scores generated ones.
        quality_seed (int): Seed of the samples drawn at each evaluation.
        cache_embeddings (bool): Keep each clip's embeddings after its first batch
            (frozen encoders); turn it off if the data loader augments clips at random.
        **kwargs: :class:`BaseTask` arguments (optimizer, param_groups, ...).
    """

    @reading_once()
    def __init__(self, generator: GeneratorFactory, text_encoder: EncoderFactory | None = None,
                 audio_encoder: EncoderFactory | None = None,
                 video_encoder: EncoderFactory | None = None, encoders: dict[str, str | None] | None = None,
                 discriminator_steps: int = 1, probe_alpha: float = 1.0, quality_seed: int = 0,
                 cache_embeddings: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        if self.regularizer is not None:
            raise ValueError("model.regularizer is not used by GenerativeTask; "
                             "set weight_decay in the optimizer or param_groups instead")
        if discriminator_steps < 1:
            raise ValueError(f"model.discriminator_steps must be >= 1, got {discriminator_steps}")
        self.save_plain_hyperparameters(ignore=("generator", "text_encoder", "audio_encoder", "video_encoder"))
        factories = {"text": text_encoder, "audio": audio_encoder, "video": video_encoder}
        self.encoders = build_encoders(factories, modality_paths(encoders, "model.encoders"), self.input_dims)
        self.encoders.requires_grad_(False)
        self.dims = {m: e.out_dim for m, e in self.encoders.items()}
        self.generator = generator(sum(self.dims.values()))
        self.probe = RidgeProbe(self.generator.data_dim, probe_alpha)
        self.automatic_optimization = not self.generator.adversarial
        if self.generator.adversarial and has_schedules(self.group_settings):
            raise ValueError("model: learning-rate schedules are not supported for an adversarial "
                             "generator; give generator and discriminator constant rates")
        self.discriminator_steps = discriminator_steps
        self.quality_seed = quality_seed
        self.cache_embeddings = cache_embeddings
        self._embedding_cache: dict[str, Tensor] = {}
        self.figure_path: Path | None = None
        self._train_real: list[tuple[Tensor, Tensor]] = []
        self._eval_real: list[tuple[Tensor, Tensor]] = []
        # Lightning restores each submodule's mode as found at the start of fit instead
        # of calling train(), so the frozen encoders are put in eval mode here.
        self.train()
        self.param_groups()

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoders.eval()
        return self

    @torch.no_grad()
    def embed(self, batch: dict) -> tuple[Tensor, Tensor]:
        """The concatenated embeddings ``(N, D)`` and scores ``(N,)`` of a batch's complete samples.

        Args:
            batch (dict): A collated batch.

        Returns:
            tuple[Tensor, Tensor]: The embeddings and the scores.
        """
        ids = batch["id"]
        if self.cache_embeddings and all(i in self._embedding_cache for i in ids):
            x = torch.stack([self._embedding_cache[i] for i in ids]).to(self.device)
        else:
            embeddings = {m: encoder(batch[m], batch[f"{m}_mask"]) for m, encoder in self.encoders.items()}
            x = concat_embeddings(embeddings, self.dims)
            if self.cache_embeddings:
                self._embedding_cache.update(zip(ids, x.cpu(), strict=True))
        complete = torch.stack([batch[f"{m}_present"].bool() for m in self.encoders], 1).all(1)
        return x[complete], batch["label"][complete]

    def forward(self, scores: Tensor) -> dict[str, Tensor]:
        """Generates one embedding tuple per score.

        Args:
            scores (Tensor): Shape ``(N,)``, in ``[-3, 3]``.

        Returns:
            dict[str, Tensor]: Shape ``(N, D_m)`` per modality.
        """
        return split_embeddings(self.generator.sample(scores), self.dims)

    def parameter_parts(self) -> dict[str, nn.Module]:
        if self.generator.adversarial:
            return self.generator.parts()
        return {"generator": self.generator}

    def compute_loss(self, batch: dict) -> Tensor:
        x, y = self.embed(batch)
        if self.generator.adversarial:
            return self.generator.generator_loss(y, real=x)["loss"]
        return self.generator.losses(x, y)["loss"]

    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        x, y = self.embed(batch)
        if len(x) < 2:
            return None
        self._train_real.append((x.detach().cpu(), y.detach().cpu()))
        self.generator.observe(x)
        if self.generator.adversarial:
            self._adversarial_step(x, y)
            return None
        losses = self.generator.losses(x, y)
        self._log_terms("train", losses, len(x))
        return losses["loss"]

    def _adversarial_step(self, x: Tensor, y: Tensor) -> None:
        generator_opt, discriminator_opt = self.optimizers()
        for _ in range(self.discriminator_steps):
            d_losses = self.generator.discriminator_loss(x, y)
            discriminator_opt.zero_grad()
            self.manual_backward(d_losses["loss"])
            discriminator_opt.step()
        g_losses = self.generator.generator_loss(y, real=x)
        generator_opt.zero_grad()
        self.manual_backward(g_losses["loss"])
        generator_opt.step()
        self._log_terms("train/d", d_losses, len(x))
        self._log_terms("train/g", g_losses, len(x))

    def _log_terms(self, prefix: str, losses: dict[str, Tensor], batch_size: int) -> None:
        for name, value in losses.items():
            self.log(f"{prefix}/{name}", value.detach(), batch_size=batch_size,
                     prog_bar=name == "loss" and prefix != "train/d")

    def configure_optimizers(self):
        if not self.generator.adversarial:
            return super().configure_optimizers()
        parts = self.parameter_parts()
        settings = self.group_settings or {}
        return [self.optimizer_factory(build_param_groups({name: part}, {name: settings.get(name, {})}))
                for name, part in parts.items()]

    def on_train_epoch_start(self) -> None:
        # Frozen encoders give the same embeddings every epoch: keep one epoch's worth.
        self._train_real = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_real.append(self.embed(batch))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_real.append(self.embed(batch))

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        x, y = self.embed(batch)
        complete = torch.stack([batch[f"{m}_present"].bool() for m in self.encoders], 1).all(1)
        return {"id": [i for i, keep in zip(batch["id"], complete.tolist(), strict=True) if keep],
                "label": y, "real": x, "generated": self.generator.sample(y)}

    def on_validation_epoch_end(self) -> None:
        if self._train_real:
            self.probe.fit(*map(torch.cat, zip(*self._train_real, strict=True)))
        self._report_quality("val")

    def on_test_epoch_end(self) -> None:
        self._report_quality("test")

    def _report_quality(self, stage: str) -> None:
        collected, self._eval_real = self._eval_real, []
        if not collected:
            return
        real, scores = (torch.cat(parts) for parts in zip(*collected, strict=True))
        if len(real) < 2:
            return
        rng = torch.Generator(device=real.device).manual_seed(self.quality_seed)
        measures, generated = sample_quality(self.generator, real, scores, self.probe, rng)
        if self.generator.can_reconstruct:
            scaler = self.generator.scaler
            recon = scaler.normalize(self.generator.reconstruct(real, scores))
            measures["recon_error"] = float((recon - scaler.normalize(real)).square().mean())
        for name, value in measures.items():
            self.log(f"{stage}/{name}", value)
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            self._write_quality(stage, measures, real, generated, scores)

    def _write_quality(self, stage: str, measures: dict[str, float], real: Tensor, generated: Tensor,
                       scores: Tensor) -> None:
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "generative"
        folder.mkdir(parents=True, exist_ok=True)
        if self.trainer.state.fn == TrainerFn.FITTING:
            when = {"epoch": self.current_epoch, "step": self.global_step}
            name = f"{stage}_epoch{self.current_epoch:03d}"
        else:
            when, name = {"checkpoint": self.trainer.ckpt_path}, stage
        with open(folder / "quality.jsonl", "a") as handle:
            handle.write(json.dumps({"split": stage, **when, **measures}) + "\n")
        scaler = self.generator.scaler
        figure = sample_projection_figure(scaler.normalize(real), scaler.normalize(generated), scores,
                                          f"{name}: diversity {measures['diversity']:.2f}, "
                                          f"Fréchet {measures['frechet']:.1f}")
        self.figure_path = folder / f"{name}.png"
        figure.savefig(self.figure_path, dpi=100)
        if self.trainer.state.fn == TrainerFn.TESTING:
            # <stage dir>/media is where the pipeline picks up a stage's own pictures
            # (a W&B run's media/samples).
            media = Path(self.trainer.default_root_dir) / "media"
            media.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.figure_path, media / "samples.png")

    def checkpoint_meta(self) -> dict:
        return {
            "task": "generative",
            "generator_class": type(self.generator).__name__,
            "generator_config": self.generator.config,
            "layout": dict(self.dims),
            "encoder_configs": {m: encoder_config(e) for m, e in self.encoders.items()},
            "encoder_digests": {m: weights_digest(e) for m, e in self.encoders.items()},
        }


def sample_projection_figure(real: Tensor, generated: Tensor, scores: Tensor, title: str = "",
                             generated_scores: Tensor | None = None) -> Figure:
    """Real and generated samples on the first two principal axes of the real ones.

    Args:
        real (Tensor): Real vectors ``(N, D)`` (standardized, so every dimension counts).
        generated (Tensor): Generated vectors ``(M, D)``, same units.
        scores (Tensor): The real scores ``(N,)``; the colours.
        title (str): The figure title.
        generated_scores (Tensor | None): The generated vectors' scores; None: ``scores``.

    Returns:
        Figure: Two panels, real and generated, coloured by score on one scale.
    """
    real, generated = real.detach().double().cpu(), generated.detach().double().cpu()
    generated_scores = scores if generated_scores is None else generated_scores
    center = real.mean(0)
    _, singular, axes = torch.linalg.svd(real - center, full_matrices=False)
    explained = singular[:2].square() / singular.square().sum()
    figure = Figure(figsize=(10, 4.5))
    panels = figure.subplots(1, 2, sharex=True, sharey=True)
    for ax, points, colour, name in ((panels[0], real, scores, "real"),
                                     (panels[1], generated, generated_scores, "generated")):
        projected = (points - center) @ axes[:2].T
        image = ax.scatter(projected[:, 0], projected[:, 1], c=colour.cpu(), cmap="coolwarm",
                           vmin=-3, vmax=3, s=12, alpha=0.8)
        ax.set_title(f"{name} ({len(points)})")
        ax.set_xlabel(f"PC1 ({100 * explained[0]:.0f}% of real variance)")
    panels[0].set_ylabel(f"PC2 ({100 * explained[1]:.0f}%)")
    figure.colorbar(image, ax=list(panels), label="sentiment score")
    figure.suptitle(title)
    return figure
