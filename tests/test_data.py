"""Preparation, caching, batches, and the handling of bad input."""

import shutil
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch

from mmsent.data import MultimodalDataModule, RawClipSource, sources
from mmsent.data.cache import prepare
from mmsent.data.datamodule import pad_sequences
from mmsent.data.media import DecodeError


@pytest.fixture()
def raw_copy(tiny_raw, tmp_path):
    """A private copy of the tiny dataset, safe to damage."""
    root = tmp_path / "raw"
    shutil.copytree(tiny_raw, root)
    return root


def count_decodes(monkeypatch):
    calls = {"video": 0}
    original = sources.decode_frames

    def counting(*args, **kwargs):
        calls["video"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(sources, "decode_frames", counting)
    return calls


def test_batches_hold_every_modality_with_masks(tiny_raw, tmp_path):
    data = MultimodalDataModule(RawClipSource(str(tiny_raw), frames=8, frame_size=32),
                                cache_dir=str(tmp_path), batch_size=4)
    batch = next(iter(data.train_dataloader()))
    assert batch["video"].shape == (4, 3, 8, 32, 32)
    assert batch["video"].min() >= -1 and batch["video"].max() <= 1
    assert batch["audio"].shape[0] == 4 and batch["audio"].shape[2] == 40
    assert batch["text"].dtype.is_floating_point is False
    assert batch["text_mask"].sum(1).min() >= 1
    assert batch["label"].abs().max() <= 3
    assert np.isfinite(batch["clean_label"].numpy()).all()
    assert set(data.input_dims) == {"text", "audio", "video"}


def test_training_batches_are_full_and_split_loaders_hold_every_sample(tiny_raw, tmp_path):
    data = MultimodalDataModule(RawClipSource(str(tiny_raw), frames=8, frame_size=32),
                                cache_dir=str(tmp_path), batch_size=5)
    data.setup("fit")
    train_size = len(data.split("train"))
    assert train_size % 5, "the tiny training split must leave a partial batch for this test"
    assert all(len(b["label"]) == 5 for b in data.train_dataloader())
    ordered = [i for b in data.split_dataloader("train") for i in b["id"]]
    assert ordered == list(data.split("train")["id"])


def test_unchanged_settings_reuse_the_cache_and_changed_ones_rebuild(tiny_raw, tmp_path, monkeypatch):
    calls = count_decodes(monkeypatch)
    first = prepare(RawClipSource(str(tiny_raw), frames=8, frame_size=32), tmp_path)
    decoded = calls["video"]
    assert decoded == 48
    again = prepare(RawClipSource(str(tiny_raw), frames=8, frame_size=32), tmp_path)
    assert calls["video"] == decoded, "an unchanged setting must not decode again"
    assert again.path == first.path
    changed = prepare(RawClipSource(str(tiny_raw), frames=4, frame_size=32), tmp_path)
    assert calls["video"] == 2 * decoded
    assert changed.path != first.path
    assert np.asarray(changed.splits["train"][0]["video"]).shape == (4, 32, 32, 3)


def test_a_changed_label_file_rebuilds(raw_copy, tmp_path):
    first = prepare(RawClipSource(str(raw_copy), frames=4, frame_size=16), tmp_path / "c")
    table = pd.read_csv(raw_copy / "label.csv")
    table.loc[0, "label"] = 0.5
    table.to_csv(raw_copy / "label.csv", index=False)
    second = prepare(RawClipSource(str(raw_copy), frames=4, frame_size=16), tmp_path / "c")
    assert second.path != first.path


def damage_first_clip(root, suffix, content=b"not a media file"):
    table = pd.read_csv(root / "label.csv", dtype=str)
    row = table.iloc[0]
    path = root / "Raw" / row["video_id"] / f"{row['clip_id']}.{suffix}"
    return row, path, content


@pytest.mark.parametrize("policy", ["mask", "skip"])
def test_corrupt_video_is_counted_and_masked_or_skipped(raw_copy, tmp_path, policy):
    row, path, content = damage_first_clip(raw_copy, "mp4")
    path.write_bytes(content)
    prepared = prepare(RawClipSource(str(raw_copy), frames=4, frame_size=16), tmp_path, on_error=policy)
    assert len(prepared.problems) == 1
    assert str(path) in prepared.problems[0]
    clip_id = f"{row['video_id']}$_${row['clip_id']}"
    split = prepared.splits[row["mode"]]
    ids = split["id"]
    if policy == "skip":
        assert clip_id not in ids
    else:
        sample = split[ids.index(clip_id)]
        assert sample["video_present"] is False and sample["audio_present"] is True


def test_missing_audio_is_reported_with_its_file(raw_copy, tmp_path):
    _, path, _ = damage_first_clip(raw_copy, "wav")
    path.unlink()
    # Without the wav, audio comes from the mp4, which has no audio stream.
    prepared = prepare(RawClipSource(str(raw_copy), frames=4, frame_size=16), tmp_path)
    assert len(prepared.problems) == 1 and "no audio stream" in prepared.problems[0]


def test_raise_policy_names_the_file(raw_copy, tmp_path):
    _, path, content = damage_first_clip(raw_copy, "mp4")
    path.write_bytes(content)
    with pytest.raises(RuntimeError, match=str(path.name)):
        prepare(RawClipSource(str(raw_copy), frames=4, frame_size=16), tmp_path, on_error="raise")


def test_preparation_workers_write_whole_shards_and_keep_problems_in_record_order(raw_copy, tmp_path,
                                                                                  monkeypatch):
    table = pd.read_csv(raw_copy / "label.csv", dtype=str)
    damaged = [raw_copy / "Raw" / table.loc[row, "video_id"] / f"{table.loc[row, 'clip_id']}.mp4" for row in (41, 2)]
    for path in damaged:
        path.write_bytes(path.read_bytes()[:200])
    inline = prepare(RawClipSource(str(raw_copy), frames=4, frame_size=16), tmp_path / "inline", chunk_size=8)
    saved = []
    original = datasets.Dataset.save_to_disk

    def recording(self, path, *args, **kwargs):
        saved.append(Path(path).name)
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", recording)
    parallel = prepare(RawClipSource(str(raw_copy), frames=4, frame_size=16), tmp_path / "parallel", chunk_size=8,
                       num_workers=2, multiprocessing_context="fork")
    assert sorted(saved) == sorted(parallel.splits), "shards are written in the workers, not here"
    assert parallel.problems == inline.problems and len(inline.problems) == 2
    assert str(damaged[1]) in inline.problems[0], "problems follow the label table's order"
    for split, rows in inline.splits.items():
        assert rows.data.table.equals(parallel.splits[split].data.table), split


def edit_table(root, column, value, row=3):
    table = pd.read_csv(root / "label.csv", dtype=str, keep_default_na=False)
    table.loc[row, column] = value
    table.to_csv(root / "label.csv", index=False)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("label", "3.5", "row 5 .*label '?3.5'? is not a finite score"),
        ("label", "nan", "row 5 .*is not a finite score"),
        ("mode", "dev", "row 5 .*unknown split 'dev'"),
    ],
)
def test_bad_label_rows_fail_before_any_decoding(raw_copy, tmp_path, monkeypatch, column, value, message):
    edit_table(raw_copy, column, value)
    calls = count_decodes(monkeypatch)
    with pytest.raises(ValueError, match=message) as error:
        prepare(RawClipSource(str(raw_copy), frames=4, frame_size=16), tmp_path)
    assert "label.csv" in str(error.value)
    assert calls["video"] == 0


def test_duplicate_ids_are_rejected(raw_copy, tmp_path):
    table = pd.read_csv(raw_copy / "label.csv", dtype=str, keep_default_na=False)
    pd.concat([table, table.iloc[[0]]]).to_csv(raw_copy / "label.csv", index=False)
    with pytest.raises(ValueError, match=r"row 50 .*duplicate id .*\(first at row 2\)"):
        prepare(RawClipSource(str(raw_copy), frames=4, frame_size=16), tmp_path)


def test_interrupted_preparation_keeps_finished_shards(tiny_raw, tmp_path, monkeypatch):
    source = RawClipSource(str(tiny_raw), frames=4, frame_size=16)
    original = source.load
    seen = []

    def failing(record):
        seen.append(record["id"])
        if len(seen) == 30:
            raise KeyboardInterrupt
        return original(record)

    monkeypatch.setattr(source, "load", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare(source, tmp_path, chunk_size=16)
    monkeypatch.setattr(source, "load", original)
    calls = count_decodes(monkeypatch)
    prepared = prepare(source, tmp_path, chunk_size=16)
    assert calls["video"] == 48 - 16, "the first finished shard must not be decoded again"
    assert sum(len(s) for s in prepared.splits.values()) == 48


def test_training_subset_is_a_seeded_fraction(tiny_raw, tmp_path):
    def train_ids(fraction, seed):
        data = MultimodalDataModule(RawClipSource(str(tiny_raw), frames=4, frame_size=16),
                                    cache_dir=str(tmp_path), train_fraction=fraction, subset_seed=seed)
        return data.split("train")["id"]

    full, half = train_ids(1.0, 0), train_ids(0.5, 0)
    assert len(half) == round(len(full) * 0.5) and set(half) <= set(full)
    assert half == train_ids(0.5, 0) and half != train_ids(0.5, 1)


def test_spawned_dataloader_workers_give_the_same_batches(tiny_raw, tmp_path):
    def first_batch(**options):
        data = MultimodalDataModule(RawClipSource(str(tiny_raw), frames=4, frame_size=16),
                                    cache_dir=str(tmp_path), batch_size=6, **options)
        loader = data.val_dataloader()
        return loader, next(iter(loader))

    _, inline = first_batch()
    loader, spawned = first_batch(num_workers=1, multiprocessing_context="spawn")
    assert loader.multiprocessing_context.get_start_method() == "spawn"
    assert inline.keys() == spawned.keys()
    for key, value in inline.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == spawned[key].dtype and torch.equal(value, spawned[key]), key
        else:
            assert value == spawned[key], key


def test_an_unknown_start_method_names_the_key(tiny_raw, tmp_path):
    with pytest.raises(ValueError, match="data.multiprocessing_context must be one of"):
        MultimodalDataModule(RawClipSource(str(tiny_raw)), cache_dir=str(tmp_path),
                             multiprocessing_context="thread")


def test_preparation_in_spawned_processes_matches_preparation_in_process(tiny_raw, tmp_path,
                                                                         monkeypatch):
    def source():
        return RawClipSource(str(tiny_raw), frames=4, frame_size=16)

    inline = prepare(source(), tmp_path / "inline")

    def broken(*args, **kwargs):
        raise DecodeError("a forked copy of the test process")

    # Spawned workers import the package afresh; only forked copies would see this patch.
    monkeypatch.setattr(sources, "decode_frames", broken)
    spawned = prepare(source(), tmp_path / "spawned", num_workers=1, chunk_size=16,
                      multiprocessing_context="spawn")
    assert spawned.problems == []
    for split, rows in inline.splits.items():
        assert rows.data.table.equals(spawned.splits[split].data.table), split


def test_padding_keeps_the_dtype_and_marks_real_steps():
    padded, mask = pad_sequences([np.array([5, 6, 7], dtype=np.int32), np.array([8], dtype=np.int32)],
                                 pad_value=1)
    assert padded.dtype == torch.int32
    assert padded.tolist() == [[5, 6, 7], [8, 1, 1]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    vectors, mask = pad_sequences([np.ones((1, 2), np.float32), np.full((2, 2), 2, np.float32)])
    assert vectors.shape == (2, 2, 2) and vectors[0, 1].tolist() == [0, 0]
    assert mask.tolist() == [[True, False], [True, True]]
