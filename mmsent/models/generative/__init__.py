"""Conditional generators of embedding tuples, and measures of what they generate.

Each generator learns ``p(x | y)`` for a flat vector ``x`` and a sentiment score ``y``
in ``[-3, 3]``. In mmsent ``x`` is the concatenation of the frozen encoders'
embeddings (:func:`concat_embeddings`), which is exactly what the fusion head
consumes, so generated tuples can be mixed into its training batches
(:func:`sample_embeddings`). Any other vector works the same way.

* :class:`ConditionalAutoencoder`: a deterministic autoencoder; it samples by drawing
  codes from a Gaussian fitted to the training codes given the score (ex-post density
  estimation, Ghosh et al. 2020).
* :class:`ConditionalVAE`: a conditional VAE (Sohn et al. 2015) with a learned
  decoder variance per dimension (a calibrated decoder, Rybkin et al. 2021), so the
  balance between reconstruction and KL needs no tuning.
* :class:`ConditionalGAN`: a conditional GAN stabilized by spectral normalization
  (Miyato et al. 2018) and/or a gradient penalty (Gulrajani et al. 2017), with
  InfoGAN's latent codes (Chen et al. 2016) as an option. It is trained by
  alternating :meth:`ConditionalGAN.discriminator_loss` and
  :meth:`ConditionalGAN.generator_loss` steps.
* :class:`BiGAN`: a conditional BiGAN (Donahue et al. 2017), a generator and an
  encoder whose discriminator judges (x, z) pairs; trained like the GAN, it can also
  encode and reconstruct.
* :class:`EmbeddingCycleGAN`: translators between two modalities' embedding spaces
  (not score-conditioned), with the cycle-consistency loss; :func:`fill_missing` uses
  them to fill in a modality a sample lacks.

Every generator standardizes its data with running statistics that the training loop
feeds through :meth:`EmbeddingGenerator.observe`, and :meth:`EmbeddingGenerator.sample`
returns vectors in the original scale.

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
