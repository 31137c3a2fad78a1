"""Initializing a 3D-CNN from a pretrained 2D-CNN by inflating its kernels over time.

The I3D recipe (Carreira & Zisserman 2017): a 2D kernel ``w`` of shape
``(out, in, kh, kw)`` becomes the 3D kernel ``(out, in, t, kh, kw)`` that repeats
``w / t`` at every one of its ``t`` time steps. On a clip whose frames are all the
same image, the 3D convolution then gives, at every time step away from the clip's
ends, exactly what the 2D one gives on that image, so the inflated network starts
from the 2D network's features ("boring videos" are understood as their frames).
Batch-norm parameters and statistics are copied as they are. A 3D convolution whose
input channels are a multiple of the 2D kernel's (the compact C3D's motion channels
beside the RGB frames) gets the kernel once for each group of channels, undivided:
on a still clip the motion channels are zero, so the response is again the 2D one.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from mmsent.errors import ConfigError, MissingFileError
from mmsent.models.config import check_finite

WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")


def read_state_dict(path: str | Path, key: str) -> dict[str, Tensor]:
    """Reads a state dict from a file without executing code in it.

    Args:
        path (str | Path): A ``.safetensors`` file, or a ``.pt``/``.pth``/``.ckpt``
            file read with ``torch.load(weights_only=True)``; a Lightning checkpoint's
            ``state_dict`` is taken from it.
        key (str): The config key that named the file, for errors.

    Returns:
        dict[str, Tensor]: Parameter and buffer name -> tensor.

    Raises:
        MissingFileError: If the file does not exist.
        ConfigError: If its suffix is unknown, it is unreadable, it holds no dict of
            tensors or a tensor is not finite.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{key}: no weights file at {path}")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ConfigError(f"{key}: {path} must end in one of {WEIGHT_SUFFIXES}")
    try:
        loaded = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(
            path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, EOFError, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{key}: {path} is unreadable, refused or corrupt ({reason})") from error
    except pickle.UnpicklingError as error:
        raise ConfigError(f"{key}: {path} refused: it holds objects other than tensors") from error
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ConfigError(f"{key}: {path} holds no state dict (a dict of tensors)")
    check_finite(loaded, f"{key}: {path}")
    return loaded


def inflate_kernel(kernel: Tensor, time: int) -> Tensor:
    """Tensor: A 2D kernel ``(out, in, kh, kw)`` repeated over ``time`` steps and
    divided by ``time``: ``(out, in, time, kh, kw)``."""
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

    Layers are matched in order: the k-th 2D convolution kernel of ``state`` (4-D
    tensors, in the state dict's order, or the k-th of ``kernel_names``) initializes
    the k-th ``nn.Conv3d`` of ``network``, and the k-th 2D batch norm (a name with
    ``running_mean``) the k-th ``nn.BatchNorm3d``. This is how a
    :class:`~mmsent.models.FrameCNNEncoder` maps onto the compact C3D of the same
    widths, and torchvision's ``resnet18`` onto ``r3d_18``. A convolution's bias is
    copied where both networks have one. Anything else (the classifier, the
    projection) keeps its initialization. A kernel whose input channels divide the 3D
    convolution's is repeated over them (see :func:`widen_input`).

    Args:
        network (nn.Module): The 3D network.
        state (dict[str, Tensor]): The 2D network's state dict.
        key (str): The config key that named the weights, for errors.
        kernel_names (list[str] | None): The names in ``state`` of the 2D kernels to
            inflate, one per 3D convolution in order, for a 2D network with more or
            other convolutions than the 3D one (a face detector's first three of
            four). None: every 4-D tensor of ``state``.

    Returns:
        int: How many convolutions were inflated.

    Raises:
        ValueError: If the numbers of convolutions or batch norms differ, a name in
            ``kernel_names`` is missing or not a 2D kernel, or a kernel's channels or
            spatial size do not fit its 3D counterpart, naming both.
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
