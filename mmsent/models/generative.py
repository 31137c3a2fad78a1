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

Every generator standardizes its data with running statistics that the training loop
feeds through :meth:`EmbeddingGenerator.observe`, and :meth:`EmbeddingGenerator.sample`
returns vectors in the original scale.

Usage without Lightning::

    vae = ConditionalVAE(data_dim=192)
    vae.observe(x)                        # once per batch, before the loss
    vae.losses(x, scores)["loss"].backward()
    fake = vae.sample(torch.empty(64).uniform_(-3, 3))
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm as apply_spectral_norm

from mmsent.models.audio import mlp
from mmsent.models.dropout import make_dropout

SCORE_SCALE = 3.0
SCORE_MODES = ("train", "uniform")
GAN_LOSSES = ("hinge", "bce", "wasserstein")


def concat_embeddings(embeddings: dict[str, Tensor], dims: dict[str, int]) -> Tensor:
    """Flattens one embedding per modality into one vector, in the order of ``dims``.

    Args:
        embeddings (dict[str, Tensor]): Shape ``(B, D_m)`` per modality.
        dims (dict[str, int]): The layout: modality -> embedding size.

    Returns:
        Tensor: Shape ``(B, sum(D_m))``.
    """
    return torch.cat([embeddings[m] for m in dims], dim=-1)


def split_embeddings(x: Tensor, dims: dict[str, int]) -> dict[str, Tensor]:
    """Inverts :func:`concat_embeddings`.

    Args:
        x (Tensor): Shape ``(B, sum(D_m))``.
        dims (dict[str, int]): The layout: modality -> embedding size.

    Returns:
        dict[str, Tensor]: Shape ``(B, D_m)`` per modality.
    """
    return dict(zip(dims, x.split(list(dims.values()), dim=-1), strict=True))


def draw_scores(labels: Tensor, count: int, mode: str = "train",
                rng: torch.Generator | None = None) -> Tensor:
    """Scores to condition generated samples on.

    Args:
        labels (Tensor): Real training scores, shape ``(B,)``; ``"train"`` resamples
            them, so generated scores follow the training label distribution.
        count (int): How many scores.
        mode (str): ``"train"`` or ``"uniform"`` (uniform in ``[-3, 3]``).
        rng (torch.Generator | None): Random source.

    Returns:
        Tensor: Shape ``(count,)``.
    """
    if mode == "train":
        return labels[torch.randint(len(labels), (count,), generator=rng, device=labels.device)]
    if mode == "uniform":
        return (torch.rand(count, generator=rng, device=labels.device) * 2 - 1) * SCORE_SCALE
    raise ValueError(f"score mode must be one of {SCORE_MODES}, got {mode!r}")


def _init_args(frame_locals: dict) -> dict:
    """The constructor's arguments, recorded so a checkpoint can rebuild the module."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in frame_locals.items()
            if k not in ("self", "__class__")}


def _condition(scores: Tensor) -> Tensor:
    return (scores / SCORE_SCALE).unsqueeze(-1)


class RunningStandardizer(nn.Module):
    """Per-dimension mean and standard deviation, accumulated over batches.

    The statistics are exact over everything seen (Chan et al.'s parallel update), so
    a generator trained on frozen embeddings sees fixed statistics after one epoch.

    Args:
        dim (int): Vector size.
        eps (float): Floor of the standard deviation.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Adds a batch to the statistics.

        Args:
            x (Tensor): Shape ``(B, dim)``.
        """
        x = x.detach().double()
        if len(x) == 0:
            return
        batch_mean = x.mean(0)
        total = self.count + len(x)
        delta = batch_mean - self.mean
        self.m2 += ((x - batch_mean) ** 2).sum(0) + delta**2 * self.count * len(x) / total
        self.mean += delta * len(x) / total
        self.count.copy_(total)

    @property
    def std(self) -> Tensor:
        """Tensor: The standard deviation per dimension (ones before any update)."""
        if self.count == 0:
            return torch.ones_like(self.mean)
        return (self.m2 / self.count).sqrt().clamp(min=self.eps)

    def normalize(self, x: Tensor) -> Tensor:
        """Tensor: ``x`` standardized."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def denormalize(self, x: Tensor) -> Tensor:
        """Tensor: ``x`` back in the original scale."""
        return x * self.std.to(x.dtype) + self.mean.to(x.dtype)


class EmbeddingGenerator(nn.Module):
    """What every generator shares: standardization, conditioning and sampling.

    Subclasses implement :meth:`_generate` (standardized samples for a condition) and,
    if they can, :meth:`_reconstruct`.

    Args:
        data_dim (int): Size of the generated vectors.
    """

    adversarial: bool = False
    can_reconstruct: bool = True

    def __init__(self, data_dim: int) -> None:
        super().__init__()
        self.data_dim = data_dim
        self.scaler = RunningStandardizer(data_dim)

    def observe(self, x: Tensor) -> None:
        """Adds a training batch to the standardization statistics.

        Args:
            x (Tensor): Real vectors, shape ``(B, data_dim)``.
        """
        self.scaler.update(x)

    @torch.no_grad()
    def sample(self, scores: Tensor, rng: torch.Generator | None = None) -> Tensor:
        """Generates one vector per score.

        Args:
            scores (Tensor): Conditioning scores in ``[-3, 3]``, shape ``(N,)``.
            rng (torch.Generator | None): Random source, for reproducible samples.

        Returns:
            Tensor: Shape ``(N, data_dim)``, in the original scale.
        """
        return self.scaler.denormalize(self._generate(_condition(scores), rng))

    @torch.no_grad()
    def reconstruct(self, x: Tensor, scores: Tensor) -> Tensor:
        """Encodes and decodes real vectors.

        Args:
            x (Tensor): Shape ``(B, data_dim)``.
            scores (Tensor): Their scores, shape ``(B,)``.

        Returns:
            Tensor: The reconstructions, shape ``(B, data_dim)``, original scale.
        """
        if not self.can_reconstruct:
            raise ValueError(f"{type(self).__name__} has no encoder, so it cannot reconstruct")
        return self.scaler.denormalize(self._reconstruct(self.scaler.normalize(x), _condition(scores)))

    def _generate(self, cond: Tensor, rng: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def _reconstruct(self, x: Tensor, cond: Tensor) -> Tensor:
        raise NotImplementedError


class ConditionalAutoencoder(EmbeddingGenerator):
    """An autoencoder with the score fed to both encoder and decoder.

    It trains on reconstruction alone. Its codes still carry the score (nothing
    keeps it out of them), so it generates by drawing codes from a Gaussian whose mean
    is linear in the score, ``z | y ~ N(W [1, y], S)``, fitted to the training codes
    through moving moments, and decodes them with that score.

    Args:
        data_dim (int): Size of the vectors.
        latent_dim (int): Size of the code.
        hidden_dims (list[int] | None): Encoder hidden sizes (the decoder mirrors them);
            None means ``[128]``.
        dropout (float): Dropout between hidden layers.
        prior_momentum (float): Weight of each batch in the moving moments of
            ``(1, y, z)``.
    """

    def __init__(self, data_dim: int, latent_dim: int = 16, hidden_dims: list[int] | None = None,
                 dropout: float = 0.0, prior_momentum: float = 0.05) -> None:
        super().__init__(data_dim)
        self.config = _init_args(locals())
        hidden = [128] if hidden_dims is None else list(hidden_dims)
        self.momentum = prior_momentum
        self.encoder = mlp(data_dim + 1, hidden, latent_dim, make_dropout("bernoulli", dropout))
        self.decoder = mlp(latent_dim + 1, hidden[::-1], data_dim, make_dropout("bernoulli", dropout))
        self.register_buffer("prior_moments", torch.eye(latent_dim + 2))
        self.register_buffer("prior_batches", torch.zeros((), dtype=torch.long))

    def losses(self, x: Tensor, scores: Tensor) -> dict[str, Tensor]:
        """The training objective on a batch (and, in training mode, a prior update).

        Args:
            x (Tensor): Real vectors, shape ``(B, data_dim)``.
            scores (Tensor): Their scores, shape ``(B,)``.

        Returns:
            dict[str, Tensor]: ``loss`` (mean squared error in standardized units) and
            ``recon`` (the same value).
        """
        cond = _condition(scores)
        target = self.scaler.normalize(x)
        code = self.encoder(torch.cat([target, cond], -1))
        recon = F.mse_loss(self.decoder(torch.cat([code, cond], -1)), target)
        if self.training:
            self._update_prior(cond, code.detach())
        return {"loss": recon, "recon": recon}

    @torch.no_grad()
    def _update_prior(self, cond: Tensor, code: Tensor) -> None:
        v = torch.cat([torch.ones_like(cond), cond, code], -1)
        weight = 1.0 if self.prior_batches == 0 else self.momentum
        self.prior_moments.lerp_(v.T @ v / len(v), weight)
        self.prior_batches += 1

    def _generate(self, cond: Tensor, rng: torch.Generator | None) -> Tensor:
        moments = self.prior_moments.double()
        eye = torch.eye(len(moments) - 2, dtype=moments.dtype, device=moments.device)
        given, cross, codes = moments[:2, :2], moments[2:, :2], moments[2:, 2:]
        weight = cross @ torch.linalg.inv(given + 1e-6 * eye[:2, :2])
        factor, _ = torch.linalg.cholesky_ex(codes - weight @ cross.T + 1e-4 * eye)
        inputs = torch.cat([torch.ones_like(cond), cond], -1)
        noise = torch.randn(len(cond), len(eye), generator=rng, device=cond.device)
        code = inputs @ weight.T.to(cond.dtype) + noise @ factor.T.to(cond.dtype)
        return self.decoder(torch.cat([code, cond], -1))

    def _reconstruct(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.decoder(torch.cat([self.encoder(torch.cat([x, cond], -1)), cond], -1))


class ConditionalVAE(EmbeddingGenerator):
    """A conditional VAE with a Gaussian decoder whose variance is learned per dimension.

    Args:
        data_dim (int): Size of the vectors.
        latent_dim (int): Size of the latent variable.
        hidden_dims (list[int] | None): Encoder hidden sizes (the decoder mirrors them);
            None means ``[128]``.
        beta (float): Weight of the KL term (1 is the ELBO).
        dropout (float): Dropout between hidden layers.
        min_log_sigma (float): Floor of the decoder's log standard deviation, in
            standardized units, so the likelihood cannot diverge on a fitted dimension.
    """

    def __init__(self, data_dim: int, latent_dim: int = 16, hidden_dims: list[int] | None = None,
                 beta: float = 1.0, dropout: float = 0.0, min_log_sigma: float = -3.0) -> None:
        super().__init__(data_dim)
        self.config = _init_args(locals())
        hidden = [128] if hidden_dims is None else list(hidden_dims)
        self.latent_dim = latent_dim
        self.beta = beta
        self.min_log_sigma = min_log_sigma
        self.encoder = mlp(data_dim + 1, hidden, 2 * latent_dim, make_dropout("bernoulli", dropout))
        self.decoder = mlp(latent_dim + 1, hidden[::-1], data_dim, make_dropout("bernoulli", dropout))
        self.log_sigma = nn.Parameter(torch.zeros(data_dim))

    def encode(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """The approximate posterior ``q(z | x, y)``.

        Args:
            x (Tensor): Standardized vectors, shape ``(B, data_dim)``.
            cond (Tensor): Scaled scores, shape ``(B, 1)``.

        Returns:
            tuple[Tensor, Tensor]: Mean and log-variance, each ``(B, latent_dim)``.
        """
        mean, log_var = self.encoder(torch.cat([x, cond], -1)).chunk(2, dim=-1)
        return mean, log_var.clamp(-10.0, 10.0)

    def decode(self, z: Tensor, cond: Tensor) -> Tensor:
        """Tensor: The decoder's mean for latents ``z`` (standardized units)."""
        return self.decoder(torch.cat([z, cond], -1))

    def losses(self, x: Tensor, scores: Tensor) -> dict[str, Tensor]:
        """The negative ELBO on a batch, per sample.

        Args:
            x (Tensor): Real vectors, shape ``(B, data_dim)``.
            scores (Tensor): Their scores, shape ``(B,)``.

        Returns:
            dict[str, Tensor]: ``loss`` (``nll + beta * kl``), ``nll`` (Gaussian negative
            log-likelihood, summed over dimensions), ``kl`` and ``recon`` (mean squared
            error of the decoder mean, standardized units).
        """
        cond = _condition(scores)
        target = self.scaler.normalize(x)
        mean, log_var = self.encode(target, cond)
        z = mean + torch.randn_like(mean) * (0.5 * log_var).exp()
        decoded = self.decode(z, cond)
        log_sigma = self.log_sigma.clamp(min=self.min_log_sigma)
        nll = (0.5 * ((target - decoded) / log_sigma.exp()) ** 2 + log_sigma
               + 0.5 * math.log(2 * math.pi)).sum(-1).mean()
        kl = 0.5 * (mean**2 + log_var.exp() - 1 - log_var).sum(-1).mean()
        return {"loss": nll + self.beta * kl, "nll": nll, "kl": kl,
                "recon": F.mse_loss(decoded, target)}

    def _generate(self, cond: Tensor, rng: torch.Generator | None) -> Tensor:
        z = torch.randn(len(cond), self.latent_dim, generator=rng, device=cond.device)
        return self.decode(z, cond)

    def _reconstruct(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.decode(self.encode(x, cond)[0], cond)


class Critic(nn.Module):
    """The GAN's discriminator: a LeakyReLU MLP, a projection on the score, and
    InfoGAN's code head.

    The score enters as a projection (Miyato & Koyama 2018): the logit is
    ``s(h) + <e(y), h>`` for features ``h`` of the input and an embedding ``e`` of the
    score, which conditions far more strongly than appending one scalar to the input.

    Args:
        in_dim (int): Input size.
        hidden_dims (list[int]): Hidden sizes.
        spectral_norm (bool): Spectrally normalize every layer that feeds the score.
        info_dim (int): Size of InfoGAN's code predicted from the shared features; 0
            for none.
    """

    def __init__(self, in_dim: int, hidden_dims: list[int], spectral_norm: bool, info_dim: int) -> None:
        super().__init__()

        def linear(i: int, o: int) -> nn.Module:
            return apply_spectral_norm(nn.Linear(i, o)) if spectral_norm else nn.Linear(i, o)

        layers: list[nn.Module] = []
        for width in hidden_dims:
            layers += [linear(in_dim, width), nn.LeakyReLU(0.2)]
            in_dim = width
        self.body = nn.Sequential(*layers)
        self.score = linear(in_dim, 1)
        self.embed_condition = nn.Sequential(linear(1, in_dim), nn.LeakyReLU(0.2), linear(in_dim, in_dim))
        self.info = nn.Linear(in_dim, info_dim) if info_dim else None

    def forward(self, inputs: Tensor, cond: Tensor) -> tuple[Tensor, Tensor | None]:
        """Scores inputs under their conditions.

        Args:
            inputs (Tensor): Shape ``(B, in_dim)``.
            cond (Tensor): Scaled scores, shape ``(B, 1)``.

        Returns:
            tuple[Tensor, Tensor | None]: Logits ``(B,)`` and the predicted code
            ``(B, info_dim)`` (None without InfoGAN).
        """
        features = self.body(inputs)
        logits = self.score(features).squeeze(-1) + (self.embed_condition(cond) * features).sum(-1)
        info = self.info(features) if self.info is not None else None
        return logits, info


def discriminator_objective(real: Tensor, fake: Tensor, kind: str) -> Tensor:
    """The discriminator's loss for real and fake logits.

    Args:
        real (Tensor): Logits of real samples.
        fake (Tensor): Logits of generated samples.
        kind (str): One of :data:`GAN_LOSSES`.

    Returns:
        Tensor: The scalar loss.
    """
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if kind == "bce":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    return fake.mean() - real.mean()


def generator_objective(fake: Tensor, kind: str) -> Tensor:
    """The generator's (non-saturating) loss for the logits of its samples.

    Args:
        fake (Tensor): Logits of generated samples.
        kind (str): One of :data:`GAN_LOSSES`.

    Returns:
        Tensor: The scalar loss.
    """
    return F.softplus(-fake).mean() if kind == "bce" else -fake.mean()


def gradient_penalty(critic: Critic, real: Tensor, fake: Tensor, cond: Tensor) -> Tensor:
    """WGAN-GP's penalty: ``(||grad D||_2 - 1)^2`` at random points between pairs.

    Args:
        critic (Critic): The discriminator.
        real (Tensor): Critic inputs of real samples, ``(B, in_dim)``.
        fake (Tensor): Critic inputs of generated samples.
        cond (Tensor): The conditions both pairs share, ``(B, 1)``.

    Returns:
        Tensor: The scalar penalty, differentiable w.r.t. the critic.
    """
    mix = torch.rand(len(real), 1, device=real.device)
    between = (mix * real + (1 - mix) * fake).requires_grad_(True)
    logits, _ = critic(between, cond)
    (grad,) = torch.autograd.grad(logits.sum(), between, create_graph=True)
    return ((grad.norm(2, dim=-1) - 1) ** 2).mean()


class ConditionalGAN(EmbeddingGenerator):
    """A conditional GAN over vectors: the score is appended to the generator's input
    and projected in the discriminator (see :class:`Critic`).

    Train it by alternating steps: :meth:`discriminator_loss` with the
    :meth:`parts` ``"discriminator"`` optimizer, then :meth:`generator_loss` with the
    ``"generator"`` one.

    Args:
        data_dim (int): Size of the vectors.
        noise_dim (int): Size of the Gaussian noise.
        hidden_dims (list[int] | None): Generator hidden sizes; None means
            ``[128, 128]``.
        critic_dims (list[int] | None): Discriminator hidden sizes; None means the
            generator's.
        loss (str): ``"wasserstein"``, ``"hinge"`` or ``"bce"`` (non-saturating).
        spectral_norm (bool): Spectrally normalize the discriminator.
        gradient_penalty (float): Weight of WGAN-GP's gradient penalty; 0 for none.
            The default (WGAN-GP without spectral norm) is the one that kept its
            diversity on a few dozen 192-d embedding tuples, where the spectrally
            normalized hinge GAN collapsed.
        info_dim (int): InfoGAN: size of a uniform ``[-1, 1]`` code the discriminator
            must recover from generated samples; 0 for none.
        info_weight (float): Weight of the code's reconstruction loss.
    """

    adversarial = True
    can_reconstruct = False

    def __init__(self, data_dim: int, noise_dim: int = 32, hidden_dims: list[int] | None = None,
                 critic_dims: list[int] | None = None, loss: str = "wasserstein",
                 spectral_norm: bool = False, gradient_penalty: float = 10.0, info_dim: int = 0,
                 info_weight: float = 1.0) -> None:
        super().__init__(data_dim)
        self.config = _init_args(locals())
        if loss not in GAN_LOSSES:
            raise ValueError(f"loss must be one of {GAN_LOSSES}, got {loss!r}")
        if loss == "wasserstein" and not (spectral_norm or gradient_penalty):
            raise ValueError("the wasserstein loss needs a Lipschitz constraint: "
                             "spectral_norm or gradient_penalty > 0")
        hidden = [128, 128] if hidden_dims is None else list(hidden_dims)
        critic = hidden if critic_dims is None else list(critic_dims)
        self.noise_dim, self.info_dim = noise_dim, info_dim
        self.loss_kind, self.penalty_weight, self.info_weight = loss, gradient_penalty, info_weight
        self.generator_net = mlp(noise_dim + info_dim + 1, hidden, data_dim, None)
        self.discriminator = Critic(data_dim, critic, spectral_norm, info_dim)

    def parts(self) -> dict[str, nn.Module]:
        """dict[str, nn.Module]: The parameters of each optimizer: ``generator`` and
        ``discriminator`` (with InfoGAN's code head)."""
        return {"generator": self.generator_net, "discriminator": self.discriminator}

    def draw_latent(self, count: int, rng: torch.Generator | None = None,
                    device: torch.device | None = None) -> Tensor:
        """Gaussian noise followed by the uniform InfoGAN code.

        Args:
            count (int): How many latents.
            rng (torch.Generator | None): Random source.
            device (torch.device | None): Where to create them.

        Returns:
            Tensor: Shape ``(count, noise_dim + info_dim)``.
        """
        noise = torch.randn(count, self.noise_dim, generator=rng, device=device)
        code = torch.rand(count, self.info_dim, generator=rng, device=device) * 2 - 1
        return torch.cat([noise, code], -1)

    def generate(self, latent: Tensor, scores: Tensor) -> Tensor:
        """Decodes chosen latents (for instance with a swept InfoGAN code).

        Args:
            latent (Tensor): Shape ``(N, noise_dim + info_dim)``.
            scores (Tensor): Shape ``(N,)``.

        Returns:
            Tensor: Shape ``(N, data_dim)``, original scale.
        """
        return self.scaler.denormalize(self.generator_net(torch.cat([latent, _condition(scores)], -1)))

    def discriminator_loss(self, x: Tensor, scores: Tensor) -> dict[str, Tensor]:
        """The discriminator's objective on a real batch and as many fakes.

        Args:
            x (Tensor): Real vectors, shape ``(B, data_dim)``.
            scores (Tensor): Their scores; the fakes get the same ones.

        Returns:
            dict[str, Tensor]: ``loss`` and its terms: ``adversarial`` (for the
            Wasserstein loss, minus the critic's estimate of the distance), and
            ``penalty`` and ``info`` where enabled.
        """
        cond = _condition(scores)
        real = self.scaler.normalize(x)
        latent = self.draw_latent(len(x), device=x.device)
        with torch.no_grad():
            fake = self.generator_net(torch.cat([latent, cond], -1))
        real_logit, _ = self.discriminator(real, cond)
        fake_logit, code = self.discriminator(fake, cond)
        terms = {"adversarial": discriminator_objective(real_logit, fake_logit, self.loss_kind)}
        if self.penalty_weight:
            terms["penalty"] = gradient_penalty(self.discriminator, real, fake, cond)
        if self.info_dim:
            terms["info"] = F.mse_loss(code, latent[:, self.noise_dim:])
        return self._total(terms)

    def generator_loss(self, scores: Tensor) -> dict[str, Tensor]:
        """The generator's objective on one fake per score.

        Args:
            scores (Tensor): Conditioning scores, shape ``(B,)`` (a real batch's).

        Returns:
            dict[str, Tensor]: ``loss`` and its terms: ``adversarial`` and, with
            InfoGAN, ``info``.
        """
        cond = _condition(scores)
        latent = self.draw_latent(len(scores), device=scores.device)
        fake = self.generator_net(torch.cat([latent, cond], -1))
        fake_logit, code = self.discriminator(fake, cond)
        terms = {"adversarial": generator_objective(fake_logit, self.loss_kind)}
        if self.info_dim:
            terms["info"] = F.mse_loss(code, latent[:, self.noise_dim:])
        return self._total(terms)

    def _total(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        weights = {"penalty": self.penalty_weight, "info": self.info_weight}
        return {"loss": sum(weights.get(name, 1.0) * value for name, value in terms.items()), **terms}

    def _generate(self, cond: Tensor, rng: torch.Generator | None) -> Tensor:
        latent = self.draw_latent(len(cond), rng, cond.device)
        return self.generator_net(torch.cat([latent, cond], -1))


GENERATORS: dict[str, type[EmbeddingGenerator]] = {
    cls.__name__: cls for cls in (ConditionalAutoencoder, ConditionalVAE, ConditionalGAN)
}


def sample_embeddings(generator: EmbeddingGenerator, dims: dict[str, int], labels: Tensor,
                      ratio: float, mode: str = "train") -> tuple[dict[str, Tensor], Tensor]:
    """Generated embedding tuples to mix into a real batch.

    Args:
        generator (EmbeddingGenerator): A trained generator over ``dims``.
        dims (dict[str, int]): The layout: modality -> embedding size.
        labels (Tensor): The real batch's scores, shape ``(B,)``.
        ratio (float): Generated samples per real sample (at least one is drawn).
        mode (str): How scores are drawn, see :func:`draw_scores`.

    Returns:
        tuple[dict[str, Tensor], Tensor]: Embeddings ``(N, D_m)`` per modality and
        their conditioning scores ``(N,)``, with ``N = max(1, round(ratio * B))``.
    """
    scores = draw_scores(labels, max(1, round(ratio * len(labels))), mode)
    return split_embeddings(generator.sample(scores), dims), scores


def mean_pairwise_distance(x: Tensor) -> float:
    """float: The mean Euclidean distance over all pairs of rows (0 for fewer than 2)."""
    return float(torch.pdist(x.double()).mean()) if len(x) > 1 else 0.0


def conditional_diversity(real: Tensor, generated: Tensor, scores: Tensor) -> float:
    """Spread of generated samples within each score class, relative to real ones.

    Samples are grouped by their score rounded to an integer (the 7 classes of
    Acc-7); a generator that ignores its noise and emits one vector per score has a
    ratio near 0 even when the scores themselves spread its outputs.

    Args:
        real (Tensor): Real vectors ``(N, D)`` with scores ``scores``.
        generated (Tensor): Generated vectors ``(N, D)``, row ``i`` conditioned on
            ``scores[i]``.
        scores (Tensor): Shape ``(N,)``.

    Returns:
        float: ``sum_c n_c * d_gen(c) / sum_c n_c * d_real(c)`` over classes with at
        least two samples, ``d`` the mean pairwise distance; nan if there is none.
    """
    classes = scores.round().clamp(-SCORE_SCALE, SCORE_SCALE)
    generated_total = real_total = 0.0
    for value in classes.unique():
        members = classes == value
        count = int(members.sum())
        if count > 1:
            generated_total += count * mean_pairwise_distance(generated[members])
            real_total += count * mean_pairwise_distance(real[members])
    return generated_total / real_total if real_total > 0 else math.nan


def frechet_distance(real: Tensor, generated: Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to two samples (FID's formula).

    Args:
        real (Tensor): Shape ``(N, D)``.
        generated (Tensor): Shape ``(M, D)``.

    Returns:
        float: ``|mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r^1/2 S_g S_r^1/2)^1/2)``.
    """
    real, generated = real.double(), generated.double()
    cov_r, cov_g = torch.cov(real.T), torch.cov(generated.T)
    values, vectors = torch.linalg.eigh(cov_r)
    root_r = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root_r @ cov_g @ root_r).clamp(min=0).sqrt().sum()
    mean_term = (real.mean(0) - generated.mean(0)).square().sum()
    return float(mean_term + cov_r.trace() + cov_g.trace() - 2 * cross)


class RidgeProbe(nn.Module):
    """A ridge regressor on standardized vectors, fitted in closed form on real data.

    It scores generated samples against the score they were conditioned on: a low
    error means they carry their score the way real data does.

    Args:
        dim (int): Input size.
        alpha (float): L2 penalty, per sample (the solve uses ``alpha * N``).
    """

    def __init__(self, dim: int, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("weight", torch.zeros(dim))
        self.register_buffer("bias", torch.zeros(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, x: Tensor, y: Tensor) -> RidgeProbe:
        """Fits the regressor.

        Args:
            x (Tensor): Real vectors ``(N, dim)``.
            y (Tensor): Their scores ``(N,)``.

        Returns:
            RidgeProbe: Itself.
        """
        x, y = x.double(), y.double()
        mean, std = x.mean(0), x.std(0, correction=0).clamp(min=1e-6)
        z = (x - mean) / std
        gram = z.T @ z + self.alpha * len(x) * torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
        weight = torch.linalg.solve(gram, z.T @ (y - y.mean()))
        for name, value in (("mean", mean), ("std", std), ("weight", weight), ("bias", y.mean())):
            getattr(self, name).copy_(value)
        self.fitted.fill_(True)
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Tensor: Predicted scores ``(N,)`` for vectors ``(N, dim)``."""
        return ((x - self.mean) / self.std) @ self.weight + self.bias


def sample_quality(generator: EmbeddingGenerator, real: Tensor, scores: Tensor,
                   probe: RidgeProbe | None = None,
                   rng: torch.Generator | None = None) -> tuple[dict[str, float], Tensor]:
    """Generates one sample per real one (same score) and compares the two sets.

    Distances are measured in the generator's standardized units, so every dimension
    counts alike.

    Args:
        generator (EmbeddingGenerator): The trained generator.
        real (Tensor): Held-out real vectors ``(N, D)``.
        scores (Tensor): Their scores ``(N,)``.
        probe (RidgeProbe | None): A regressor fitted on real training data.
        rng (torch.Generator | None): Random source for the samples.

    Returns:
        tuple[dict[str, float], Tensor]: The measures and the generated vectors. Measures:
        ``frechet``; ``diversity`` (mean pairwise distance of generated over real);
        ``conditional_diversity`` (the same within score classes); with a fitted probe,
        ``fidelity_MAE`` (its error on generated samples against their conditioning
        score) and ``real_MAE`` (its error on the real samples, the reference).
    """
    generated = generator.sample(scores, rng)
    real_std, generated_std = generator.scaler.normalize(real), generator.scaler.normalize(generated)
    measures = {
        "frechet": frechet_distance(real_std, generated_std),
        "diversity": mean_pairwise_distance(generated_std) / max(mean_pairwise_distance(real_std), 1e-12),
        "conditional_diversity": conditional_diversity(real_std, generated_std, scores),
    }
    if probe is not None and bool(probe.fitted):
        measures["fidelity_MAE"] = float((probe(generated) - scores).abs().mean())
        measures["real_MAE"] = float((probe(real) - scores).abs().mean())
    return measures, generated
