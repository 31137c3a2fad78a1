"""Fusion modules, the regression head, and the late-fusion model around them."""

from __future__ import annotations

import torch
from torch import nn

from mmsent.models.audio import mlp
from mmsent.models.dropout import make_dropout


class ConcatFusion(nn.Module):
    """Late fusion by concatenating the modality embeddings, then an MLP.

    Args:
        input_dims (dict[str, int]): Embedding size per modality, in fusion order.
        hidden_dim (int): MLP hidden size.
        out_dim (int): Size of the fused embedding.
        dropout (float): Dropout in the MLP.
    """

    def __init__(self, input_dims: dict[str, int], hidden_dim: int = 128, out_dim: int = 64,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.modalities = list(input_dims)
        self.out_dim = out_dim
        self.net = mlp(sum(input_dims.values()), [hidden_dim], out_dim, make_dropout("bernoulli", dropout))

    def forward(self, embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
        """Fuses one embedding per modality.

        Args:
            embeddings (dict[str, torch.Tensor]): Shape ``(B, D_m)`` per modality.

        Returns:
            torch.Tensor: Shape ``(B, out_dim)``.
        """
        return self.net(torch.cat([embeddings[name] for name in self.modalities], dim=-1))


class TensorFusion(nn.Module):
    """Tensor fusion (Zadeh et al., 2017, TFN): the outer product of ``[1; z_m]``.

    The appended 1 keeps every unimodal and bimodal term inside the product. Each
    modality is first projected to ``proj_dim`` so the product stays small.

    Args:
        input_dims (dict[str, int]): Embedding size per modality.
        proj_dim (int): Size each modality is projected to before the product.
        hidden_dim (int): MLP hidden size after the product.
        out_dim (int): Size of the fused embedding.
        dropout (float): Dropout in the MLP.
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
        """Fuses one embedding per modality.

        Args:
            embeddings (dict[str, torch.Tensor]): Shape ``(B, D_m)`` per modality.

        Returns:
            torch.Tensor: Shape ``(B, out_dim)``.
        """
        product = None
        for name in self.modalities:
            z = self.project[name](embeddings[name])
            z = torch.cat([torch.ones_like(z[:, :1]), z], dim=-1)
            product = z if product is None else torch.einsum("bi,bj->bij", product, z).flatten(1)
        return self.net(product)


class LowRankFusion(nn.Module):
    """Low-rank multimodal fusion (Liu et al., 2018, LMF).

    The TFN weight tensor factorized into ``rank`` modality-specific factors, so the
    cost grows linearly, not exponentially, with the number of modalities.

    Args:
        input_dims (dict[str, int]): Embedding size per modality.
        rank (int): Rank of the factorization.
        out_dim (int): Size of the fused embedding.
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
        """Fuses one embedding per modality.

        Args:
            embeddings (dict[str, torch.Tensor]): Shape ``(B, D_m)`` per modality.

        Returns:
            torch.Tensor: Shape ``(B, out_dim)``.
        """
        fused = None
        for name in self.modalities:
            z = embeddings[name]
            z = torch.cat([torch.ones_like(z[:, :1]), z], dim=-1)
            per_rank = torch.einsum("bd,rdo->bro", z, self.factors[name])
            fused = per_rank if fused is None else fused * per_rank
        return torch.einsum("bro,r->bo", fused, self.rank_weights) + self.bias


class RegressionHead(nn.Module):
    """Maps an embedding to one sentiment score.

    Args:
        in_dim (int): Embedding size.
        hidden_dim (int): Hidden size; 0 for a single linear layer.
        dropout (float): Dropout before the output layer.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = [hidden_dim] if hidden_dim else []
        self.net = mlp(in_dim, hidden, 1, make_dropout("bernoulli", dropout) if hidden else None)
        if not hidden and dropout:
            self.net = nn.Sequential(nn.Dropout(dropout), self.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores a batch.

        Args:
            x (torch.Tensor): Shape ``(B, in_dim)``.

        Returns:
            torch.Tensor: Shape ``(B,)``.
        """
        return self.net(x).squeeze(-1)


class LateFusionModel(nn.Module):
    """Encoders per modality, a fusion module and a head, over dict batches.

    A modality a sample lacks (``batch[f"{m}_present"]`` false) enters the fusion as a
    zero embedding; modality dropout trains the fusion on exactly that case, so a
    missing or ablated modality at test time is a situation it has seen.

    Args:
        encoders (nn.ModuleDict): One encoder per modality, each called as
            ``encoder(batch[m], batch[f"{m}_mask"])`` and exposing ``out_dim``.
        fusion (nn.Module): Maps ``dict[str, Tensor]`` to ``(B, fusion.out_dim)``.
        head (nn.Module): Maps the fused embedding to ``(B,)`` scores.
        modality_dropout (float): Probability of dropping each modality of each
            training sample; at least one modality is always kept.

    Attributes:
        active (torch.Tensor): Boolean, one entry per encoder; a switched-off modality
            (see :meth:`switch_off`) is treated as absent everywhere, in training too.
            A buffer, so the choice travels with the weights.
    """

    def __init__(self, encoders: nn.ModuleDict, fusion: nn.Module, head: nn.Module,
                 modality_dropout: float = 0.0) -> None:
        super().__init__()
        self.encoders = encoders
        self.fusion = fusion
        self.head = head
        self.modality_dropout = modality_dropout
        self.register_buffer("active", torch.ones(len(encoders), dtype=torch.bool))

    @property
    def active_modalities(self) -> list[str]:
        """list[str]: The modalities the model uses, in encoder order."""
        return [m for m, on in zip(self.encoders, self.active.tolist(), strict=True) if on]

    def switch_off(self, modality: str) -> None:
        """Stops using a modality: it enters the fusion as absent from now on.

        Args:
            modality (str): One of the encoders' modalities.

        Raises:
            ValueError: If the model has no such encoder, or it is the last one in use.
        """
        if modality not in self.encoders:
            raise ValueError(f"cannot switch off {modality!r}: the model fuses {list(self.encoders)}")
        if self.active_modalities == [modality]:
            raise ValueError(f"cannot switch off {modality!r}: it is the last modality in use")
        self.active[list(self.encoders).index(modality)] = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Fused checkpoints written before modality selection existed use every modality.
        state_dict.setdefault(prefix + "active", torch.ones_like(self.active))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        """Runs every encoder.

        Args:
            batch (dict): A collated batch.

        Returns:
            dict[str, torch.Tensor]: Shape ``(B, D_m)`` per modality.
        """
        return {m: encoder(batch[m], batch[f"{m}_mask"]) for m, encoder in self.encoders.items()}

    def presence(self, batch: dict) -> dict[str, torch.Tensor]:
        """The per-sample presence of each modality, after modality dropout.

        Args:
            batch (dict): A collated batch.

        Returns:
            dict[str, torch.Tensor]: Boolean ``(B,)`` per modality.
        """
        present = {m: batch[f"{m}_present"].bool() & on
                   for m, on in zip(self.encoders, self.active, strict=True)}
        if not (self.training and self.modality_dropout > 0):
            return present
        names = list(present)
        stacked = torch.stack([present[m] for m in names], dim=1)
        keep = torch.rand(stacked.shape, device=stacked.device) >= self.modality_dropout
        dropped = stacked & keep
        # A sample that lost every modality keeps what it had.
        dropped = torch.where(dropped.any(1, keepdim=True), dropped, stacked)
        return {m: dropped[:, i] for i, m in enumerate(names)}

    def predict_from_embeddings(self, embeddings: dict[str, torch.Tensor],
                                present: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Fuses embeddings (real or generated) and scores them.

        Args:
            embeddings (dict[str, torch.Tensor]): Shape ``(B, D_m)`` per modality.
            present (dict[str, torch.Tensor] | None): Boolean ``(B,)`` per modality;
                absent ones are zeroed. None means all present. Switched-off
                modalities are zeroed either way.

        Returns:
            torch.Tensor: Scores, shape ``(B,)``.
        """
        if present is None:
            present = {m: torch.ones(len(z), dtype=torch.bool, device=z.device) for m, z in embeddings.items()}
        return self.fuse(embeddings, {m: present[m] & on for m, on in zip(self.encoders, self.active, strict=True)})

    def fuse(self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scores embeddings with exactly the given presence, whatever :attr:`active` says.

        Args:
            embeddings (dict[str, torch.Tensor]): Shape ``(B, D_m)`` per modality.
            present (dict[str, torch.Tensor]): Boolean ``(B,)`` per modality; absent
                ones are zeroed.

        Returns:
            torch.Tensor: Scores, shape ``(B,)``.
        """
        embeddings = {m: z * present[m].unsqueeze(-1).to(z.dtype) for m, z in embeddings.items()}
        return self.head(self.fusion(embeddings))

    def forward(self, batch: dict) -> torch.Tensor:
        """Scores a batch.

        Args:
            batch (dict): A collated batch.

        Returns:
            torch.Tensor: Scores, shape ``(B,)``.
        """
        return self.predict_from_embeddings(self.encode(batch), self.presence(batch))


class GatedResidualFusion(nn.Module):
    """A primary modality's embedding plus gated, residual contributions of the others.

    ``fused = z_p + sum_{m != p} g_m * W_m z_m`` with per-dimension gates
    ``g_m = sigmoid(G_m [z_1; ...; z_M])``. ``W_m`` starts at zero, so the fused
    model begins as the primary modality alone (its pretrained embedding, unchanged)
    and a weak modality, such as MOSI's utterance-level audio, enters only as far as
    it lowers the training loss; ``W_m`` has no bias, so an absent (zeroed) modality
    adds exactly nothing.

    Args:
        input_dims (dict[str, int]): Embedding size per modality.
        primary (str | None): The modality the fused embedding is built on; the
            first one by default. Its embedding size is the fused size.
        dropout (float): Dropout on the other modalities' embeddings.
        gate_bias (float): Initial gate bias; ``0`` opens the gates halfway.
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
        """Fuses one embedding per modality.

        Args:
            embeddings (dict[str, torch.Tensor]): Shape ``(B, D_m)`` per modality.

        Returns:
            torch.Tensor: Shape ``(B, D_primary)``.
        """
        joint = torch.cat([embeddings[m] for m in self.modalities], dim=-1)
        fused = embeddings[self.primary]
        for name, project in self.project.items():
            gate = torch.sigmoid(self.gates[name](joint))
            fused = fused + gate * project(self.dropout(embeddings[name]))
        return fused
