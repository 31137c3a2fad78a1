"""Batches from a prepared split: batched reads, small modalities held in memory, padding."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import BatchSampler, Dataset

from mmsent.data.schema import DatasetSpec

DEFAULT_MEMORY_BUDGET_MB = 2048


def is_frames(modality: str, spec: DatasetSpec) -> bool:
    """Returns whether ``modality`` holds raw uint8 video frames in ``spec`` (always read from
    the cache)."""
    return modality == "video" and spec.video_kind == "frames"


def pad_value(modality: str, spec: DatasetSpec):
    """Returns the padding value of ``modality`` in ``spec``: the pad id for token ids, else 0."""
    return spec.pad_token_id if modality == "text" and spec.text_kind == "tokens" else 0


class PaddedColumn:
    """A modality's sequences held in memory as one tensor padded to the longest.

    A batch is one indexed copy of it, without a Python step per sequence.

    Args:
        sequences (list[torch.Tensor]): One ``(L_i,)`` or ``(L_i, D)`` tensor per row.
        pad: The fill value.
        present (torch.Tensor): ``(N,)`` bool, whether each row has the modality.
    """

    def __init__(self, sequences: list[torch.Tensor], pad, present: torch.Tensor) -> None:
        values = pad_sequence(sequences, batch_first=True, padding_value=pad)
        self.values = values.float() if values.is_floating_point() else values.long()
        self.lengths = torch.tensor([len(sequence) for sequence in sequences])
        self.mask = (torch.arange(self.values.shape[1]) < self.lengths.unsqueeze(1)) & present.unsqueeze(1)

    @property
    def nbytes(self) -> int:
        """int: The bytes the padded tensors take."""
        return sum(t.numel() * t.element_size() for t in (self.values, self.mask))

    def batch(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the rows at ``positions`` (``(B,)`` long), padded to their longest:
        ``(B, L, ...)`` and the mask ``(B, L)``."""
        longest = int(self.lengths[positions].max())
        return (torch.index_select(self.values.narrow(1, 0, longest), 0, positions),
                torch.index_select(self.mask.narrow(1, 0, longest), 0, positions))


class IndexBatchSampler(BatchSampler):
    """:class:`torch.utils.data.BatchSampler` yielding each batch as one ``(B,)`` long tensor.

    The batches are those of a ``BatchSampler`` (same random draws, same arguments,
    so Lightning can rebuild it around another sampler), without a Python int per row.
    """

    def __iter__(self):
        order = torch.as_tensor(list(self.sampler), dtype=torch.long)
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        yield from order[:stop].split(self.batch_size)


class ExampleDataset(Dataset):
    """One prepared split, read a whole batch at a time.

    Non-frame modalities are held in memory as :class:`PaddedColumn` while they fit the
    budget (the larger of Arrow and tensor size); the rest takes one Arrow read per batch.

    Args:
        rows: A ``datasets.Dataset`` (memory-mapped Arrow).
        spec (DatasetSpec): What the rows hold.
        memory_budget_bytes (int): The most bytes of modality columns held in memory.
        modalities (list[str] | None): The modalities to read; None: all of ``spec``.
    """

    def __init__(self, rows, spec: DatasetSpec, memory_budget_bytes: int,
                 modalities: list[str] | None = None) -> None:
        modalities = spec.modalities if modalities is None else modalities
        self.ids = [str(value) for value in rows["id"]]
        self.transcripts = [str(value) for value in rows["transcript"]]
        self.labels = {key: torch.from_numpy(np.asarray(rows[key], dtype=np.float32))
                       for key in ("label", "clean_label")}
        self.present = {m: torch.from_numpy(np.asarray(rows[f"{m}_present"], dtype=bool))
                        for m in modalities}
        self.in_memory: dict[str, PaddedColumn] = {}
        budget = memory_budget_bytes
        for modality in modalities:
            size = rows.data.column(modality).nbytes
            if is_frames(modality, spec) or size > budget:
                continue
            column = rows.select_columns([modality]).with_format("numpy")[modality]
            held = PaddedColumn([torch.from_numpy(np.asarray(v)) for v in column], pad_value(modality, spec),
                                self.present[modality])
            if max(size, held.nbytes) <= budget:
                budget -= max(size, held.nbytes)
                self.in_memory[modality] = held
        on_disk = [m for m in modalities if m not in self.in_memory]
        self.on_disk = rows.select_columns(on_disk).with_format("numpy") if on_disk else None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitems__(self, indices: list[int] | torch.Tensor) -> dict:
        """The rows at ``indices`` as columns, the input of :func:`collate_columns`."""
        positions = torch.as_tensor(indices, dtype=torch.long)
        rows = positions.tolist()
        columns = {"id": [self.ids[i] for i in rows],
                   "transcript": [self.transcripts[i] for i in rows],
                   **{key: torch.index_select(values, 0, positions) for key, values in self.labels.items()}}
        for modality, present in self.present.items():
            columns[f"{modality}_present"] = torch.index_select(present, 0, positions)
        for modality, held in self.in_memory.items():
            columns[modality], columns[f"{modality}_mask"] = held.batch(positions)
        if self.on_disk is not None:
            columns.update(self.on_disk[rows])
        return columns

    def __getitem__(self, index: int) -> dict:
        columns = self.__getitems__([int(index)])
        for modality in self.in_memory:
            columns[modality] = [columns[modality][0, :int(self.in_memory[modality].lengths[int(index)])]]
            del columns[f"{modality}_mask"]
        return {key: value[0] for key, value in columns.items()}


def pad_sequences(sequences: list, pad_value=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``sequences`` (arrays or tensors of one dtype, each ``(L_i,)`` or ``(L_i, D)``)
    right-padded with ``pad_value``: ``(B, L, ...)`` and the mask ``(B, L)``."""
    tensors = [torch.as_tensor(seq) for seq in sequences]
    padded = pad_sequence(tensors, batch_first=True, padding_value=pad_value)
    lengths = torch.tensor([len(t) for t in tensors])
    return padded, torch.arange(padded.shape[1]) < lengths.unsqueeze(1)


def to_row(example: dict, spec: DatasetSpec) -> dict:
    """Returns ``example`` as a row matching :func:`~mmsent.data.cache.arrow_features` of
    ``spec``: a missing (``None``) modality gets a placeholder and a false presence flag."""
    row = {key: example[key] for key in ("id", "split", "transcript", "label", "clean_label")}
    for modality in spec.modalities:
        value = example.get(modality)
        present = value is not None and len(value) > 0
        row[f"{modality}_present"] = present
        row[modality] = value if present else _placeholder(modality, spec)
    return row


def _placeholder(modality: str, spec: DatasetSpec):
    if modality == "text" and spec.text_kind == "tokens":
        return [spec.pad_token_id]
    if modality == "video" and spec.video_kind == "frames":
        return np.zeros(spec.extras["frame_shape"], dtype=np.uint8)
    return np.zeros((1, spec.input_dims[modality]), dtype=np.float32)


def collate_columns(columns: dict, spec: DatasetSpec) -> dict:
    """Builds a batch dict from a batch read as columns.

    Args:
        columns (dict): ``id``, ``transcript``, ``label``, ``clean_label``, ``<m>_present``
            per row, and per modality ``m`` a list of sequences, stacked uint8 frames,
            or a padded tensor with its mask under ``<m>_mask``.
        spec (DatasetSpec): What the rows hold.

    Returns:
        dict: ``id``, ``transcript``, ``label``, ``clean_label`` and per modality ``m``:
        ``m``, ``m_mask`` ``(B, T)`` and ``m_present`` ``(B,)``. Frames come as float
        ``(B, 3, T, H, W)`` scaled to [-1, 1].
    """
    batch = {"id": list(columns["id"]), "transcript": list(columns["transcript"]),
             "label": torch.as_tensor(columns["label"], dtype=torch.float32),
             "clean_label": torch.as_tensor(columns["clean_label"], dtype=torch.float32)}
    for modality in (m for m in spec.modalities if m in columns):
        present = torch.as_tensor(columns[f"{modality}_present"], dtype=torch.bool)
        values = columns[modality]
        if is_frames(modality, spec):
            frames = torch.as_tensor(np.asarray(values)).float().div_(127.5).sub_(1.0)
            batch[modality] = frames.permute(0, 4, 1, 2, 3).contiguous()
            mask = present.unsqueeze(1).expand(-1, frames.shape[1]).clone()
        elif f"{modality}_mask" in columns:
            batch[modality], mask = values, columns[f"{modality}_mask"]
        else:
            padded, mask = pad_sequences(values, pad_value(modality, spec))
            batch[modality] = padded.float() if padded.is_floating_point() else padded.long()
            mask &= present.unsqueeze(1)
        batch[f"{modality}_mask"] = mask
        batch[f"{modality}_present"] = present
    return batch


def collate(examples: list[dict], spec: DatasetSpec) -> dict:
    """Returns the batch :func:`collate_columns` builds from single rows ``examples``, each
    with its keys, under ``spec``."""
    return collate_columns({key: [e[key] for e in examples] for key in examples[0]}, spec)


def move_batch(batch: dict, device: torch.device) -> dict:
    """Returns ``batch`` with its tensors moved to ``device`` as Lightning does; its lists of
    strings stay the same objects.

    Lightning's generic walk visits every string, a visible cost of a small model's step.
    """
    # Imported here: scoring collates batches too, and it runs without Lightning.
    from lightning_fabric.utilities.apply_func import move_data_to_device

    return {key: value if isinstance(value, list) and all(isinstance(item, str) for item in value)
            else move_data_to_device(value, device) for key, value in batch.items()}
