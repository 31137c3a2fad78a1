"""Initializing a 3D-CNN from a pretrained 2D-CNN by inflating its kernels over time.

The I3D recipe (Carreira & Zisserman 2017): a 2D kernel ``w`` of shape
``(out, in, kh, kw)`` becomes the 3D kernel ``(out, in, t, kh, kw)`` that repeats
``w / t`` at every one of its ``t`` time steps. On a clip whose frames are all the
same image, the 3D convolution then gives, at every time step away from the clip's
ends, exactly what the 2D one gives on that image, so the inflated network starts
from the 2D network's features ("boring videos" are understood as their frames).
Batch-norm parameters and statistics are copied as they are.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

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
        FileNotFoundError: If the file does not exist.
        ValueError: If its suffix is unknown or it holds no dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}: no weights file at {path}")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"{key}: {path} must end in one of {WEIGHT_SUFFIXES}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ValueError(f"{key}: {path} holds no state dict (a dict of tensors)")
    return loaded


def inflate_kernel(kernel: Tensor, time: int) -> Tensor:
    """Tensor: A 2D kernel ``(out, in, kh, kw)`` repeated over ``time`` steps and
    divided by ``time``: ``(out, in, time, kh, kw)``."""
    return kernel.unsqueeze(2).repeat(1, 1, time, 1, 1) / time


def inflate_into(network: nn.Module, state: dict[str, Tensor], key: str) -> int:
    """Initializes a 3D network's convolutions and batch norms from a 2D network's.

    Layers are matched in order: the k-th 2D convolution kernel of ``state`` (4-D
    tensors, in the state dict's order) initializes the k-th ``nn.Conv3d`` of
    ``network``, and the k-th 2D batch norm (a name with ``running_mean``) the k-th
    ``nn.BatchNorm3d``. This is how a :class:`~mmsent.models.FrameCNNEncoder` maps onto
    the compact C3D of the same widths, and torchvision's ``resnet18`` onto ``r3d_18``.
    Anything else (the classifier, the projection) keeps its initialization.

    Args:
        network (nn.Module): The 3D network.
        state (dict[str, Tensor]): The 2D network's state dict.
        key (str): The config key that named the weights, for errors.

    Returns:
        int: How many convolutions were inflated.

    Raises:
        ValueError: If the numbers of convolutions or batch norms differ, or a kernel's
            channels or spatial size do not fit its 3D counterpart, naming both.
    """
    convs = [m for m in network.modules() if isinstance(m, nn.Conv3d)]
    kernels = [(name, t) for name, t in state.items() if t.ndim == 4]
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
