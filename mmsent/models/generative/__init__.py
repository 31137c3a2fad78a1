"""Conditional generators of embedding tuples, and measures of what they generate.

Each generator learns ``p(x | y)`` for a flat vector ``x`` and a score ``y`` in
``[-3, 3]``; in mmsent ``x`` is the frozen encoders' embeddings concatenated
(:func:`concat_embeddings`), what the fusion head consumes, so generated tuples can be
mixed into its batches (:func:`sample_embeddings`). The generative-augmentation section
of the tool-kit guide describes the stage.

* :class:`ConditionalAutoencoder`: ex-post density estimation (Ghosh et al. 2020).
* :class:`ConditionalVAE`: Sohn et al. 2015, with a calibrated decoder (Rybkin et al. 2021).
* :class:`ConditionalGAN`: spectral norm (Miyato et al. 2018) and/or a gradient penalty
  (Gulrajani et al. 2017), InfoGAN codes (Chen et al. 2016) as an option.
* :class:`BiGAN`: Donahue et al. 2017; it can also encode and reconstruct.
* :class:`EmbeddingCycleGAN`: translators between two modalities, for :func:`fill_missing`.

Every generator standardizes with running statistics fed by
:meth:`EmbeddingGenerator.observe`; :meth:`EmbeddingGenerator.sample` returns the
original scale.

Usage without Lightning::

    vae = ConditionalVAE(data_dim=192)
    vae.observe(x)                        # once per batch, before the loss
    vae.losses(x, scores)["loss"].backward()
    fake = vae.sample(torch.empty(64).uniform_(-3, 3))
"""

from mmsent.models.generative.autoencoder import ConditionalAutoencoder
from mmsent.models.generative.base import (
    SCORE_SCALE,
    EmbeddingGenerator,
    RunningStandardizer,
    ScoreMode,
    concat_embeddings,
    draw_scores,
    sample_embeddings,
    score_condition,
    split_embeddings,
)
from mmsent.models.generative.bigan import BiGAN
from mmsent.models.generative.cycle import EmbeddingCycleGAN, fill_missing
from mmsent.models.generative.gan import (
    ConditionalGAN,
    Critic,
    GanLoss,
    discriminator_objective,
    generator_objective,
    gradient_penalty,
)
from mmsent.models.generative.quality import (
    RidgeProbe,
    conditional_diversity,
    frechet_distance,
    mean_pairwise_distance,
    sample_quality,
)
from mmsent.models.generative.vae import ConditionalVAE

GENERATORS: dict[str, type[EmbeddingGenerator]] = {
    cls.__name__: cls for cls in (ConditionalAutoencoder, ConditionalVAE, ConditionalGAN, BiGAN)}
"""The generators a checkpoint may name, by class name."""

__all__ = ["GENERATORS", "SCORE_SCALE", "BiGAN", "ConditionalAutoencoder", "ConditionalGAN",
           "ConditionalVAE", "Critic", "EmbeddingCycleGAN", "EmbeddingGenerator", "GanLoss", "RidgeProbe",
           "RunningStandardizer", "ScoreMode", "concat_embeddings", "conditional_diversity",
           "discriminator_objective", "draw_scores", "fill_missing", "frechet_distance",
           "generator_objective", "gradient_penalty", "mean_pairwise_distance", "sample_embeddings",
           "sample_quality", "score_condition", "split_embeddings"]
