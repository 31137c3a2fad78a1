"""The LightningDataModule: a prepared dataset served as padded dict batches."""

from __future__ import annotations

import multiprocessing
import os
from functools import partial

import numpy as np
import pytorch_lightning as pl
import torch
from jsonargparse.typing import PositiveInt
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from mmsent.data.batches import (
    DEFAULT_MEMORY_BUDGET_MB,
    ExampleDataset,
    IndexBatchSampler,
    collate,
    collate_columns,
    move_batch,
    pad_sequences,
)
from mmsent.data.cache import DecodeErrorPolicy, PreparedData, prepare
from mmsent.data.schema import DatasetSpec, Split
from mmsent.data.sources import DataSource
from mmsent.errors import check_choice
from mmsent.metrics import label_statistics


def model_modalities(module) -> list[str] | None:
    """Returns the modalities a task ``module`` (a LightningModule, or None) reads: its
    ``modality`` and fixed stages', or its model's encoders; None when it does not say (then
    every modality is read)."""
    if isinstance(getattr(module, "modality", None), str):
        return [module.modality, *getattr(module, "fixed", {})]
    encoders = getattr(getattr(module, "model", None), "encoders", None)
    return list(encoders) if encoders is not None else None


class MultimodalDataModule(pl.LightningDataModule):
    """Serves any :class:`DataSource` as dict batches, preparing and caching it once.

    Args:
        source (DataSource): Where the data comes from.
        cache_dir (str): Folder for prepared datasets.
        batch_size (PositiveInt): Samples per batch.
        num_workers (int): DataLoader worker processes.
        on_decode_error (DecodeErrorPolicy): What to do with a clip whose file fails to decode.
        prepare_workers (int): Processes decoding clips while preparing.
        train_fraction (float): Fraction of the training split used, fixed by ``subset_seed``.
        subset_seed (int): Seed of the training subset.
        predict_split (Split): The split ``predict`` runs on.
        multiprocessing_context (str | None): How loading and preparing processes start.
        memory_budget_mb (float): Per split, megabytes of non-frame modalities held in memory.
        pin_memory (bool): Page-locked batches for faster copies to a GPU, if there is one.
        modalities (list[str] | None): Those batches hold; None: what the model reads, else all.
    """

    def __init__(self, source: DataSource, cache_dir: str = "data/cache", batch_size: PositiveInt = 32,
                 num_workers: int = 0, on_decode_error: DecodeErrorPolicy = "mask", prepare_workers: int = 0,
                 train_fraction: float = 1.0, subset_seed: int = 0,
                 predict_split: Split = "test", multiprocessing_context: str | None = None,
                 memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB, pin_memory: bool = False,
                 modalities: list[str] | None = None) -> None:
        super().__init__()
        settings = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        if not 0.0 < train_fraction <= 1.0:
            raise ValueError(f"data.train_fraction must be in (0, 1], got {train_fraction}")
        check_choice("data.predict_split", predict_split, Split)
        methods = multiprocessing.get_all_start_methods()
        if multiprocessing_context is not None and multiprocessing_context not in methods:
            raise ValueError(f"data.multiprocessing_context must be one of {methods} or null, "
                             f"got {multiprocessing_context!r}")
        if memory_budget_mb < 0:
            raise ValueError(f"data.memory_budget_mb must be >= 0, got {memory_budget_mb}")
        vars(self).update(settings)
        self.modalities = None if modalities is None else list(modalities)
        self._prepared: PreparedData | None = None
        self._datasets: dict[tuple[str, tuple[str, ...]], ExampleDataset] = {}

    @property
    def prepared(self) -> PreparedData:
        """PreparedData: The cached dataset, prepared on first access."""
        if self._prepared is None:
            self._prepared = prepare(self.source, self.cache_dir, self.on_decode_error,
                                     num_workers=self.prepare_workers,
                                     multiprocessing_context=self.multiprocessing_context)
        return self._prepared

    @property
    def spec(self) -> DatasetSpec:
        """DatasetSpec: What the examples hold."""
        return self.prepared.spec

    @property
    def input_dims(self) -> dict[str, int]:
        """dict[str, int]: Per modality, the size its encoder takes (linked to the model)."""
        return dict(self.spec.input_dims)

    @property
    def label_statistics(self) -> dict[str, float]:
        """dict[str, float]: :func:`mmsent.metrics.label_statistics` of the training labels."""
        return label_statistics(self.split("train")["label"])

    def prepare_data(self) -> None:
        """Prepares the cache (once, in the main process)."""
        _ = self.prepared

    def split(self, name: str):
        """Returns the rows (a ``datasets.Dataset``) of the split ``name``, the training subset
        applied."""
        rows = self.prepared.splits[name]
        if name == "train" and self.train_fraction < 1.0:
            count = max(1, round(len(rows) * self.train_fraction))
            order = np.random.default_rng(self.subset_seed).permutation(len(rows))[:count]
            rows = rows.select(sorted(order.tolist()))
        return rows

    def read_modalities(self) -> list[str]:
        """The modalities batches hold, in the canonical order (see ``modalities``).

        Returns:
            list[str]: The modalities.

        Raises:
            ValueError: If ``data.modalities`` names one the dataset lacks.
        """
        wanted = self.modalities
        if wanted is None:
            wanted = model_modalities(self.trainer.lightning_module if self.trainer else None)
        if wanted is None:
            return self.spec.modalities
        unknown = sorted(set(wanted) - set(self.spec.modalities))
        if unknown:
            raise ValueError(f"data.modalities: {unknown} not in the prepared dataset, "
                             f"which holds {self.spec.modalities}")
        return [m for m in self.spec.modalities if m in wanted]

    def dataset(self, name: str) -> ExampleDataset:
        """Returns the batch-reading dataset of the split ``name``, its small modalities held in
        memory; built once and reused by every loader."""
        modalities = self.read_modalities()
        key = (name, tuple(modalities))
        if key not in self._datasets:
            self._datasets[key] = ExampleDataset(self.split(name), self.spec,
                                                 int(self.memory_budget_mb * 2**20), modalities)
        return self._datasets[key]

    def _sampler(self, dataset: ExampleDataset, shuffle: bool) -> DistributedSampler | None:
        """This process's share of a split when the trainer runs several (None otherwise).

        No clip is repeated, unlike Lightning's default sampler: training drops up to
        ``world_size - 1`` clips per epoch, evaluation lets shares differ by one row, so
        gathered metrics are the split's (see the Scaling out guide).
        """
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return None
        if shuffle:
            seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
            return DistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank,
                                      shuffle=True, seed=seed, drop_last=True)
        return UnrepeatedDistributedSampler(dataset, num_replicas=trainer.world_size,
                                            rank=trainer.global_rank, shuffle=False)

    def _loader(self, name: str, shuffle: bool, shard: bool = True) -> DataLoader:
        dataset = self.dataset(name)
        sampler = self._sampler(dataset, shuffle) if shard else None
        # A last training batch of one sample breaks batch norm. Decided on this process's
        # share (equal in every process), so batch counts match and a small share trains.
        drop_last = shuffle and len(dataset if sampler is None else sampler) > self.batch_size
        if sampler is None:
            # One process: each batch is one tensor of positions, gathered by ``__getitems__``.
            order = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
            batching = {"batch_sampler": IndexBatchSampler(order, self.batch_size, drop_last)}
        else:
            batching = {"batch_size": self.batch_size, "sampler": sampler, "drop_last": drop_last}
        return DataLoader(
            dataset, **batching, num_workers=self.num_workers,
            collate_fn=partial(collate_columns, spec=self.spec),
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            multiprocessing_context=self.multiprocessing_context if self.num_workers > 0 else None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split, shuffle=False)

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """Moves dict batches with :func:`~mmsent.data.batches.move_batch`, others as usual."""
        if not isinstance(batch, dict):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        return move_batch(batch, device)

    def split_dataloader(self, name: str) -> DataLoader:
        """Returns every sample of the split ``name``, in order, none dropped, alike in every
        process."""
        return self._loader(name, shuffle=False, shard=False)


__all__ = ["ExampleDataset", "MultimodalDataModule", "collate", "collate_columns",
           "model_modalities", "pad_sequences"]
