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
from mmsent.metrics import label_statistics


class ExampleDataset(Dataset):
    """Rows of one prepared split as numpy arrays.

    Args:
        rows: A ``datasets.Dataset`` (memory-mapped Arrow).
        columns (list[str]): The columns to read.
    """

    def __init__(self, rows, columns: list[str]) -> None:
        self.rows = rows.select_columns(columns).with_format("numpy")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[int(index)]


def pad_sequences(sequences: list[np.ndarray], pad_value=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pads variable-length sequences.

    Args:
        sequences (list[np.ndarray]): Each ``(L_i,)`` or ``(L_i, D)``, of one dtype.
        pad_value: The fill value.

    Returns:
        tuple[torch.Tensor, torch.Tensor]: The padded batch ``(B, L, ...)`` and the
        mask ``(B, L)``, true at real steps.
    """
    tensors = [torch.as_tensor(seq) for seq in sequences]
    padded = pad_sequence(tensors, batch_first=True, padding_value=pad_value)
    lengths = torch.tensor([len(t) for t in tensors])
    return padded, torch.arange(padded.shape[1]) < lengths.unsqueeze(1)


def collate(examples: list[dict], spec: DatasetSpec) -> dict:
    """Builds a batch dict: per modality the padded input, a time mask and presence.

    Args:
        examples (list[dict]): Rows from :class:`ExampleDataset`.
        spec (DatasetSpec): What the rows hold.

    Returns:
        dict: ``id``, ``transcript``, ``label``, ``clean_label`` and per modality ``m``:
        ``m`` (input tensor), ``m_mask`` (``(B, T)`` bool), ``m_present`` (``(B,)`` bool).
        Frames come as float ``(B, 3, T, H, W)`` scaled to [-1, 1].
    """
    batch = {
        "id": [str(e["id"]) for e in examples],
        "transcript": [str(e["transcript"]) for e in examples],
        "label": torch.tensor(np.array([e["label"] for e in examples]), dtype=torch.float32),
        "clean_label": torch.tensor(np.array([e["clean_label"] for e in examples]), dtype=torch.float32),
    }
    for modality in spec.modalities:
        present = torch.tensor(np.array([bool(e[f"{modality}_present"]) for e in examples]))
        values = [e[modality] for e in examples]
        if modality == "video" and spec.video_kind == "frames":
            frames = torch.from_numpy(np.stack(values)).float().div_(127.5).sub_(1.0)
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
    """

    def __init__(self, source: DataSource, cache_dir: str = "data/cache", batch_size: int = 32,
                 num_workers: int = 0, on_decode_error: str = "mask", prepare_workers: int = 0,
                 train_fraction: float = 1.0, subset_seed: int = 0,
                 predict_split: str = "test", multiprocessing_context: str | None = None) -> None:
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
        self.multiprocessing_context = multiprocessing_context
        self._prepared: PreparedData | None = None

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
        """dict[str, float]: The training labels' median, mean and majority classes
        (:func:`mmsent.metrics.label_statistics`; linked to the model)."""
        return label_statistics(self.split("train")["label"])

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

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        spec = self.spec
        columns = ["id", "transcript", "label", "clean_label"]
        for modality in spec.modalities:
            columns += [modality, f"{modality}_present"]
        rows = self.split(name)
        return DataLoader(
            ExampleDataset(rows, columns),
            batch_size=self.batch_size,
            shuffle=shuffle,
            # A last training batch of one sample breaks batch norm.
            drop_last=shuffle and len(rows) > self.batch_size,
            num_workers=self.num_workers,
            collate_fn=partial(collate, spec=spec),
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
