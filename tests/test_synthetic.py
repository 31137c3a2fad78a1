"""Tests for the generated raw dataset (mmsent.data.synthetic)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
import wave

import av
import numpy as np
import pandas as pd
import pytest
from filelock import FileLock

from mmsent.data import synthetic
from mmsent.data.schema import SPLITS
from mmsent.data.synthetic import audio, text, video, writer
from mmsent.data.synthetic.cli import main

NUM_CLIPS = 24


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A small generated dataset shared by the read-only tests."""
    root = tmp_path_factory.mktemp("synthetic")
    return synthetic.generate_raw_dataset(root, num_clips=NUM_CLIPS, seed=0)


@pytest.fixture(scope="module")
def labels(dataset):
    return pd.read_csv(dataset / "label.csv")


def decode_frames(path):
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def read_wav(path):
    with wave.open(str(path), "rb") as handle:
        info = (handle.getframerate(), handle.getnchannels(), handle.getsampwidth())
        return info, np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2")


def clip_paths(root, row):
    base = root / "Raw" / row.video_id / str(row.clip_id)
    return base.with_suffix(".mp4"), base.with_suffix(".wav")


# --- layout and files -------------------------------------------------------


def test_label_csv_columns_and_values(labels):
    assert list(labels.columns) == list(synthetic.LABEL_COLUMNS)
    assert len(labels) == NUM_CLIPS
    assert labels["label"].between(-3, 3).all() and labels["clean_label"].between(-3, 3).all()
    sign = np.sign(labels["label"]).map({1.0: "Positive", -1.0: "Negative", 0.0: "Neutral"})
    assert (labels["annotation"] == sign).all()
    assert not labels.duplicated(["video_id", "clip_id"]).any()


def test_clean_label_is_weighted_sum_of_latents(labels):
    weights = synthetic.MODALITY_WEIGHTS
    raw = (weights["text"] * labels["text_score"] + weights["audio"] * labels["audio_score"]
           + weights["video"] * labels["video_score"])
    assert np.allclose(labels["clean_label"], raw.clip(-3, 3), atol=1e-4)


def test_splits_are_disjoint_by_video_and_all_present(labels):
    assert set(labels["mode"]) == set(SPLITS)
    assert (labels.groupby("video_id")["mode"].nunique() == 1).all()


def test_media_decode_with_requested_shape_and_rate(dataset, labels):
    for row in labels.itertuples():
        mp4, wav = clip_paths(dataset, row)
        frames = decode_frames(mp4)
        assert frames.shape == (16, 64, 64, 3) and frames.dtype == np.uint8
        (rate, channels, width), samples = read_wav(wav)
        assert (rate, channels, width) == (16000, 1, 2)
        assert 1.0 <= len(samples) / rate <= 2.0


def test_marker_records_parameters(dataset):
    marker = json.loads((dataset / "generated.json").read_text())
    assert marker["complete"] is True
    assert marker["params"]["num_clips"] == NUM_CLIPS and marker["params"]["seed"] == 0


def test_non_default_sizes(tmp_path):
    root = synthetic.generate_raw_dataset(tmp_path, num_clips=4, seed=5, frames=8, frame_size=32,
                                          fps=4, sample_rate=8000)
    row = next(pd.read_csv(root / "label.csv").itertuples())
    mp4, wav = clip_paths(root, row)
    assert decode_frames(mp4).shape == (8, 32, 32, 3)
    assert read_wav(wav)[0][0] == 8000


# --- determinism and reruns -------------------------------------------------


def test_same_seed_is_identical_with_a_worker_pool(dataset, labels, tmp_path):
    again = synthetic.generate_raw_dataset(tmp_path, num_clips=NUM_CLIPS, seed=0, num_workers=2)
    assert (again / "label.csv").read_bytes() == (dataset / "label.csv").read_bytes()
    for row in labels.head(6).itertuples():
        (mp4_a, wav_a), (mp4_b, wav_b) = clip_paths(dataset, row), clip_paths(again, row)
        assert np.array_equal(decode_frames(mp4_a), decode_frames(mp4_b))
        assert wav_a.read_bytes() == wav_b.read_bytes()


def test_different_seed_differs(dataset, labels, tmp_path):
    other = synthetic.generate_raw_dataset(tmp_path, num_clips=NUM_CLIPS, seed=1)
    assert (other / "label.csv").read_bytes() != (dataset / "label.csv").read_bytes()
    first = next(labels.itertuples())
    assert not np.array_equal(decode_frames(clip_paths(dataset, first)[0]),
                              decode_frames(clip_paths(other, first)[0]))


def test_rerun_with_same_parameters_is_a_no_op(dataset, labels):
    row = next(labels.itertuples())
    files = [dataset / "label.csv", dataset / "generated.json", *clip_paths(dataset, row)]
    before = [path.stat().st_mtime_ns for path in files]
    synthetic.generate_raw_dataset(dataset, num_clips=NUM_CLIPS, seed=0, num_workers=2)
    assert [path.stat().st_mtime_ns for path in files] == before


def test_a_second_run_on_the_same_folder_waits_for_the_first(tmp_path):
    root = tmp_path / "data"
    done = threading.Event()
    with FileLock(str(root) + ".lock"):
        worker = threading.Thread(target=lambda: (synthetic.generate_raw_dataset(
            root, num_clips=4, seed=1, frames=8, frame_size=32), done.set()))
        worker.start()
        time.sleep(1.0)
        assert not done.is_set() and not (root / "generated.json").exists()
    worker.join(timeout=60)
    assert done.is_set() and json.loads((root / "generated.json").read_text())["complete"]


def test_other_parameters_raise_unless_overwrite(tmp_path):
    synthetic.generate_raw_dataset(tmp_path, num_clips=6, seed=0)
    with pytest.raises(ValueError, match="generated.json"):
        synthetic.generate_raw_dataset(tmp_path, num_clips=6, seed=1)
    synthetic.generate_raw_dataset(tmp_path, num_clips=6, seed=1, overwrite=True)
    assert json.loads((tmp_path / "generated.json").read_text())["params"]["seed"] == 1


def test_refuses_a_folder_holding_another_dataset(tmp_path):
    (tmp_path / "label.csv").write_text("video_id,clip_id\n")
    with pytest.raises(ValueError, match="generated.json"):
        synthetic.generate_raw_dataset(tmp_path, num_clips=6)


def test_interrupted_run_never_looks_complete_and_resumes(tmp_path, monkeypatch):
    write_clip, written = writer._write_clip, []

    def crash_after_three(job):
        if len(written) == 3:
            raise RuntimeError("simulated crash")
        written.append(write_clip(job))

    monkeypatch.setattr(writer, "_write_clip", crash_after_three)
    with pytest.raises(RuntimeError, match="simulated crash"):
        synthetic.generate_raw_dataset(tmp_path / "a", num_clips=6, seed=2)
    assert not (tmp_path / "a" / "label.csv").exists()
    assert json.loads((tmp_path / "a" / "generated.json").read_text())["complete"] is False
    monkeypatch.undo()

    synthetic.generate_raw_dataset(tmp_path / "a", num_clips=6, seed=2)
    synthetic.generate_raw_dataset(tmp_path / "b", num_clips=6, seed=2)
    resumed, fresh = (tmp_path / name / "label.csv" for name in ("a", "b"))
    assert resumed.read_bytes() == fresh.read_bytes()


@pytest.mark.parametrize(
    "kwargs", [{"frame_size": 63}, {"frames": 1}, {"split_fractions": (0.5, 0.2, 0.2)}]
)
def test_invalid_parameters_raise(tmp_path, kwargs):
    with pytest.raises(ValueError):
        synthetic.generate_raw_dataset(tmp_path, num_clips=6, **kwargs)


def test_command_line(tmp_path):
    main(["--out_dir", str(tmp_path), "--num_clips", "5", "--seed", "3",
          "--split_fractions", "[0.6, 0.2, 0.2]", "--num_workers", "1"])
    marker = json.loads((tmp_path / "generated.json").read_text())
    assert marker["complete"] is True
    assert marker["params"]["split_fractions"] == [0.6, 0.2, 0.2] and marker["params"]["frames"] == 16
    assert len(pd.read_csv(tmp_path / "label.csv")) == 5


def test_command_line_rejects_invalid_parameters(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--out_dir", str(tmp_path), "--frame_size", "63"])
    assert "frame_size must be even" in capsys.readouterr().err


def test_module_runs_from_the_command_line():
    done = subprocess.run([sys.executable, "-m", "mmsent.data.synthetic", "--help"],
                          capture_output=True, text=True, check=True)
    assert "--num_clips" in done.stdout and "--out_dir" in done.stdout


# --- text -------------------------------------------------------------------


def test_contrast_clause_order_changes_the_score():
    good_but_boring = text.tokenize("the acting was good but the plot was boring")
    boring_but_good = text.tokenize("the plot was boring but the acting was good")
    assert sorted(good_but_boring) == sorted(boring_but_good)
    assert text.score_sentence(good_but_boring) < 0 < text.score_sentence(boring_but_good)
    although = text.score_sentence("although the acting was good, the plot was boring")
    assert although == pytest.approx(text.score_sentence(good_but_boring))


def test_intensifiers_and_negation_compose():
    score = text.score_sentence
    words = ("very", "", "slightly")
    very, plain, slightly = (score(f"the movie was {word} good") for word in words)
    assert very > plain > slightly > 0
    assert score("the movie was not good") < 0 < score("the movie wasn't awful")
    assert abs(score("the movie was not good")) < score("the movie was good")
    assert score("honestly the movie was good you know") == score("the movie was good")


def test_generated_text_scores_are_compositional(labels):
    recomputed = labels["text"].map(lambda sentence: round(text.score_sentence(sentence), 4))
    assert np.allclose(recomputed, labels["text_score"], atol=1e-9)
    table = synthetic.plan_clips(300, seed=0)
    assert table["text"].str.contains(" but |although").mean() > 0.2
    assert table["text_score"].between(-1, 1).all() and table["text_score"].std() > 0.4


def test_make_sentence_returns_its_exact_score():
    rng = np.random.default_rng(0)
    targets = rng.uniform(-1, 1, size=200)
    errors = []
    for target in targets:
        sentence, value = text.make_sentence(float(target), rng)
        assert value == text.score_sentence(sentence)
        errors.append(abs(value - target))
    assert np.mean(errors) < 0.15


# --- video ------------------------------------------------------------------


@pytest.fixture
def style():
    rng = np.random.default_rng(0)
    return video.sample_face_style(video.sample_appearance(rng), 64, rng)


def test_reversed_frames_are_the_negated_video_score(style):
    forward = video.render_face_frames(video.mouth_curvatures(0.3, 0.8, 16), style, 64)
    backward = video.render_face_frames(video.mouth_curvatures(0.3, -0.8, 16), style, 64)
    assert np.array_equal(forward[::-1], backward)
    assert not np.allclose(forward, backward)
    assert np.allclose(forward.mean(axis=0), backward.mean(axis=0))


def test_mouth_change_survives_downscaling(style):
    frames = video.render_face_frames(video.mouth_curvatures(0.0, 1.0, 16), style, 64)
    small = frames.mean(axis=-1).reshape(16, 32, 2, 32, 2).mean(axis=(2, 4))
    assert (np.abs(small[-1] - small[0]) > 30).sum() >= 10


# --- audio ------------------------------------------------------------------


def test_audio_pitch_follows_the_score():
    voice = audio.Voice(pitch_offset_hz=0.0, tilt_offset=0.0, gain_offset_db=0.0)

    def peak_hz(score):
        samples = audio.synthesize_audio(score, 1.5, 16000, voice, np.random.default_rng(0))
        spectrum = np.abs(np.fft.rfft(samples))
        freqs = np.fft.rfftfreq(len(samples), 1 / 16000)
        band = (freqs > 60) & (freqs < 300)
        return freqs[band][np.argmax(spectrum[band])]

    assert peak_hz(1.0) - peak_hz(-1.0) > 70


# --- labels -----------------------------------------------------------------


def test_best_achievable_mae_matches_the_noise_level(dataset):
    table = synthetic.plan_clips(2000, seed=0, noise_std=0.3)
    expected = 0.3 * math.sqrt(2 / math.pi)
    assert synthetic.best_achievable_mae(table, None) == pytest.approx(expected, rel=0.1)
    assert 0 < synthetic.best_achievable_mae(dataset / "label.csv", "test")
    assert synthetic.best_achievable_mae(synthetic.plan_clips(20, noise_std=0.0), None) == 0
