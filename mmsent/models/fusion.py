"""Fusion modules, which map one embedding per modality to one fused embedding, and
the regression head."""

from __future__ import annotations

import torch
from torch import nn

from mmsent.models.audio import mlp
from mmsent.models.config import HubMixin
from mmsent.models.dropout import make_dropout


class ConcatFusion(nn.Module, HubMixin):
    """Late fusion by concatenating the modality embeddings, then an MLP.

    Args:
        input_dims: Embedding size per modality, in fusion order.
        hidden_dim: MLP hidden size.
        out_dim: Size of the fused embedding.
        dropout: Dropout in the MLP.
    """

    def __init__(self, input_dims: dict[str, int], hidden_dim: int = 128, out_dim: int = 64,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.modalities = list(input_dims)
        self.out_dim = out_dim
        self.net = mlp(sum(input_dims.values()), [hidden_dim], out_dim, make_dropout("bernoulli", dropout))

    def forward(self, embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
        """Returns the fusion ``(B, out_dim)`` of ``embeddings``, ``(B, D_m)`` per modality."""
        return self.net(torch.cat([embeddings[name] for name in self.modalities], dim=-1))


class TensorFusion(nn.Module, HubMixin):
    """Tensor fusion (Zadeh et al., 2017, TFN): the outer product of ``[1; z_m]``.

    The appended 1 keeps the unimodal and bimodal terms; projecting each modality to
    ``proj_dim`` first keeps the product small.

    Args:
        input_dims: Embedding size per modality.
        proj_dim: Size each modality is projected to before the product.
        hidden_dim: MLP hidden size after the product.
        out_dim: Size of the fused embedding.
        dropout: Dropout in the MLP.
    """

    def __init__(self, input_dims: dict[str, int], proj_dim: int = 16, hidden_dim: int = 128,
                 out_dim: int = 64, dropout: float = 0.2) -> None:
        super().__init__()
        self.modalities = list(input_dims)
        self.out_dim = out_dim
        self.project = nn.ModuleDict({m: nn.Linear(d, proj_dim) for m, d in input_dims.items()})
        product_dim = (proj_dim + 1) ** len(input_dims)
        self.net = mlp(product_dim, [hidden_dim], out_dim, make_dropout("bernoulli", dropout))

    def forward(self, embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
        """Returns the fusion ``(B, out_dim)`` of ``embeddings``, ``(B, D_m)`` per modality."""
        product = None
        for name in self.modalities:
            z = self.project[name](embeddings[name])
            z = torch.cat([torch.ones_like(z[:, :1]), z], dim=-1)
            product = z if product is None else torch.einsum("bi,bj->bij", product, z).flatten(1)
        return self.net(product)


class LowRankFusion(nn.Module, HubMixin):
    """Low-rank multimodal fusion (Liu et al., 2018, LMF).

    The TFN weight tensor factorized into ``rank`` modality-specific factors, so the
    cost grows linearly, not exponentially, with the number of modalities.

    Args:
        input_dims: Embedding size per modality.
        rank: Rank of the factorization.
        out_dim: Size of the fused embedding.
    """

    def __init__(self, input_dims: dict[str, int], rank: int = 4, out_dim: int = 64) -> None:
        super().__init__()
        self.modalities = list(input_dims)
        self.out_dim = out_dim
        self.factors = nn.ParameterDict({
            m: nn.Parameter(torch.randn(rank, d + 1, out_dim) * (d + 1) ** -0.5)
            for m, d in input_dims.items()
        })
        self.rank_weights = nn.Parameter(torch.full((rank,), 1.0 / rank))
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def forward(self, embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
        """Returns the fusion ``(B, out_dim)`` of ``embeddings``, ``(B, D_m)`` per modality."""
        fused = None
        for name in self.modalities:
            z = embeddings[name]
            z = torch.cat([torch.ones_like(z[:, :1]), z], dim=-1)
            per_rank = torch.einsum("bd,rdo->bro", z, self.factors[name])
            fused = per_rank if fused is None else fused * per_rank
        return torch.einsum("bro,r->bo", fused, self.rank_weights) + self.bias


class RegressionHead(nn.Module, HubMixin):
    """Maps an embedding to one sentiment score.

    Args:
        in_dim: Embedding size.
        hidden_dim: Hidden size; 0 for a single linear layer.
        dropout: Dropout before the output layer.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = [hidden_dim] if hidden_dim else []
        self.net = mlp(in_dim, hidden, 1, make_dropout("bernoulli", dropout) if hidden else None)
        if not hidden and dropout:
            self.net = nn.Sequential(nn.Dropout(dropout), self.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the scores ``(B,)`` of a batch ``x`` ``(B, in_dim)``."""
        return self.net(x).squeeze(-1)

    def start_at(self, value: float) -> None:
        """Sets the output bias so the head starts predicting ``value`` (e.g. the training labels'
        median for L1, their mean for MSE); draws no random number."""
        output = [m for m in self.net.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            output.bias.fill_(float(value))


class GatedResidualFusion(nn.Module, HubMixin):
    """A primary modality's embedding plus gated, residual contributions of the others.

    ``fused = z_p + sum_{m != p} g_m * W_m z_m``, gates ``g_m = sigmoid(G_m [z_1; ...; z_M])``.
    ``W_m`` starts at zero, so the model begins as the primary modality alone and a weak
    modality enters only as far as it lowers the loss; without bias, an absent (zeroed)
    modality adds exactly nothing.

    Args:
        input_dims: Embedding size per modality.
        primary: The modality built on (default: the first); its size is the fused size.
        dropout: Dropout on the other modalities' embeddings.
        gate_bias: Initial gate bias; ``0`` opens the gates halfway.
    """

    def __init__(self, input_dims: dict[str, int], primary: str | None = None, dropout: float = 0.1,
                 gate_bias: float = 0.0) -> None:
        super().__init__()
        self.modalities = list(input_dims)
        self.primary = primary or self.modalities[0]
        if self.primary not in input_dims:
            raise ValueError(f"primary {self.primary!r} is not one of the fused modalities {self.modalities}")
        self.out_dim = input_dims[self.primary]
        self.dropout = nn.Dropout(dropout)
        others = [m for m in self.modalities if m != self.primary]
        self.project = nn.ModuleDict({m: nn.Linear(input_dims[m], self.out_dim, bias=False) for m in others})
        self.gates = nn.ModuleDict({m: nn.Linear(sum(input_dims.values()), self.out_dim) for m in others})
        for name in others:
            nn.init.zeros_(self.project[name].weight)
            nn.init.constant_(self.gates[name].bias, gate_bias)

    def forward(self, embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
        """Returns the fusion ``(B, D_primary)`` of ``embeddings``, ``(B, D_m)`` per modality."""
        joint = torch.cat([embeddings[m] for m in self.modalities], dim=-1)
        fused = embeddings[self.primary]
        for name, project in self.project.items():
            gate = torch.sigmoid(self.gates[name](joint))
            fused = fused + gate * project(self.dropout(embeddings[name]))
        return fused
