"""Video encoders: a compact 3D-CNN over frames, torchvision video backbones, a
per-frame 2D-CNN baseline, and an LSTM over pre-extracted feature sequences."""

from __future__ import annotations

import inspect
from typing import Literal

import torch
from torch import nn

from mmsent.errors import check_choice
from mmsent.models.config import HubMixin
from mmsent.models.dropout import make_dropout
from mmsent.models.inflation import (
    TimeReplicateConv3d,
    add_image_stem_pool,
    inflate_into,
    read_state_dict,
    replicate_time_padding_,
)
from mmsent.models.text import TextLSTMEncoder

TORCHVISION_BACKBONES = ("r3d_18", "mc3_18", "r2plus1d_18")
TemporalPadding = Literal["zeros", "replicate"]


def conv3d_block(in_channels: int, out_channels: int, pool: tuple[int, int, int],
                 temporal_padding: TemporalPadding = "zeros") -> nn.Sequential:
    """Conv3d 3x3x3, batch norm, ReLU, max pool.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        pool: Max-pool kernel (time, height, width).
        temporal_padding: ``"replicate"`` repeats the clip's end frames
            (:class:`~mmsent.models.inflation.TimeReplicateConv3d`).

    Returns:
        The block.
    """
    conv = TimeReplicateConv3d if _temporal_padding(temporal_padding) == "replicate" else nn.Conv3d
    return nn.Sequential(conv(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
                         nn.BatchNorm3d(out_channels), nn.ReLU(inplace=True), nn.MaxPool3d(pool))


GlobalPool = Literal["max", "avg"]


def _temporal_padding(kind: TemporalPadding) -> str:
    check_choice("temporal_padding", kind, TemporalPadding)
    return kind


def compact_c3d(in_channels: int, widths: list[int], global_pool: GlobalPool = "max",
                temporal_bins: int = 1, temporal_padding: TemporalPadding = "zeros") -> nn.Sequential:
    """A C3D-style stack small enough to train on a CPU.

    The first block pools space only, as C3D does, keeping the temporal resolution the
    motion cue lives in. Max pooling is the default: facial evidence is small and local,
    and averaging it with the background dilutes the signal and its gradient.

    Args:
        in_channels: Input channels (3 for RGB).
        widths: Channels of each block.
        global_pool: ``"max"`` or ``"avg"`` over the last block's positions.
        temporal_bins: Ordered time bins the last block is pooled into, concatenated;
            with more than one, the direction of a movement is a linear read-out.
        temporal_padding: For every block's convolution (see :func:`conv3d_block`).

    Returns:
        Blocks ending in global pooling, output ``(B, widths[-1] * temporal_bins)``.

    Raises:
        ValueError: If ``temporal_bins`` is below 1.
    """
    if temporal_bins < 1:
        raise ValueError(f"temporal_bins must be at least 1, got {temporal_bins!r}")
    blocks, channels = [], in_channels
    for index, width in enumerate(widths):
        blocks.append(conv3d_block(channels, width, (1, 2, 2) if index == 0 else (2, 2, 2), temporal_padding))
        channels = width
    return nn.Sequential(*blocks, _global_pool(global_pool, 3, temporal_bins), nn.Flatten())


def _global_pool(kind: GlobalPool, dims: int, temporal_bins: int = 1) -> nn.Module:
    check_choice("global_pool", kind, GlobalPool)
    if dims == 3:
        size = (temporal_bins, 1, 1)
        return nn.AdaptiveMaxPool3d(size) if kind == "max" else nn.AdaptiveAvgPool3d(size)
    return nn.AdaptiveMaxPool2d(1) if kind == "max" else nn.AdaptiveAvgPool2d(1)


def torchvision_backbone(name: str, temporal_padding: TemporalPadding = "zeros",
                         stem_pool: bool = False) -> tuple[nn.Module, int]:
    """A randomly initialized torchvision video network without its classifier.

    Nothing is downloaded at run time: load Kinetics weights with ``load_state_dict``.

    Args:
        name: One of :data:`TORCHVISION_BACKBONES`.
        temporal_padding: ``"replicate"`` makes every convolution that pads time repeat
            the clip's end frames.
        stem_pool: Append ``resnet18``'s stem max-pool, which the video networks lack.

    Returns:
        The network (output ``(B, features)``) and its feature size.
    """
    from torchvision.models import video

    if name not in TORCHVISION_BACKBONES:
        raise ValueError(f"backbone must be 'c3d' or one of {TORCHVISION_BACKBONES}, got {name!r}")
    network = getattr(video, name)(weights=None)
    if _temporal_padding(temporal_padding) == "replicate":
        replicate_time_padding_(network)
    if stem_pool:
        add_image_stem_pool(network)
    features = network.fc.in_features
    network.fc = nn.Identity()
    return network, features


class Visual3DCNNEncoder(nn.Module, HubMixin):
    """A 3D-CNN over a clip of frames.

    Inflation from a 2D network is described in the tool-kit guide.

    Args:
        input_dim: Input channels (3 for RGB frames).
        backbone: ``"c3d"`` (compact, CPU-friendly) or one of :data:`TORCHVISION_BACKBONES`.
        widths: Channels of the compact network's blocks.
        global_pool: The compact network's final pooling.
        temporal_bins: Ordered time bins of the compact network's pooling (:func:`compact_c3d`).
        motion_input: Add the frame minus the clip's mean frame as channels, where only
            what moves is left: a cheap motion stream, as in two-stream networks.
        out_dim: Size of the returned embedding.
        dropout: Dropout before the projection.
        dropout_kind: A kind accepted by :func:`make_dropout`.
        channels_last: Use ``channels_last_3d`` (faster on tensor cores; equal up to rounding).
        inflate_from: A 2D network's state dict file (read with ``weights_only``) whose
            kernels, inflated over time (I3D, :func:`~mmsent.models.inflation.inflate_into`),
            initialize the 3D convolutions: a :class:`FrameCNNEncoder` for ``c3d``,
            ``resnet18`` for ``r3d_18``. None: random initialization.
        inflate_kernels: Names of the 2D kernels to inflate, one per 3D convolution, for
            any other 2D network. None: a :class:`FrameCNNEncoder`'s, or every 2D kernel.
        temporal_padding: ``"replicate"`` repeats the clip's end frames, so an inflated
            network matches its 2D network on a still clip at every frame.
        stem_pool: For a torchvision backbone, add ``resnet18``'s stem max-pool, which
            ``r3d_18`` lacks.
    """

    def __init__(self, input_dim: int = 3, backbone: str = "c3d", widths: list[int] | None = None,
                 global_pool: GlobalPool = "max", temporal_bins: int = 1, motion_input: bool = False,
                 out_dim: int = 64, dropout: float = 0.2, dropout_kind: str = "bernoulli",
                 channels_last: bool = False, inflate_from: str | None = None,
                 inflate_kernels: list[str] | None = None, temporal_padding: TemporalPadding = "zeros",
                 stem_pool: bool = False) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.motion_input = motion_input
        if backbone == "c3d":
            widths = [16, 32, 64] if widths is None else list(widths)
            channels = 2 * input_dim if motion_input else input_dim
            if stem_pool:
                raise ValueError("stem_pool applies to torchvision backbones only, got backbone 'c3d'")
            self.backbone = compact_c3d(channels, widths, global_pool, temporal_bins, temporal_padding)
            features = widths[-1] * temporal_bins
        elif temporal_bins != 1 or motion_input:
            raise ValueError("temporal_bins and motion_input apply to backbone 'c3d' only, "
                             f"got backbone {backbone!r}")
        else:
            self.backbone, features = torchvision_backbone(backbone, temporal_padding, stem_pool)
        if inflate_from is not None:
            key = "Visual3DCNNEncoder.inflate_from"
            state = read_state_dict(inflate_from, key)
            if inflate_kernels is None:
                state = _frame_network_state(state)
            inflate_into(self.backbone, state, key, inflate_kernels)
        self.dropout = make_dropout(dropout_kind, dropout)
        self.project = nn.Linear(features, out_dim)
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last_3d)

    @property
    def config(self) -> dict:
        """dict: The init arguments but ``inflate_from`` and ``inflate_kernels``."""
        # The 2D weights only initialize: a rebuilt encoder takes its checkpoint's
        # weights, so its record must not need the 2D file.
        return self.recorded_arguments(leave_out=("inflate_from", "inflate_kernels"))

    def forward(self, video: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Returns the embedding ``(B, out_dim)`` of clips ``video`` ``(B, 3, T, H, W)``, scaled
        to about [-1, 1]; ``mask`` is unused: every clip has all its frames."""
        if self.motion_input:
            video = torch.cat([video, video - video.mean(2, keepdim=True)], dim=1)
        video = video.contiguous(memory_format=self.memory_format)
        return self.project(self.dropout(self.backbone(video)))


def _frame_network_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # A FrameCNNEncoder's (or its stage checkpoint's) convolutions sit under frame_net;
    # its projection is not part of the 2D network being inflated.
    kept = {name: t for name, t in state.items() if "frame_net." in name}
    return kept or state


class FrameCNNEncoder(nn.Module, HubMixin):
    """A per-frame 2D-CNN whose frame embeddings are averaged over time.

    The order-blind baseline for the 3D-CNN: with the same widths, the gap measures what
    temporal convolution adds.

    Args:
        input_dim: Input channels (3 for RGB frames).
        widths: Channels of each 2D block.
        global_pool: Pooling over each frame's positions.
        out_dim: Size of the returned embedding.
        dropout: Dropout before the projection.
        dropout_kind: A kind accepted by :func:`make_dropout`.
    """

    def __init__(self, input_dim: int = 3, widths: list[int] | None = None,
                 global_pool: GlobalPool = "max", out_dim: int = 64, dropout: float = 0.2,
                 dropout_kind: str = "bernoulli") -> None:
        super().__init__()
        self.out_dim = out_dim
        widths = [16, 32, 64] if widths is None else list(widths)
        blocks, channels = [], input_dim
        for width in widths:
            blocks += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.frame_net = nn.Sequential(*blocks, _global_pool(global_pool, 2), nn.Flatten())
        self.dropout = make_dropout(dropout_kind, dropout)
        self.project = nn.Linear(channels, out_dim)

    def forward(self, video: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Returns the embedding ``(B, out_dim)`` of clips ``video`` ``(B, 3, T, H, W)``, encoded
        frame by frame; ``mask`` is unused."""
        batch, channels, time, height, width = video.shape
        frames = video.transpose(1, 2).reshape(batch * time, channels, height, width)
        embedded = self.frame_net(frames).reshape(batch, time, -1).mean(1)
        return self.project(self.dropout(embedded))


class VisualSequenceEncoder(TextLSTMEncoder):
    """An LSTM over pre-extracted video features per frame (FACET, OpenFace).

    :class:`TextLSTMEncoder` over vectors, under a name that keeps configs readable.

    Args:
        input_dim: Feature size per frame.
        **kwargs: Any other :class:`TextLSTMEncoder` argument except ``input_kind``.
    """

    def __init__(self, input_dim: int, embed_dim: int = 64, hidden_dim: int = 64,
                 out_dim: int = 64, **kwargs) -> None:
        super().__init__(input_dim, input_kind="vectors", embed_dim=embed_dim,
                         hidden_dim=hidden_dim, out_dim=out_dim, **kwargs)

    @property
    def config(self) -> dict:
        """dict: The init arguments as :class:`TextLSTMEncoder` records them, defaults
        included, but the ``input_kind`` this class fixes."""
        given = super().config
        return {name: given.get(name, parameter.default)
                for name, parameter in inspect.signature(TextLSTMEncoder).parameters.items() if name != "input_kind"}
