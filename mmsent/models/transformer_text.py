"""A pretrained Hugging Face encoder over word pieces, fine-tuned with the task.

Unlike :class:`mmsent.models.TextLSTMEncoder` over frozen token states, it runs the
language model on its own tokenizer's ids (``data.source.init_args.tokenizer`` set to the
model, ``text_features`` unset), usually in a parameter group of its own with a lower
learning rate and a warm-up (``param_groups.text``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from mmsent.errors import check_choice
from mmsent.models.config import HubMixin
from mmsent.models.pooling import all_valid, masked_mean
from mmsent.models.weights import leave_out_rebuilt
from mmsent.pretrained import resolve_model_path

TransformerPooling = Literal["mean", "cls"]
WORD_EMBEDDINGS = "word_embeddings"


def load_transformer(model: str | None, architecture: dict | None) -> nn.Module:
    """Loads a pretrained ``transformers`` encoder, or builds a fresh one from a config.

    Args:
        model: A Hugging Face id, a local path or ``"minilm"``.
        architecture: A ``transformers`` config dict with its ``model_type``, built with
            fresh weights instead of reading ``model``.

    Returns:
        The encoder (a ``transformers`` base model, without a pooler).

    Raises:
        ValueError: If neither is given, or ``architecture`` has no ``model_type``.
    """
    from transformers import AutoConfig, AutoModel

    if architecture is not None:
        settings = dict(architecture)
        if "model_type" not in settings:
            raise ValueError("TransformerTextEncoder architecture needs a model_type "
                             f"(e.g. 'bert'), got keys {sorted(settings)}")
        network = AutoModel.from_config(AutoConfig.for_model(settings.pop("model_type"), **settings))
    elif model:
        network = AutoModel.from_pretrained(resolve_model_path(model))
    else:
        raise ValueError("TransformerTextEncoder needs a model (a Hugging Face id or path, or 'minilm') "
                         "or an architecture")
    # The pooled output of a pretraining head is not used: pooling happens here.
    if getattr(network, "pooler", None) is not None:
        network.pooler = None
    return network


class TransformerTextEncoder(nn.Module, HubMixin):
    """A Hugging Face encoder over token ids, pooled over the real tokens.

    Args:
        input_dim: The data's vocabulary size, which must be the model's own tokenizer's.
        model: ``"minilm"`` (offline), a Hugging Face id or a local path; nothing is
            downloaded for a local folder or ``"minilm"``.
        architecture: Instead of ``model``, a ``transformers`` config dict with its
            ``model_type``: a randomly initialised encoder of that shape.
        pooling: ``"mean"`` over the real tokens (as sentence-transformers pool MiniLM)
            or ``"cls"`` (the first token's state).
        out_dim: Size of the linear projection; None returns the hidden size unprojected.
        dropout: Dropout on the pooled embedding.
        freeze: Keep the whole transformer fixed; only the projection trains.
        freeze_embeddings: Keep the word-piece table fixed (the largest matrix of a small
            encoder, fine-tuned for little gain); left out of checkpoints and rebuilt.
    """

    def __init__(self, input_dim: int, model: str | None = "minilm", architecture: dict | None = None,
                 pooling: TransformerPooling = "mean", out_dim: int | None = None, dropout: float = 0.1,
                 freeze: bool = False, freeze_embeddings: bool = False) -> None:
        super().__init__()
        check_choice("TransformerTextEncoder pooling", pooling, TransformerPooling)
        self.pooling = pooling
        self.freeze = freeze
        self.freeze_embeddings = freeze_embeddings
        self.pretrained = architecture is None
        self.transformer = load_transformer(model, architecture)
        vocab = self.transformer.get_input_embeddings().num_embeddings
        if input_dim != vocab:
            raise ValueError(
                f"TransformerTextEncoder: the text input has {input_dim} ids per token but the model "
                f"{model if architecture is None else 'architecture'} has a vocabulary of {vocab}; it reads "
                f"the token ids of its own tokenizer: set data.source.init_args.tokenizer to the same model "
                f"and leave data.source.init_args.text_features unset (frozen states are for TextLSTMEncoder)")
        hidden = int(self.transformer.config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.project = nn.Linear(hidden, out_dim) if out_dim else nn.Identity()
        self.out_dim = out_dim or hidden
        if freeze:
            self.transformer.requires_grad_(False)
        elif freeze_embeddings:
            self.transformer.get_input_embeddings().requires_grad_(False)
        leave_out_rebuilt(self)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.transformer.eval()  # a frozen extractor computes the same states in training
        return self

    def rebuilt_state_keys(self) -> list[str]:
        """State-dict keys rebuilt from ``model``, which the state dict leaves out
        (:func:`~mmsent.models.weights.leave_out_rebuilt`).

        Returns:
            list[str]: Every transformer weight when ``freeze``, the word-piece table
            when ``freeze_embeddings``, none otherwise (fine-tuned weights are saved)
            or when the weights are not pretrained (``architecture``).
        """
        if not self.pretrained:
            return []
        keys = [f"transformer.{key}" for key in self.transformer.state_dict()]
        if self.freeze:
            return keys
        if self.freeze_embeddings:
            return [key for key in keys if f"{WORD_EMBEDDINGS}.weight" in key]
        return []

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The parameters layer by layer, bottom first, for layer-wise rate decay.

        Returns:
            The weights outside the stack of layers, then each layer; the top layer's
            list also holds the projection, which it alone feeds.

        Raises:
            ValueError: If the transformer has no stack of ``num_hidden_layers`` layers.
        """
        depth = self.transformer.config.num_hidden_layers
        stack = next((module for module in self.transformer.modules()
                      if isinstance(module, nn.ModuleList) and len(module) == depth), None)
        if stack is None:
            raise ValueError(f"TransformerTextEncoder: no stack of {depth} layers found in "
                             f"{type(self.transformer).__name__}, so layer_decay cannot be applied")
        layers = [list(layer.parameters()) for layer in stack]
        in_stack = {id(p) for layer in layers for p in layer}
        bottom = [p for p in self.transformer.parameters() if id(p) not in in_stack]
        layers[-1] += list(self.project.parameters())
        return [bottom, *layers]

    def forward(self, text: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encodes a padded batch of token ids.

        Args:
            text: Token ids ``(B, L)``.
            mask: True at real tokens, shape ``(B, L)``; padding is neither attended to
                nor pooled. None: all are real.

        Returns:
            Shape ``(B, out_dim)``.

        Raises:
            ValueError: If ``text`` holds vectors rather than token ids.
        """
        if text.is_floating_point():
            raise ValueError("TransformerTextEncoder reads token ids, but the text input is vectors: "
                             "leave data.source.init_args.text_features unset")
        if mask is None:
            mask = all_valid(text)
        states = self.transformer(input_ids=text, attention_mask=mask.long()).last_hidden_state
        pooled = states[:, 0] if self.pooling == "cls" else masked_mean(states, mask)
        return self.project(self.dropout(pooled))
