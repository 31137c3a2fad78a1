"""Initializing a 3D-CNN from a pretrained 2D-CNN by inflating its kernels over time.

The I3D recipe (Carreira & Zisserman 2017): a 2D kernel ``(out, in, kh, kw)`` becomes
the 3D kernel ``(out, in, t, kh, kw)`` repeating ``w / t`` at each of its ``t`` steps;
batch norms are copied. Input channels that are a multiple of the kernel's (the motion
channels) get the kernel once per group, undivided: on a still clip motion is zero.

On a still clip one inflated convolution reproduces the 2D one at every interior frame;
zero temporal padding gives ``2/3`` of it at the end frames (``t = 3``). The whole
network reproduces the 2D network's features (to float rounding) only with
``temporal_padding="replicate"`` (:class:`TimeReplicateConv3d`) and, for ``r3d_18``,
``resnet18``'s stem max-pool (:func:`add_image_stem_pool`). The distances without them
are in the tool-kit guide.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from mmsent.errors import ConfigError
from mmsent.models.config import check_finite
from mmsent.models.weights import read_weights_file

WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")


def read_state_dict(path: str | Path, key: str) -> dict[str, Tensor]:
    """Reads a state dict from a file without executing code in it.

    Args:
        path: A file with one of :data:`WEIGHT_SUFFIXES`, read as data; of a Lightning
            checkpoint, its ``state_dict``.
        key: The config key that named the file, for errors.

    Returns:
        Parameter and buffer name -> tensor.

    Raises:
        MissingFileError: If the file does not exist.
        ConfigError: If its suffix is unknown, it is unreadable, it holds no dict of
            tensors or a tensor is not finite.
    """
    path = Path(path)
    if path.suffix not in WEIGHT_SUFFIXES and path.is_file():
        raise ConfigError(f"{key}: {path} must end in one of {WEIGHT_SUFFIXES}")
    loaded = read_weights_file(path, key, "weights file")
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ConfigError(f"{key}: {path} holds no state dict (a dict of tensors)")
    check_finite(loaded, f"{key}: {path}")
    return loaded


class TimeReplicateConv3d(nn.Conv3d):
    """A 3D convolution that pads time by repeating the end frames, and space with zeros.

    An inflated kernel then reproduces the 2D convolution on a still clip at the end
    frames too. Parameters and their names are those of :class:`torch.nn.Conv3d`.

    Args:
        *args: As for :class:`torch.nn.Conv3d`; ``padding`` must be numeric.
        **kwargs: As for :class:`torch.nn.Conv3d`.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(self.padding, str):
            raise TypeError(f"TimeReplicateConv3d needs numeric padding, got {self.padding!r}")
        self.time_padding = self.padding[0]
        self.padding = (0, *self.padding[1:])

    def forward(self, clip: Tensor) -> Tensor:
        padding = self.time_padding
        # F.pad lists the last dimension first: (width, width, height, height, time, time).
        return super().forward(nn.functional.pad(clip, (0, 0, 0, 0, padding, padding), mode="replicate"))

    @classmethod
    def like(cls, conv: nn.Conv3d) -> TimeReplicateConv3d:
        """TimeReplicateConv3d: A copy of ``conv``, weights included, padding time by replication."""
        copy = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                   padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                   bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
        copy.load_state_dict(conv.state_dict())
        return copy


def replicate_time_padding_(network: nn.Module) -> int:
    """Replaces in place every 3D convolution of ``network`` (e.g. torchvision's ``r3d_18``)
    that zero-pads time by a :class:`TimeReplicateConv3d`; returns how many it replaced."""
    replaced = 0
    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            if (isinstance(child, nn.Conv3d) and not isinstance(child, TimeReplicateConv3d)
                    and not isinstance(child.padding, str)
                    and child.padding[0] > 0 and child.padding_mode == "zeros"):
                setattr(parent, name, TimeReplicateConv3d.like(child))
                replaced += 1
    return replaced


def add_image_stem_pool(network: nn.Module) -> None:
    """Appends ``resnet18``'s stem max-pool (3x3, stride 2, over space) to a video ResNet's stem.

    Parameter names are kept, so Kinetics or inflated weights still load.

    Args:
        network: A torchvision video ResNet, with a ``stem`` ``nn.Sequential``.

    Raises:
        TypeError: If the network has no such stem.
    """
    stem = getattr(network, "stem", None)
    if not isinstance(stem, nn.Sequential):
        raise TypeError(f"stem_pool: {type(network).__name__} has no torchvision video ResNet stem")
    stem.append(nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)))


def inflate_kernel(kernel: Tensor, time: int) -> Tensor:
    """Tensor: A 2D kernel repeated over ``time`` steps and divided by ``time``."""
    return kernel.unsqueeze(2).repeat(1, 1, time, 1, 1) / time


def widen_input(kernel: Tensor, in_channels: int) -> Tensor:
    """Tensor: ``kernel`` ``(out, in, ...)`` repeated along its input channels to
    ``in_channels`` when that is a multiple of ``in``; otherwise unchanged."""
    groups, rest = divmod(in_channels, kernel.shape[1])
    if rest or groups <= 1:
        return kernel
    return kernel.repeat(1, groups, *([1] * (kernel.ndim - 2)))


def inflate_into(network: nn.Module, state: dict[str, Tensor], key: str,
                 kernel_names: list[str] | None = None) -> int:
    """Initializes a 3D network's convolutions and batch norms from a 2D network's.

    Layers are matched in order: the k-th 2D kernel (4-D tensor) initializes the k-th
    ``nn.Conv3d``, the k-th 2D batch norm the k-th ``nn.BatchNorm3d``; biases are copied
    where both have one, and anything else keeps its initialization.

    Args:
        network: The 3D network.
        state: The 2D network's state dict.
        key: The config key that named the weights, for errors.
        kernel_names: The names of the 2D kernels to inflate, one per 3D convolution,
            for a 2D network with more or other convolutions. None: every 4-D tensor.

    Returns:
        How many convolutions were inflated.

    Raises:
        ValueError: If the counts of convolutions or batch norms differ, a name is
            missing or not a 2D kernel, or a kernel does not fit, naming both.
    """
    convs = [m for m in network.modules() if isinstance(m, nn.Conv3d)]
    if kernel_names is None:
        kernels = [(name, t) for name, t in state.items() if t.ndim == 4]
    else:
        kernels = [(name, _named_kernel(state, name, key)) for name in kernel_names]
    if len(convs) != len(kernels):
        raise ValueError(f"{key}: the 2D weights hold {len(kernels)} convolution kernels, "
                         f"the 3D network has {len(convs)} convolutions")
    norms = [m for m in network.modules() if isinstance(m, nn.BatchNorm3d)]
    norm_names = [name[: -len("running_mean")] for name in state if name.endswith("running_mean")]
    if norm_names and len(norm_names) != len(norms):
        raise ValueError(f"{key}: the 2D weights hold {len(norm_names)} batch norms, "
                         f"the 3D network has {len(norms)}")
    with torch.no_grad():
        for conv, (name, kernel) in zip(convs, kernels, strict=True):
            out_ch, in_ch, time, height, width = conv.weight.shape
            kernel = widen_input(kernel, in_ch)
            if kernel.shape != (out_ch, in_ch, height, width):
                raise ValueError(f"{key}: 2D kernel {name} {tuple(kernel.shape)} does not fit a 3D kernel "
                                 f"{tuple(conv.weight.shape)}")
            conv.weight.copy_(inflate_kernel(kernel, time))
            bias = state.get(name[: -len("weight")] + "bias")
            if conv.bias is not None and bias is not None:
                conv.bias.copy_(bias)
        for norm, prefix in zip(norms, norm_names, strict=False):
            for field in ("weight", "bias", "running_mean", "running_var"):
                source = state.get(prefix + field)
                target = getattr(norm, field)
                if source is not None and target is not None:
                    if source.shape != target.shape:
                        raise ValueError(f"{key}: batch norm {prefix}{field} {tuple(source.shape)} does "
                                         f"not fit {tuple(target.shape)}")
                    target.copy_(source)
    return len(convs)


def _named_kernel(state: dict[str, Tensor], name: str, key: str) -> Tensor:
    if name not in state:
        raise ValueError(f"{key}: the 2D weights hold no {name!r}; 4-D tensors there: "
                         f"{[n for n, t in state.items() if t.ndim == 4]}")
    if state[name].ndim != 4:
        raise ValueError(f"{key}: {name} {tuple(state[name].shape)} is not a 2D convolution kernel")
    return state[name]
