"""The readers of precomputed features: tables, MMSA pickles, CMU-SDK .csd files."""

from __future__ import annotations

import logging
import pickle

import h5py
import numpy as np
import pandas as pd
import pytest

from mmsent.data import FeatureTableSource, MMSAPickleSource, MultimodalDataModule, SDKSource
from mmsent.data.cache import prepare
from mmsent.data.csd import (
    Sequence,
    align_mean,
    align_sequence,
    overlap_matrix,
    pool_steps,
    step_ranges,
)

SPLIT_OF_VIDEO = {"vA": "train", "vB": "train", "vC": "train", "vD": "valid", "vE": "test"}


def label_table(clips_per_video: int = 4, seed: int = 0) -> pd.DataFrame:
    """An MMSA-layout label table over five videos, with clip intervals."""
    rng = np.random.default_rng(seed)
    rows = []
    for video, split in SPLIT_OF_VIDEO.items():
        for clip in range(1, clips_per_video + 1):
            label = round(float(rng.uniform(-3, 3)), 2)
            rows.append({"video_id": video, "clip_id": clip, "text": f"clip {clip} of {video} is ok",
                         "label": label, "annotation": "Positive" if label > 0 else "Negative",
                         "mode": split, "start": 2.0 * (clip - 1), "end": 2.0 * clip - 0.5})
    return pd.DataFrame(rows)


def frame(labels: pd.DataFrame, dim: int, seed: int = 1, scale: float = 10.0) -> pd.DataFrame:
    """One ``dim``-d vector per clip, offset so that standardizing matters."""
    rng = np.random.default_rng(seed)
    vectors = [(scale * rng.normal(size=dim) + 50).astype(np.float32) for _ in range(len(labels))]
    return pd.DataFrame({"video_id": labels["video_id"], "clip_id": labels["clip_id"], "audio": vectors})


@pytest.fixture()
def table_root(tmp_path):
    root = tmp_path / "tables"
    root.mkdir()
    labels = label_table()
    labels.to_csv(root / "label.csv", index=False)
    frame(labels, 6).to_parquet(root / "audio.parquet")
    wide = pd.DataFrame(np.random.default_rng(2).normal(size=(len(labels), 3)), columns=["f0", "f1", "f2"])
    pd.concat([labels[["video_id", "clip_id"]], wide], axis=1).to_csv(root / "video.csv", index=False)
    return root


def table_source(root, **kwargs) -> FeatureTableSource:
    options = {"tables": {"audio": "audio.parquet", "video": "video.csv"}, **kwargs}
    return FeatureTableSource(str(root), **options)


def present(split, modality) -> list[bool]:
    return list(split[f"{modality}_present"])


def test_tables_join_labels_and_standardize_with_training_statistics(table_root, tmp_path):
    data = prepare(table_source(table_root), tmp_path / "cache")
    assert data.spec.input_dims["audio"] == 6 and data.spec.input_dims["video"] == 3
    assert data.spec.video_kind == "features" and data.spec.text_kind == "tokens"
    assert {name: len(part) for name, part in data.splits.items()} == {"train": 12, "valid": 4, "test": 4}
    train = np.concatenate([np.asarray(a) for a in data.splits["train"]["audio"]])
    assert train.shape == (12, 6), "an utterance-level vector is a length-1 sequence"
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(train.std(0), 1, atol=1e-4)
    test = np.concatenate([np.asarray(a) for a in data.splits["test"]["audio"]])
    assert np.abs(test.mean(0)).max() > 1e-3, "test statistics must not be used"
    raw = pd.read_parquet(table_root / "audio.parquet")
    first = data.splits["train"][0]
    row = raw[(raw.video_id + "$_$" + raw.clip_id.astype(str)) == first["id"]].iloc[0]
    stats = data.spec.extras["standardization"]["audio"]
    expected = (row["audio"] - np.array(stats["mean"])) / np.array(stats["std"])
    np.testing.assert_allclose(np.asarray(first["audio"])[0], expected, rtol=1e-4, atol=1e-4)


def test_tables_count_and_zero_nonfinite_values_with_ids(table_root, tmp_path, caplog):
    table = pd.read_parquet(table_root / "audio.parquet")
    table.at[0, "audio"] = np.array([np.nan, 1, 2, np.inf, 4, 5], dtype=np.float32)
    table.at[5, "audio"] = np.array([0, -np.inf, 2, 3, 4, 5], dtype=np.float32)
    table.to_parquet(table_root / "audio.parquet")
    with caplog.at_level(logging.WARNING):
        data = prepare(table_source(table_root, standardize=False), tmp_path / "cache")
    counts = data.spec.extras["issues"]["nonfinite_values"]["audio"]
    assert counts == {"values": 3, "clips": {"vA$_$1": 2, "vB$_$2": 1}}
    assert "3 NaN/infinite audio value(s)" in caplog.text and "vA$_$1" in caplog.text
    first = next(r for r in data.splits["train"] if r["id"] == "vA$_$1")
    np.testing.assert_array_equal(np.asarray(first["audio"])[0], [0, 1, 2, 0, 4, 5])


def drop_rows(path, ids):
    table = pd.read_parquet(path)
    keep = ~(table.video_id + "$_$" + table.clip_id.astype(str)).isin(ids)
    table[keep].to_parquet(path)


def test_labels_without_features_are_masked_or_dropped_and_extra_features_counted(table_root, tmp_path):
    drop_rows(table_root / "audio.parquet", ["vA$_$1", "vD$_$2"])
    stray = frame(pd.DataFrame({"video_id": ["vZ"], "clip_id": [9]}), 6)
    table = pd.concat([pd.read_parquet(table_root / "audio.parquet"), stray], ignore_index=True)
    table.to_parquet(table_root / "audio.parquet")
    masked = prepare(table_source(table_root), tmp_path / "masked")
    issues = masked.spec.extras["issues"]
    assert issues["labelled_without_features"] == {"audio": ["vA$_$1", "vD$_$2"]}
    assert issues["features_without_label"] == {"audio": ["vZ$_$9"]}
    assert len(masked.splits["valid"]) == 4 and present(masked.splits["valid"], "audio").count(False) == 1
    dropped = prepare(table_source(table_root, missing="drop"), tmp_path / "dropped")
    assert len(dropped.splits["valid"]) == 3 and all(present(dropped.splits["valid"], "audio"))
    assert dropped.spec.extras["issues"]["dropped"] == ["vA$_$1", "vD$_$2"]


def test_a_split_left_without_features_is_an_error(table_root, tmp_path):
    drop_rows(table_root / "audio.parquet", [f"vE$_${i}" for i in range(1, 5)])
    with pytest.raises(ValueError, match="split 'test' holds no clip"):
        prepare(table_source(table_root, missing="drop"), tmp_path / "cache")
    with pytest.raises(ValueError, match="no clip of split 'test' has audio features"):
        prepare(table_source(table_root), tmp_path / "cache2")


def test_a_feature_size_that_differs_names_file_and_id(table_root, tmp_path):
    table = pd.read_parquet(table_root / "audio.parquet")
    table.at[3, "audio"] = np.ones(5, dtype=np.float32)
    table.to_parquet(table_root / "audio.parquet")
    with pytest.raises(ValueError, match=r"audio\.parquet, row 5 \(vA\$_\$4\): feature size 5 differs"):
        prepare(table_source(table_root), tmp_path / "cache")


def test_a_label_outside_the_range_names_file_and_row(table_root, tmp_path):
    labels = pd.read_csv(table_root / "label.csv")
    labels.loc[2, "label"] = 3.5
    labels.to_csv(table_root / "label.csv", index=False)
    with pytest.raises(ValueError, match=r"label\.csv, row 4 \(vA/3\): label 3\.5"):
        prepare(table_source(table_root), tmp_path / "cache")


def test_a_non_numeric_table_value_names_file_and_id(table_root, tmp_path):
    table = pd.read_csv(table_root / "video.csv")
    table["f1"] = table["f1"].astype(object)
    table.loc[6, "f1"] = "loud"
    table.to_csv(table_root / "video.csv", index=False)
    with pytest.raises(ValueError, match=r"video\.csv, row 8 \(vB\$_\$3\): not a numeric feature vector"):
        prepare(table_source(table_root), tmp_path / "cache")


def test_table_cells_holding_sequences_keep_their_time_axis(table_root, tmp_path):
    labels = pd.read_csv(table_root / "label.csv")
    steps = [np.arange(3 * (1 + i % 4), dtype=np.float32).reshape(-1, 3).tolist() for i in range(len(labels))]
    pd.DataFrame({"video_id": labels.video_id, "clip_id": labels.clip_id, "frames": steps}).to_parquet(
        table_root / "seq.parquet")
    source = FeatureTableSource(str(table_root), tables={"video": "seq.parquet"}, columns={"video": "frames"},
                         modalities=["video"], standardize=False)
    data = prepare(source, tmp_path / "cache")
    lengths = sorted({len(np.asarray(v)) for v in data.splits["train"]["video"]})
    assert lengths == [1, 2, 3, 4] and data.spec.input_dims == {"video": 3}


# --- MMSA pickles -------------------------------------------------------------------------


def mmsa_split(ids, labels, seed, aligned=False, text_dim=8, audio_dim=4, steps=6):
    """One split of an MMSA pickle, zero-padded like the real ones."""
    rng = np.random.default_rng(seed)
    n, length = len(ids), 7
    words = rng.integers(3, 7, size=n)
    bert = np.zeros((n, 3, length))
    text = np.zeros((n, length, text_dim), dtype=np.float32)
    for i, count in enumerate(words):
        bert[i, 0, :count] = rng.integers(1, 100, size=count)
        bert[i, 1, :count] = 1
        text[i, :count] = rng.normal(size=(count, text_dim))
    audio_len = words if aligned else rng.integers(1, steps + 1, size=n)
    vision_len = words if aligned else rng.integers(1, steps + 1, size=n)
    width = length if aligned else steps
    audio = np.zeros((n, width, audio_dim), dtype=np.float32)
    vision = np.zeros((n, width, 3), dtype=np.float32)
    for i in range(n):
        audio[i, : audio_len[i]] = rng.normal(size=(audio_len[i], audio_dim)) + 1
        vision[i, : vision_len[i]] = rng.normal(size=(vision_len[i], 3)) + 1
    part = {"id": np.array(ids, dtype=object), "raw_text": np.array([f"words {i}" for i in ids], dtype=object),
            "regression_labels": np.array(labels, dtype=np.float32), "text": text, "text_bert": bert,
            "audio": audio, "vision": vision}
    if not aligned:
        part["audio_lengths"] = list(audio_len)
        part["vision_lengths"] = list(vision_len)
    return part


def write_mmsa(path, aligned=False, **overrides):
    data = {}
    for index, split in enumerate(("train", "valid", "test")):
        ids = [f"v{split}{k // 2}$_${k % 2 + 1}" for k in range(6 if split == "train" else 4)]
        labels = np.linspace(-2.5, 2.5, len(ids))
        data[split] = mmsa_split(ids, labels, seed=index, aligned=aligned)
        data[split].update(overrides.get(split, {}))
    path.write_bytes(pickle.dumps(data))
    return data


def test_mmsa_unaligned_pickle_keeps_true_lengths_and_masks_minus_inf_frames(tmp_path, caplog):
    path = tmp_path / "unaligned_50.pkl"
    data = write_mmsa(path)
    data["train"]["audio"][1, 0, 2] = -np.inf
    data["train"]["audio"][4, 0, :2] = -np.inf
    path.write_bytes(pickle.dumps(data))
    with caplog.at_level(logging.WARNING):
        prepared = prepare(MMSAPickleSource(str(path)), tmp_path / "cache")
    assert "unpickling can execute arbitrary code" in caplog.text
    spec = prepared.spec
    assert spec.input_dims == {"text": 8, "audio": 4, "video": 3} and spec.text_kind == "vectors"
    assert spec.extras["issues"]["nonfinite_values"]["audio"]["clips"] == {"vtrain0$_$2": 1, "vtrain2$_$1": 2}
    train = {r["id"]: r for r in prepared.splits["train"]}
    for index, clip in enumerate(data["train"]["id"]):
        row = train[clip]
        dropped = 1 if index in (1, 4) else 0  # the frame holding -inf is masked, not zeroed
        assert len(np.asarray(row["audio"])) == data["train"]["audio_lengths"][index] - dropped
        assert len(np.asarray(row["video"])) == data["train"]["vision_lengths"][index]
        assert len(np.asarray(row["text"])) == data["train"]["text_bert"][index, 1].sum()
    assert np.isfinite(np.asarray(train["vtrain2$_$1"]["audio"])).all()
    np.testing.assert_allclose(np.asarray(train["vtrain2$_$1"]["audio"]), data["train"]["audio"][4, 1:data["train"]["audio_lengths"][4]])
    np.testing.assert_allclose(train["vtrain1$_$1"]["label"], data["train"]["regression_labels"][2])


def test_mmsa_sequences_padded_at_the_front_lose_their_leading_zeros(tmp_path):
    path = tmp_path / "front.pkl"
    data = write_mmsa(path)
    for split in ("train", "valid", "test"):
        part = data[split]
        for key in ("audio", "vision"):
            lengths = part.pop(f"{key}_lengths")
            for i, length in enumerate(lengths):
                real = part[key][i, :length].copy()
                part[key][i] = 0
                part[key][i, part[key].shape[1] - length:] = real
        if split == "train":
            part["vision_lengths"] = lengths  # recorded lengths count from the padded end too
    path.write_bytes(pickle.dumps(data))
    prepared = prepare(MMSAPickleSource(str(path)), tmp_path / "cache")
    train = {r["id"]: r for r in prepared.splits["train"]}
    for index, clip in enumerate(data["train"]["id"]):
        audio = np.asarray(train[clip]["audio"])
        assert np.all(np.any(audio != 0, axis=-1)) and len(audio) == np.any(data["train"]["audio"][index] != 0, axis=-1).sum()
        np.testing.assert_allclose(np.asarray(train[clip]["video"]),
                                   data["train"]["vision"][index, 6 - data["train"]["vision_lengths"][index]:])


def test_mmsa_label_scale_maps_another_range_and_the_error_points_to_it(tmp_path):
    path = tmp_path / "five_point.pkl"
    write_mmsa(path, **{split: {"regression_labels": np.linspace(1, 5, 6 if split == "train" else 4)}
                        for split in ("train", "valid", "test")})
    with pytest.raises(ValueError, match=r"row 3 .*label 3.4.* set the source's label_scale: \[low, high\]"):
        prepare(MMSAPickleSource(str(path)), tmp_path / "cache")
    prepared = prepare(MMSAPickleSource(str(path), label_scale=[1, 5]), tmp_path / "cache")
    np.testing.assert_allclose(sorted(prepared.splits["train"]["label"]), np.linspace(-3, 3, 6), atol=1e-6)
    with pytest.raises(ValueError, match="label_scale must be"):
        MMSAPickleSource(str(path), label_scale=[5, 1])


def test_mmsa_is_unpickled_once_then_read_from_the_cache(tmp_path, monkeypatch):
    path = tmp_path / "aligned_50.pkl"
    write_mmsa(path, aligned=True)
    first = prepare(MMSAPickleSource(str(path)), tmp_path / "cache")
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("the cache must be reused"))
    again = prepare(MMSAPickleSource(str(path)), tmp_path / "cache")
    assert again.path == first.path


def test_mmsa_aligned_sequences_follow_the_text_length(tmp_path):
    path = tmp_path / "aligned_50.pkl"
    data = write_mmsa(path, aligned=True)
    prepared = prepare(MMSAPickleSource(str(path)), tmp_path / "cache")
    words = data["valid"]["text_bert"][:, 1].sum(1)
    for row, count in zip(prepared.splits["valid"], words, strict=True):
        assert len(np.asarray(row["audio"])) == len(np.asarray(row["video"])) == count


def test_mmsa_bert_ids_become_tokens(tmp_path):
    path = tmp_path / "unaligned_50.pkl"
    data = write_mmsa(path)
    source = MMSAPickleSource(str(path), text="bert_ids", modalities=["text"], vocab_size=100)
    prepared = prepare(source, tmp_path / "cache")
    assert prepared.spec.text_kind == "tokens" and prepared.spec.input_dims == {"text": 100}
    row = prepared.splits["test"][0]
    expected = data["test"]["text_bert"][0, 0, : int(data["test"]["text_bert"][0, 1].sum())]
    np.testing.assert_array_equal(np.asarray(row["text"]), expected)
    with pytest.raises(ValueError, match="outside the vocabulary of 50"):
        prepare(MMSAPickleSource(str(path), text="bert_ids", vocab_size=50), tmp_path / "c2")


def test_mmsa_transcripts_through_a_tokenizer(tmp_path):
    path = tmp_path / "unaligned_50.pkl"
    write_mmsa(path)
    data = MultimodalDataModule(MMSAPickleSource(str(path), text="transcript", modalities=["text", "audio"]),
                                cache_dir=str(tmp_path / "cache"), batch_size=3)
    batch = next(iter(data.val_dataloader()))
    assert batch["text"].dtype.is_floating_point is False and batch["transcript"][0] == "words vvalid0$_$1"
    assert batch["audio"].shape[-1] == 4


def test_mmsa_feature_sizes_must_agree_between_splits(tmp_path):
    path = tmp_path / "unaligned_50.pkl"
    bad = mmsa_split([f"x{i}$_$1" for i in range(4)], [0.1] * 4, seed=5, audio_dim=5)
    write_mmsa(path, valid=bad)
    with pytest.raises(ValueError, match=r"unaligned_50\.pkl \[valid\] x0\$_\$1: audio has 5 features, "
                                         r"but split 'train' has 4"):
        prepare(MMSAPickleSource(str(path)), tmp_path / "cache")


def test_mmsa_ids_must_name_video_and_clip(tmp_path):
    path = tmp_path / "unaligned_50.pkl"
    bad = mmsa_split(["clip1", "clip2"], [0.5, -0.5], seed=3)
    write_mmsa(path, test=bad)
    with pytest.raises(ValueError, match=r"\[test\] row 0: id 'clip1' is not of the form"):
        prepare(MMSAPickleSource(str(path)), tmp_path / "cache")


def test_mmsa_label_outside_the_range_names_the_row(tmp_path):
    path = tmp_path / "unaligned_50.pkl"
    data = write_mmsa(path)
    data["test"]["regression_labels"][2] = -4.0
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(ValueError, match=r"\[test\] row 2 \(vtest1\$_\$1\): label -4\.0"):
        prepare(MMSAPickleSource(str(path)), tmp_path / "cache")


# --- CMU-MultimodalSDK computational sequences -------------------------------------------


def write_csd(path, videos: dict, name="seq"):
    """Writes a computational sequence as the SDK does: <root>/data/<video>/..., metadata."""
    with h5py.File(path, "w") as handle:
        root = handle.create_group(name)
        data = root.create_group("data")
        for video, (features, intervals) in videos.items():
            group = data.create_group(video)
            group.create_dataset("features", data=features)
            group.create_dataset("intervals", data=intervals)
        meta = root.create_group("metadata")
        meta.create_dataset("root name", (1,), dtype=h5py.special_dtype(vlen=str))
        meta["root name"][0] = f'"{name}"'


def frames(duration: float, step: float, dim: int, seed: int):
    """Feature steps of ``step`` seconds, valued so averages are easy to check."""
    starts = np.arange(0, duration, step)
    intervals = np.stack([starts, starts + step], 1)
    features = np.random.default_rng(seed).normal(size=(len(starts), dim)).astype(np.float32)
    return features, intervals


@pytest.fixture()
def sdk_root(tmp_path):
    root = tmp_path / "sdk"
    root.mkdir()
    labels = label_table()
    labels.to_csv(root / "label.csv", index=False)
    audio = {v: frames(8.0, 0.1, 5, seed=i) for i, v in enumerate(SPLIT_OF_VIDEO)}
    write_csd(root / "audio.csd", audio, "COVAREP")
    return root


def test_sdk_mean_alignment_averages_the_steps_inside_each_clip(sdk_root, tmp_path):
    source = SDKSource(str(sdk_root), features={"audio": "audio.csd"}, modalities=["audio"],
                       standardize=False)
    prepared = prepare(source, tmp_path / "cache")
    with h5py.File(sdk_root / "audio.csd") as handle:
        features = handle["COVAREP/data/vB/features"][()]
        intervals = handle["COVAREP/data/vB/intervals"][()]
    row = next(r for r in prepared.splits["train"] if r["id"] == "vB$_$3")
    inside = (intervals[:, 0] < 5.5) & (intervals[:, 1] > 4.0)
    np.testing.assert_allclose(np.asarray(row["audio"]), features[inside].mean(0, keepdims=True), atol=1e-5)


def test_sdk_sequence_alignment_counts_nonfinite_values_per_clip(sdk_root, tmp_path):
    features, intervals = frames(8.0, 0.1, 5, seed=0)
    features[3, 1] = np.nan
    features[22, :2] = -np.inf
    write_csd(sdk_root / "audio.csd", {"vA": (features, intervals),
                                       **{v: frames(8.0, 0.1, 5, seed=1) for v in list(SPLIT_OF_VIDEO)[1:]}})
    source = SDKSource(str(sdk_root), features={"audio": "audio.csd"}, modalities=["audio"],
                       align="sequence", max_steps=10, standardize=False)
    prepared = prepare(source, tmp_path / "cache")
    clips = prepared.spec.extras["issues"]["nonfinite_values"]["audio"]["clips"]
    assert clips == {"vA$_$1": 1, "vA$_$2": 2}
    rows = {r["id"]: np.asarray(r["audio"]) for r in prepared.splits["train"]}
    assert rows["vA$_$1"].shape == (10, 5) and np.isfinite(rows["vA$_$1"]).all()


def test_sdk_label_csd_with_splits_and_word_transcripts(tmp_path):
    root = tmp_path / "sdk"
    root.mkdir()
    labels, words, audio = {}, {}, {}
    for index, video in enumerate(SPLIT_OF_VIDEO):
        labels[video] = (np.array([[1.5, 0.2], [-2.0, 0.1]]), np.array([[0.0, 2.0], [2.5, 4.0]]))
        tokens = np.array([[b"good"], [b"sp"], [b"movie"], [b"bad"], [b"plot"]])
        words[video] = (tokens, np.array([[0.1, 0.5], [0.5, 0.9], [1.0, 1.6], [2.6, 3.0], [3.1, 3.9]]))
        audio[video] = frames(4.0, 0.25, 3, seed=index)
    write_csd(root / "labels.csd", labels, "Opinion_Labels")
    write_csd(root / "words.csd", words, "Words")
    write_csd(root / "audio.csd", audio, "COVAREP")
    splits = pd.DataFrame({"video_id": list(SPLIT_OF_VIDEO), "mode": list(SPLIT_OF_VIDEO.values())})
    splits.loc[len(splits)] = ["vX", "test"]
    splits.to_csv(root / "splits.csv", index=False)
    source = SDKSource(str(root), features={"audio": "audio.csd"}, labels="labels.csd",
                       splits="splits.csv", words="words.csd")
    prepared = prepare(source, tmp_path / "cache")
    rows = {r["id"]: r for r in prepared.splits["train"]}
    assert rows["vA$_$1"]["transcript"] == "good movie" and rows["vA$_$2"]["transcript"] == "bad plot"
    assert rows["vA$_$2"]["label"] == pytest.approx(-2.0)
    assert len(prepared.splits["test"]) == 2 and prepared.spec.input_dims["audio"] == 3
    with pytest.raises(ValueError, match="no label column 5"):
        prepare(SDKSource(str(root), features={"audio": "audio.csd"}, labels="labels.csd",
                          splits="splits.csv", label_column=5), tmp_path / "c2")


def test_sdk_word_vectors_stay_a_sequence_and_other_modalities_are_averaged(sdk_root, tmp_path):
    write_csd(sdk_root / "glove.csd", {v: frames(8.0, 0.5, 4, seed=i) for i, v in enumerate(SPLIT_OF_VIDEO)})
    source = SDKSource(str(sdk_root), features={"text": "glove.csd", "audio": "audio.csd"})
    prepared = prepare(source, tmp_path / "cache")
    assert prepared.spec.text_kind == "vectors" and prepared.spec.input_dims == {"text": 4, "audio": 5}
    row = prepared.splits["valid"][1]
    # Clip 2 spans [2.0, 3.5] s: the half-second words starting at 2.0, 2.5 and 3.0.
    assert np.asarray(row["text"]).shape == (3, 4) and np.asarray(row["audio"]).shape == (1, 5)


def test_sdk_feature_size_must_agree_between_videos(sdk_root, tmp_path):
    videos = {v: frames(8.0, 0.1, 5, seed=1) for v in SPLIT_OF_VIDEO}
    videos["vC"] = frames(8.0, 0.1, 4, seed=1)
    write_csd(sdk_root / "audio.csd", videos)
    with pytest.raises(ValueError, match=r"audio\.csd: video vC has 4 features per step"):
        prepare(SDKSource(str(sdk_root), features={"audio": "audio.csd"}), tmp_path / "cache")


def test_sdk_label_csv_needs_clip_intervals(sdk_root, tmp_path):
    pd.read_csv(sdk_root / "label.csv").drop(columns=["end"]).to_csv(sdk_root / "label.csv", index=False)
    with pytest.raises(ValueError, match="start and end"):
        prepare(SDKSource(str(sdk_root), features={"audio": "audio.csd"}), tmp_path / "cache")


def test_binary_search_ranges_match_the_overlap_definition():
    rng = np.random.default_rng(0)
    for _ in range(50):
        durations = rng.uniform(0.01, 0.3, size=200)
        starts = np.cumsum(rng.uniform(0.0, 0.3, size=200))
        steps = np.stack([starts, starts + durations], 1)
        steps[:, 1] = np.maximum.accumulate(steps[:, 1])
        clips = np.sort(rng.uniform(0, starts[-1], size=(8, 2)), axis=1)
        lo, hi = step_ranges(steps, clips)
        overlap = overlap_matrix(steps, clips)
        for j in range(len(clips)):
            np.testing.assert_array_equal(np.arange(lo[j], hi[j]), np.flatnonzero(overlap[j]))


def test_nested_steps_fall_back_to_the_overlap_matrix():
    steps = np.array([[0.0, 10.0], [1.0, 2.0], [3.0, 4.0]])
    features = np.array([[1.0], [2.0], [4.0]], dtype=np.float32)
    assert step_ranges(steps, np.array([[2.5, 3.5]])) is None
    means, counts, _ = align_mean(Sequence(features, steps), np.array([[2.5, 3.5], [1.2, 1.5]]))
    np.testing.assert_allclose(means[:, 0], [2.5, 1.5])
    assert counts.tolist() == [2, 2]
    sequences = align_sequence(Sequence(features, steps), np.array([[2.5, 3.5]]), max_steps=5)
    np.testing.assert_allclose(sequences[0][0][:, 0], [1.0, 4.0])


def test_pool_steps_averages_into_equal_bins():
    values = np.arange(12, dtype=np.float64)[:, None]
    np.testing.assert_allclose(pool_steps(values, 4)[:, 0], [1, 4, 7, 10])
    assert pool_steps(values, 20).shape == (12, 1)
