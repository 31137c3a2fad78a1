"""Text encoders: an LSTM over token ids or precomputed word vectors."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from mmsent.errors import check_choice
from mmsent.models.config import HubMixin
from mmsent.models.dropout import make_dropout
from mmsent.models.pooling import all_valid, masked_max, masked_mean
from mmsent.models.recurrent import lstm_over_lengths
from mmsent.models.weights import leave_out_rebuilt
from mmsent.pretrained import resolve_model_path

Pooling = Literal["mean", "max", "last"]


def pretrained_input_embeddings(name_or_path: str) -> torch.Tensor:
    """Loads the input (word-piece) embedding matrix of a ``transformers`` model.

    Args:
        name_or_path: A Hugging Face model id, a local path or ``"minilm"`` (offline).

    Returns:
        The matrix, shape ``(vocab_size, hidden_size)``.
    """
    from transformers import AutoModel

    model = AutoModel.from_pretrained(resolve_model_path(name_or_path))
    return model.get_input_embeddings().weight.detach().clone()


class TextLSTMEncoder(nn.Module, HubMixin):
    """Embedding (or a projection of precomputed vectors), a (bi)LSTM, masked pooling.

    Args:
        input_dim: Vocabulary size, or the vector size for ``"vectors"`` (GloVe, BERT states).
        input_kind: ``"tokens"`` or ``"vectors"``.
        embed_dim: Embedding size; ignored when ``pretrained_embeddings`` sets it.
        hidden_dim: LSTM hidden size per direction.
        num_layers: Stacked LSTM layers.
        bidirectional: Run the LSTM both ways.
        dropout: Dropout on the embeddings and the pooled output.
        dropout_kind: A kind accepted by :func:`make_dropout`.
        pooling: Over the real steps; ``"last"`` takes the final hidden states.
        out_dim: Size of the returned embedding.
        pretrained_embeddings: A ``transformers`` model whose input embeddings initialize
            the table; the data must be tokenized with its tokenizer.
        freeze_embeddings: Keep the embedding table fixed.
        padding_idx: The padding token id.
    """

    def __init__(self, input_dim: int, input_kind: str = "tokens", embed_dim: int = 128,
                 hidden_dim: int = 128, num_layers: int = 1, bidirectional: bool = True,
                 dropout: float = 0.2, dropout_kind: str = "bernoulli", pooling: Pooling = "mean",
                 out_dim: int = 128, pretrained_embeddings: str | None = None,
                 freeze_embeddings: bool = False, padding_idx: int = 0) -> None:
        super().__init__()
        if input_kind not in ("tokens", "vectors"):
            raise ValueError(f"input_kind must be 'tokens' or 'vectors', got {input_kind!r}")
        check_choice("pooling", pooling, Pooling)
        self.input_kind = input_kind
        self.pooling = pooling
        self.out_dim = out_dim
        self.pretrained_embeddings = pretrained_embeddings if input_kind == "tokens" else None
        self.embed = self._build_input(
            input_dim, embed_dim, pretrained_embeddings, freeze_embeddings, padding_idx)
        lstm_in = self.embed.embedding_dim if input_kind == "tokens" else embed_dim
        # The mask covers the feature axis only: sequence lengths differ between batches.
        self.input_dropout = make_dropout(dropout_kind, dropout, feature_ndim=1)
        self.lstm = nn.LSTM(lstm_in, hidden_dim, num_layers=num_layers, batch_first=True,
                            bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0)
        directions = 2 if bidirectional else 1
        self.output_dropout = make_dropout(dropout_kind, dropout)
        self.project = nn.Linear(hidden_dim * directions, out_dim)
        leave_out_rebuilt(self)

    def _build_input(self, input_dim, embed_dim, pretrained, freeze, padding_idx) -> nn.Module:
        if self.input_kind == "vectors":
            return nn.Linear(input_dim, embed_dim)
        if pretrained is None:
            return nn.Embedding(input_dim, embed_dim, padding_idx=padding_idx)
        weights = pretrained_input_embeddings(pretrained)
        if weights.shape[0] != input_dim:
            raise ValueError(
                f"pretrained_embeddings {pretrained!r} has {weights.shape[0]} tokens but the data "
                f"was tokenized into {input_dim}; tokenize with the same model's tokenizer")
        return nn.Embedding.from_pretrained(weights, freeze=freeze, padding_idx=padding_idx)

    def rebuilt_state_keys(self) -> list[str]:
        """State-dict keys this encoder rebuilds from its config, which its state dict leaves out
        (:func:`~mmsent.models.weights.leave_out_rebuilt`).

        Returns:
            list[str]: ``["embed.weight"]`` while the table is a frozen copy of
            ``pretrained_embeddings`` (tens of MB for a transformer's vocabulary), else none.
        """
        frozen_copy = self.pretrained_embeddings is not None and not self.embed.weight.requires_grad
        return ["embed.weight"] if frozen_copy else []

    def forward(self, text: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encodes a padded batch.

        Args:
            text: Token ids ``(B, L)`` or vectors ``(B, L, D)``.
            mask: True at real tokens, shape ``(B, L)``; None when all are real.

        Returns:
            Shape ``(B, out_dim)``.
        """
        if mask is None:
            mask = all_valid(text)
        x = self.input_dropout(self.embed(text))
        out, h = lstm_over_lengths(self.lstm, x, mask.sum(1).clamp(min=1))
        if self.pooling == "last":
            directions = 2 if self.lstm.bidirectional else 1
            pooled = torch.cat(list(h[-directions:]), dim=-1)
        elif self.pooling == "max":
            pooled = masked_max(out, mask)
        else:
            pooled = masked_mean(out, mask)
        return self.project(self.output_dropout(pooled))
