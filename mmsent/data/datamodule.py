"""The LightningDataModule: a prepared dataset served as padded dict batches."""

from __future__ import annotations

import multiprocessing
from functools import partial

import numpy as np
import pytorch_lightning as pl
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

from mmsent.data.cache import PreparedData, prepare
from mmsent.data.schema import SPLITS, DatasetSpec
from mmsent.data.sources import DataSource

DEFAULT_MEMORY_BUDGET_MB = 2048


def is_frames(modality: str, spec: DatasetSpec) -> bool:
    """Whether a modality holds raw video frames (the one kind always read from the cache).

    Args:
        modality (str): The modality name.
        spec (DatasetSpec): What the dataset holds.

    Returns:
        bool: True for ``video`` stored as uint8 frames.
    """
    return modality == "video" and spec.video_kind == "frames"


class ExampleDataset(Dataset):
    """One prepared split, read a whole batch at a time.

    Ids, transcripts, labels and presence flags are always held in memory; each
    modality of vectors, token ids or feature sequences is held in memory as
    tensors too while the total stays under ``memory_budget_bytes`` (counted in
    Arrow bytes), so an epoch touches no Arrow row for them. Frames, and whatever
    exceeds the budget, are read from the memory-mapped cache with one Arrow read
    per batch.

    Args:
        rows: A ``datasets.Dataset`` (memory-mapped Arrow).
        spec (DatasetSpec): What the rows hold.
        memory_budget_bytes (int): The most Arrow bytes of modality columns held in memory.
    """

    def __init__(self, rows, spec: DatasetSpec, memory_budget_bytes: int) -> None:
        self.ids = [str(value) for value in rows["id"]]
        self.transcripts = [str(value) for value in rows["transcript"]]
        self.labels = {key: torch.from_numpy(np.asarray(rows[key], dtype=np.float32))
                       for key in ("label", "clean_label")}
        self.present = {m: torch.from_numpy(np.asarray(rows[f"{m}_present"], dtype=bool))
                        for m in spec.modalities}
        self.in_memory: dict[str, list[torch.Tensor]] = {}
        budget = memory_budget_bytes
        for modality in spec.modalities:
            size = rows.data.column(modality).nbytes
            if not is_frames(modality, spec) and size <= budget:
                budget -= size
                column = rows.select_columns([modality]).with_format("numpy")[modality]
                self.in_memory[modality] = [torch.from_numpy(np.asarray(v)) for v in column]
        on_disk = [m for m in spec.modalities if m not in self.in_memory]
        self.on_disk = rows.select_columns(on_disk).with_format("numpy") if on_disk else None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitems__(self, indices: list[int]) -> dict:
        """Reads a batch as columns.

        Args:
            indices (list[int]): Row positions in the split.

        Returns:
            dict: Per key of :func:`collate_columns`, one entry per row.
        """
        positions = torch.as_tensor(indices, dtype=torch.long)
        columns = {"id": [self.ids[i] for i in indices],
                   "transcript": [self.transcripts[i] for i in indices],
                   **{key: values[positions] for key, values in self.labels.items()}}
        for modality, present in self.present.items():
            columns[f"{modality}_present"] = present[positions]
        for modality, values in self.in_memory.items():
            columns[modality] = [values[i] for i in indices]
        if self.on_disk is not None:
            columns.update(self.on_disk[list(map(int, indices))])
        return columns

    def __getitem__(self, index: int) -> dict:
        return {key: value[0] for key, value in self.__getitems__([int(index)]).items()}


def pad_sequences(sequences: list, pad_value=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pads variable-length sequences.

    Args:
        sequences (list): Arrays or tensors, each ``(L_i,)`` or ``(L_i, D)``, of one dtype.
        pad_value: The fill value.

    Returns:
        tuple[torch.Tensor, torch.Tensor]: The padded batch ``(B, L, ...)`` and the
        mask ``(B, L)``, true at real steps.
    """
    tensors = [torch.as_tensor(seq) for seq in sequences]
    padded = pad_sequence(tensors, batch_first=True, padding_value=pad_value)
    lengths = torch.tensor([len(t) for t in tensors])
    return padded, torch.arange(padded.shape[1]) < lengths.unsqueeze(1)


def collate_columns(columns: dict, spec: DatasetSpec) -> dict:
    """Builds a batch dict from a batch read as columns.

    Args:
        columns (dict): ``id`` and ``transcript`` (lists of str), ``label``,
            ``clean_label`` and ``<m>_present`` (one value per row), and per modality
            ``m`` its rows (a list of sequences, or a stacked uint8 frame array).
        spec (DatasetSpec): What the rows hold.

    Returns:
        dict: ``id``, ``transcript``, ``label``, ``clean_label`` and per modality ``m``:
        ``m`` (input tensor), ``m_mask`` (``(B, T)`` bool), ``m_present`` (``(B,)`` bool).
        Frames come as float ``(B, 3, T, H, W)`` scaled to [-1, 1].
    """
    batch = {
        "id": list(columns["id"]),
        "transcript": list(columns["transcript"]),
        "label": torch.as_tensor(columns["label"], dtype=torch.float32),
        "clean_label": torch.as_tensor(columns["clean_label"], dtype=torch.float32),
    }
    for modality in spec.modalities:
        present = torch.as_tensor(columns[f"{modality}_present"], dtype=torch.bool)
        values = columns[modality]
        if is_frames(modality, spec):
            frames = torch.as_tensor(np.asarray(values)).float().div_(127.5).sub_(1.0)
            batch[modality] = frames.permute(0, 4, 1, 2, 3).contiguous()
            mask = present.unsqueeze(1).expand(-1, frames.shape[1]).clone()
        else:
            pad = spec.pad_token_id if modality == "text" and spec.text_kind == "tokens" else 0
            padded, mask = pad_sequences(values, pad)
            batch[modality] = padded.float() if padded.is_floating_point() else padded.long()
            mask &= present.unsqueeze(1)
        batch[f"{modality}_mask"] = mask
        batch[f"{modality}_present"] = present
    return batch


def collate(examples: list[dict], spec: DatasetSpec) -> dict:
    """Builds a batch dict from single rows (see :func:`collate_columns`).

    Args:
        examples (list[dict]): Rows, each with the keys of :func:`collate_columns`.
        spec (DatasetSpec): What the rows hold.

    Returns:
        dict: The batch, as :func:`collate_columns` builds it.
    """
    return collate_columns({key: [e[key] for e in examples] for key in examples[0]}, spec)


class MultimodalDataModule(pl.LightningDataModule):
    """Serves any :class:`DataSource` as dict batches, preparing and caching it once.

    Args:
        source (DataSource): Where the data comes from (raw clips, generated clips,
            MMSA pickles, SDK files, feature tables).
        cache_dir (str): Folder for prepared datasets.
        batch_size (int): Samples per batch.
        num_workers (int): DataLoader worker processes.
        on_decode_error (str): ``"mask"``, ``"skip"`` or ``"raise"`` for a clip whose
            file fails to decode.
        prepare_workers (int): Processes decoding clips while preparing.
        train_fraction (float): Use this fraction of the training split (for
            data-efficiency studies); the subset is fixed by ``subset_seed``.
        subset_seed (int): Seed of the training subset.
        predict_split (str): The split ``predict`` runs on.
        multiprocessing_context (str | None): How worker processes start, for the
            DataLoader and for preparation: ``"spawn"``, ``"forkserver"`` or
            ``"fork"``; None takes the platform's default.
        memory_budget_mb (float): Per split, the most megabytes (Arrow size) of
            vectors, token ids and feature sequences held in memory as tensors; the
            rest, and video frames always, are read from the memory-mapped cache a
            batch at a time.
        pin_memory (bool): Page-locked batches for faster copies to a GPU; ignored
            (with nothing to pin to) when no GPU is present.
    """

    def __init__(self, source: DataSource, cache_dir: str = "data/cache", batch_size: int = 32,
                 num_workers: int = 0, on_decode_error: str = "mask", prepare_workers: int = 0,
                 train_fraction: float = 1.0, subset_seed: int = 0,
                 predict_split: str = "test", multiprocessing_context: str | None = None,
                 memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB, pin_memory: bool = False) -> None:
        super().__init__()
        if not 0.0 < train_fraction <= 1.0:
            raise ValueError(f"data.train_fraction must be in (0, 1], got {train_fraction}")
        if predict_split not in SPLITS:
            raise ValueError(f"data.predict_split must be one of {SPLITS}, got {predict_split!r}")
        methods = multiprocessing.get_all_start_methods()
        if multiprocessing_context is not None and multiprocessing_context not in methods:
            raise ValueError(f"data.multiprocessing_context must be one of {methods} or null, "
                             f"got {multiprocessing_context!r}")
        self.source = source
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.on_decode_error = on_decode_error
        self.prepare_workers = prepare_workers
        self.train_fraction = train_fraction
        self.subset_seed = subset_seed
        self.predict_split = predict_split
        if memory_budget_mb < 0:
            raise ValueError(f"data.memory_budget_mb must be >= 0, got {memory_budget_mb}")
        self.multiprocessing_context = multiprocessing_context
        self.memory_budget_mb = memory_budget_mb
        self.pin_memory = pin_memory
        self._prepared: PreparedData | None = None
        self._datasets: dict[str, ExampleDataset] = {}

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

    def prepare_data(self) -> None:
        """Prepares the cache (once, in the main process)."""
        _ = self.prepared

    def split(self, name: str):
        """The rows of one split, the training subset applied.

        Args:
            name (str): ``"train"``, ``"valid"`` or ``"test"``.

        Returns:
            datasets.Dataset: The rows.
        """
        rows = self.prepared.splits[name]
        if name == "train" and self.train_fraction < 1.0:
            count = max(1, round(len(rows) * self.train_fraction))
            order = np.random.default_rng(self.subset_seed).permutation(len(rows))[:count]
            rows = rows.select(sorted(order.tolist()))
        return rows

    def dataset(self, name: str) -> ExampleDataset:
        """The batch-reading dataset of one split, built once and reused by every loader.

        Args:
            name (str): ``"train"``, ``"valid"`` or ``"test"``.

        Returns:
            ExampleDataset: The split, its small modalities held in memory.
        """
        if name not in self._datasets:
            self._datasets[name] = ExampleDataset(self.split(name), self.spec,
                                                  int(self.memory_budget_mb * 2**20))
        return self._datasets[name]

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        dataset = self.dataset(name)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            # A last training batch of one sample breaks batch norm.
            drop_last=shuffle and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            collate_fn=partial(collate_columns, spec=self.spec),
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            multiprocessing_context=self.multiprocessing_context if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split, shuffle=False)

    def split_dataloader(self, name: str) -> DataLoader:
        """Every sample of one split, in order, none dropped (unlike training batches).

        Args:
            name (str): ``"train"``, ``"valid"`` or ``"test"``.

        Returns:
            DataLoader: The split's batches.
        """
        return self._loader(name, shuffle=False)
