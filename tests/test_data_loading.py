"""Batched reads from the cache yield exactly the batches of the row-at-a-time reader."""

from functools import partial

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

from mmsent.data import MultimodalDataModule, RawClipSource


class RowDataset(Dataset):
    """The reference reader: one Arrow row at a time, numpy formatting."""

    def __init__(self, rows, columns):
        self.rows = rows.select_columns(columns).with_format("numpy")

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[int(index)]


def reference_collate(examples, spec):
    """The reference collate: per-row numpy values stacked and padded in Python."""
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
            tensors = [torch.as_tensor(v) for v in values]
            padded = pad_sequence(tensors, batch_first=True, padding_value=pad)
            lengths = torch.tensor([len(t) for t in tensors])
            mask = torch.arange(padded.shape[1]) < lengths.unsqueeze(1)
            batch[modality] = padded.float() if padded.is_floating_point() else padded.long()
            mask &= present.unsqueeze(1)
        batch[f"{modality}_mask"] = mask
        batch[f"{modality}_present"] = present
    return batch


def reference_loader(data, name, shuffle):
    spec = data.spec
    columns = ["id", "transcript", "label", "clean_label"]
    for modality in spec.modalities:
        columns += [modality, f"{modality}_present"]
    rows = data.split(name)
    return DataLoader(RowDataset(rows, columns), batch_size=data.batch_size, shuffle=shuffle,
                      drop_last=shuffle and len(rows) > data.batch_size,
                      collate_fn=partial(reference_collate, spec=spec))


def assert_same_batches(ours, reference):
    assert len(ours) == len(reference)
    for mine, theirs in zip(ours, reference):
        assert mine.keys() == theirs.keys()
        for key, value in theirs.items():
            if isinstance(value, torch.Tensor):
                assert mine[key].dtype == value.dtype, key
                assert mine[key].shape == value.shape, key
                assert mine[key].is_contiguous(), key
                assert torch.equal(mine[key].nan_to_num(7.0), value.nan_to_num(7.0)), key
            else:
                assert mine[key] == value, key


def batches(loader, seed):
    torch.manual_seed(seed)
    return list(loader)


@pytest.mark.parametrize("budget_mb", [2048, 0])
def test_batched_reads_equal_row_reads(tiny_raw, tiny_cache, budget_mb):
    data = MultimodalDataModule(RawClipSource(str(tiny_raw), frames=8, frame_size=32, tokenizer="minilm"),
                                cache_dir=str(tiny_cache), batch_size=5, memory_budget_mb=budget_mb)
    held = set(data.dataset("train").in_memory)
    assert held == ({"text", "audio"} if budget_mb else set())
    for seed in (0, 3):
        assert_same_batches(batches(data.train_dataloader(), seed),
                            batches(reference_loader(data, "train", True), seed))
    assert_same_batches(list(data.val_dataloader()), list(reference_loader(data, "valid", False)))
    assert_same_batches(list(data.split_dataloader("train")),
                        list(reference_loader(data, "train", False)))


def test_a_training_subset_reads_the_same_rows(tiny_raw, tiny_cache):
    data = MultimodalDataModule(RawClipSource(str(tiny_raw), frames=8, frame_size=32, tokenizer="minilm"),
                                cache_dir=str(tiny_cache), batch_size=4, train_fraction=0.5, subset_seed=1)
    assert_same_batches(batches(data.train_dataloader(), 0),
                        batches(reference_loader(data, "train", True), 0))


def test_a_negative_memory_budget_is_refused(tiny_raw, tiny_cache):
    with pytest.raises(ValueError, match="data.memory_budget_mb"):
        MultimodalDataModule(RawClipSource(str(tiny_raw)), cache_dir=str(tiny_cache), memory_budget_mb=-1)


def test_a_batch_moves_to_a_device_without_rebuilding_its_string_lists():
    from mmsent.data.batches import move_batch

    batch = {"id": ["a", "b"], "transcript": ["x", "y"], "label": torch.zeros(2), "other": [torch.ones(1)]}
    moved = move_batch(batch, torch.device("meta"))
    assert moved["id"] is batch["id"] and moved["transcript"] is batch["transcript"]
    assert moved["label"].device.type == "meta" and moved["other"][0].device.type == "meta"
