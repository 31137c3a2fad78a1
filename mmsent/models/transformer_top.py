"""The top layers of a pretrained transformer, fine-tuned over cached lower-layer states.

Frozen lower layers give the same output at every step, so the data caches it once
(``text_features`` names the model, ``text_layer: k`` keeps the states after layer ``k``;
:mod:`mmsent.data.lm_features`) and a step costs ``(L - k) / L`` of the whole model's.
"""

from __future__ import annotations

import torch
from torch import nn

from mmsent.errors import check_choice
from mmsent.models.config import HubMixin
from mmsent.models.pooling import masked_mean
from mmsent.models.transformer_text import TransformerPooling, load_transformer


def _layer_stack(transformer: nn.Module) -> nn.ModuleList:
    depth = transformer.config.num_hidden_layers
    stack = getattr(getattr(transformer, "encoder", None), "layer", None)
    if not isinstance(stack, nn.ModuleList) or len(stack) != depth:
        raise ValueError(f"TransformerTopEncoder: {type(transformer).__name__} has no encoder.layer stack "
                         f"of {depth} layers to run the top of")
    return stack


def bidirectional_mask(transformer: nn.Module, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The attention mask the transformer's own forward would build for ``mask``.

    Args:
        transformer: The ``transformers`` base model.
        states: Hidden states ``(B, L, H)``.
        mask: True at real tokens, ``(B, L)``.

    Returns:
        The mask in the form its attention layers read.
    """
    try:
        from transformers.masking_utils import create_bidirectional_mask
    except ImportError:  # transformers before the masking utilities: additive 4-D masks
        return transformer.get_extended_attention_mask(mask.long(), mask.shape)
    return create_bidirectional_mask(config=transformer.config, inputs_embeds=states,
                                     attention_mask=mask.long())


class TransformerTopEncoder(nn.Module, HubMixin):
    """The layers of a pretrained encoder above ``from_layer``, over that layer's states.

    Args:
        input_dim: The size of the cached states: the model's hidden size.
        model: The model whose states the data caches: a short name, a Hub id or a path.
        from_layer: The data's ``text_layer``; the layers above it run here. ``-1``: the
            last layer, so the states are only pooled.
        pooling: ``"mean"`` over the real tokens or ``"cls"`` (the first token).
        out_dim: Size of the linear projection; None returns the hidden size unprojected.
        dropout: Dropout on the pooled embedding.
        architecture: Instead of ``model``, a ``transformers`` config dict with its
            ``model_type``: randomly initialised layers of that shape.
    """

    def __init__(self, input_dim: int, model: str | None = "all-mpnet-base-v2", from_layer: int = -1,
                 pooling: TransformerPooling = "mean", out_dim: int | None = None, dropout: float = 0.1,
                 architecture: dict | None = None) -> None:
        super().__init__()
        check_choice("TransformerTopEncoder pooling", pooling, TransformerPooling)
        self.pooling = pooling
        transformer = load_transformer(model, architecture)
        depth = int(transformer.config.num_hidden_layers)
        start = depth if from_layer == -1 else from_layer
        if not 0 <= start <= depth:
            raise ValueError(f"TransformerTopEncoder from_layer must be -1 or in 0..{depth} "
                             f"(the model's layers), got {from_layer}")
        hidden = int(transformer.config.hidden_size)
        if input_dim != hidden:
            raise ValueError(f"TransformerTopEncoder: the text input has {input_dim}-d states but the model "
                             f"{model if architecture is None else 'architecture'} has hidden size {hidden}; "
                             f"cache that model's states (data.source.init_args.text_features)")
        stack = _layer_stack(transformer)
        # The lower layers and embeddings ran when the states were cached; keeping only the
        # top of the stack and what layers share (MPNet's relative position bias) saves
        # memory and checkpoint space.
        if start < depth:
            transformer.encoder.layer = nn.ModuleList(list(stack)[start:])
            transformer.embeddings = None
        self.transformer = transformer if start < depth else None
        self.from_layer = start
        self.dropout = nn.Dropout(dropout)
        self.project = nn.Linear(hidden, out_dim) if out_dim else nn.Identity()
        self.out_dim = out_dim or hidden

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Returns the parameters layer by layer, bottom first, for layer-wise rate decay: the
        weights shared by the layers, then each layer run here; the top layer's list also holds
        the projection."""
        if self.transformer is None:
            return [list(self.project.parameters())]
        layers = [list(layer.parameters()) for layer in self.transformer.encoder.layer]
        in_stack = {id(p) for layer in layers for p in layer}
        shared = [p for p in self.transformer.parameters() if id(p) not in in_stack]
        layers[-1] += list(self.project.parameters())
        return [shared, *layers]

    def forward(self, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Runs the top layers over a padded batch of cached states and pools them.

        Args:
            text: States ``(B, L, input_dim)``.
            mask: True at real tokens, ``(B, L)``.

        Returns:
            Shape ``(B, out_dim)``.

        Raises:
            ValueError: If ``text`` holds token ids rather than states.
        """
        if not text.is_floating_point():
            raise ValueError("TransformerTopEncoder reads cached token states, but the text input is token "
                             "ids: set data.source.init_args.text_features (and text_layer)")
        states = text
        if self.transformer is not None:
            attention = bidirectional_mask(self.transformer, states, mask)
            states = self.transformer.encoder(states, attention_mask=attention)[0]
        pooled = states[:, 0] if self.pooling == "cls" else masked_mean(states, mask)
        return self.project(self.dropout(pooled))
