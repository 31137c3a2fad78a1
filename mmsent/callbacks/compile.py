"""Compiling a task's networks with ``torch.compile`` from the config."""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl


class CompileParts(pl.Callback):
    """Compiles the networks of a task in place with ``torch.compile`` before it runs.

    Parameter names are kept, so checkpoints with and without compilation interchange.
    It pays off on GPUs and large backbones, rarely for the small models on a CPU.

    In YAML::

        trainer:
          callbacks:
            - class_path: mmsent.callbacks.CompileParts
              init_args: {parts: [video], mode: max-autotune}

    Args:
        parts (list[str] | None): Names from the task's ``parameter_parts()`` (``text``,
            ``audio``, ``video``, ``fusion``, ``head``, ...); None compiles every part.
        backend (str | Callable): The ``torch.compile`` backend, by name or as a callable.
        mode (str | None): The ``torch.compile`` mode, e.g. ``reduce-overhead``, ``max-autotune``.
        dynamic (bool | None): Compile for varying batch and sequence sizes; None: torch decides.
    """

    def __init__(self, parts: list[str] | None = None, backend: str | Callable = "inductor",
                 mode: str | None = None, dynamic: bool | None = None) -> None:
        self.parts = parts
        self.options = {"backend": backend, "mode": mode, "dynamic": dynamic}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        available = pl_module.parameter_parts()
        names = list(available) if self.parts is None else self.parts
        unknown = sorted(set(names) - set(available))
        if unknown:
            raise ValueError(f"CompileParts.parts names {unknown}, but this task's parts are "
                             f"{sorted(available)}")
        for name in names:
            available[name].compile(**self.options)
