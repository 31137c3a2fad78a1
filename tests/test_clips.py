"""Real-looking clips: any container, frames by time, missing and subtitle transcripts,
and the same preparation for training and scoring."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from clips import (
    AWKWARD_CLIPS,
    AWKWARD_MISSING,
    AWKWARD_SUBTITLE_TEXT,
    VIDEO_ID,
    write_clip,
)

from mmsent.data import FeatureTableSource, RawClipSource
from mmsent.data.cache import prepare
from mmsent.data.clip_files import ClipMedia, find_clip_media
from mmsent.data.media import decode_audio, decode_frames
from mmsent.data.schema import make_id
from mmsent.data.transcripts import read_subtitle
from mmsent.errors import ConfigError
from mmsent.hub.preprocess import Clip, Preprocessor, preprocessing_settings

CLIP_IDS = [make_id(VIDEO_ID, clip) for clip in AWKWARD_CLIPS]


def clip_file(root, clip):
    return root / "Raw" / VIDEO_ID / AWKWARD_CLIPS[clip][1]


@pytest.fixture(scope="module")
def awkward_prepared(awkward_clips, tmp_path_factory):
    source = RawClipSource(str(awkward_clips), frames=4, frame_size=16)
    return source, prepare(source, tmp_path_factory.mktemp("awkward_cache"))


def test_every_awkward_clip_is_prepared_with_exactly_the_modalities_it_has(awkward_prepared):
    _, prepared = awkward_prepared
    rows = {r["id"]: r for split in prepared.splits.values() for r in split}
    assert sorted(rows) == sorted(CLIP_IDS)
    for modality, count in AWKWARD_MISSING.items():
        assert sum(not r[f"{modality}_present"] for r in rows.values()) == count, modality
    assert prepared.summary == {"clips": len(AWKWARD_CLIPS), "missing": AWKWARD_MISSING,
                                "transcript": {"label.csv": 12, "subtitle": 1, "none": 1}}
    assert prepared.missing == {"text": [make_id(VIDEO_ID, "c12")], "audio": [make_id(VIDEO_ID, "c06")],
                                "video": []}
    assert len(prepared.problems) == 1 and "c06.avi: no audio stream" in prepared.problems[0]
    assert rows[make_id(VIDEO_ID, "c11")]["transcript"] == AWKWARD_SUBTITLE_TEXT
    assert prepared.notes[make_id(VIDEO_ID, "c11")] == {"transcript": "subtitle"}
    assert prepared.notes[make_id(VIDEO_ID, "c12")] == {"transcript": "none"}
    record = json.loads((prepared.path / "spec.json").read_text())
    assert record["missing"]["text"] == [make_id(VIDEO_ID, "c12")]
    assert record["summary"] == prepared.summary


def test_clips_are_found_by_id_in_any_container_or_by_the_media_column(awkward_clips):
    folder = awkward_clips / "Raw" / VIDEO_ID
    for clip in ("c02", "c04", "c05", "c11", "c12"):
        media = find_clip_media(awkward_clips, VIDEO_ID, clip)
        assert media.video == clip_file(awkward_clips, clip) and media.audio == media.video, clip
    assert find_clip_media(awkward_clips, VIDEO_ID, "c07") == ClipMedia(
        folder / "c07.mov", folder / "c07.flac", None)
    assert find_clip_media(awkward_clips, VIDEO_ID, "c11").subtitle == folder / "c11.srt"
    assert find_clip_media(awkward_clips, VIDEO_ID, "c14").video is None
    named = find_clip_media(awkward_clips, VIDEO_ID, "c14", "Raw/rec/named/take_3.webm")
    assert named.video == folder / "named" / "take_3.webm"
    assert find_clip_media(awkward_clips, VIDEO_ID, "absent") == ClipMedia(None, None, None)


def brightness(frames: np.ndarray) -> np.ndarray:
    """Per frame, the mean of the half below the red quarter (it brightens with time)."""
    half = frames.shape[1] // 2
    return frames[:, half + 2:, :, 1].mean(axis=(1, 2))


def levels(indices, count=12):
    return np.array([40 + 160 * i / (count - 1) for i in indices])


def test_a_header_claiming_more_frames_changes_nothing(awkward_clips):
    frames = decode_frames(clip_file(awkward_clips, "c08"), 4, 16).frames
    assert np.abs(brightness(frames) - levels([0, 4, 7, 11])).max() < 6


def test_variable_frame_rates_are_sampled_by_time_not_by_index(awkward_clips):
    # Frames at 0, .05, .2, .25, .45, .5, .6, .65, .9, .95, 1.05, 1.15 s: the frames on
    # display at 0, .383, .767 and 1.15 s are the 1st, 4th, 8th and 12th.
    frames = decode_frames(clip_file(awkward_clips, "c09"), 4, 16).frames
    assert np.abs(brightness(frames) - levels([0, 3, 7, 11])).max() < 6


def test_a_late_first_timestamp_keeps_the_first_and_last_frames(awkward_clips):
    frames = decode_frames(clip_file(awkward_clips, "c13"), 3, 16).frames
    assert np.abs(brightness(frames) - levels([0, 5.5, 11])).max() < 12
    assert np.abs(brightness(frames)[[0, 2]] - levels([0, 11])).max() < 6


def test_rotated_clips_come_out_upright(awkward_clips):
    # Stored landscape with its red quarter top left and a 90-degree counter-clockwise
    # display rotation: shown upright, the red quarter is bottom left.
    frame = decode_frames(clip_file(awkward_clips, "c10"), 2, 16).frames[0].astype(int)
    red = (frame[..., 0] > 180) & (frame[..., 1] < 80)
    assert red[10:, :6].all() and not red[:6].any() and not red[:, 10:].any()


def test_audio_starting_after_the_video_is_padded_with_silence(tmp_path):
    shifted = write_clip(tmp_path / "shifted.mkv", "libx264", "aac", audio_delay=0.25)
    padded = decode_audio(shifted, 16000)
    lead = int(np.argmax(np.abs(padded) > 0.05))
    assert abs(lead - 0.25 * 16000) < 0.03 * 16000
    assert np.abs(padded[: int(0.2 * 16000)]).max() < 1e-3


def test_stereo_48k_and_separate_flac_are_mixed_down_and_resampled(awkward_clips):
    for clip in ("c02", "c07"):
        media = find_clip_media(awkward_clips, VIDEO_ID, clip)
        samples = decode_audio(media.audio, 16000)
        assert samples.ndim == 1 and abs(len(samples) / 16000 - 1.2) < 0.1, clip
        spectrum = np.abs(np.fft.rfft(samples[:16000]))
        assert abs(np.argmax(spectrum) - 220) <= 2, clip


@pytest.mark.parametrize(("name", "content"), [
    ("a.srt", ("1\n00:00:00,000 --> 00:00:01,000\n<i>Hello</i> there\n\n2\n00:00:01,000 --> "
              "00:00:02,000\n{\\an8}general   kenobi\n")),
    ("a.vtt", ("\ufeffWEBVTT\n\nNOTE a remark\nnot spoken\n\nintro\n00:00.000 --> 00:01.000 align:start\n"
              "<v Ann>Hello</v> there\n\n00:01.000 --> 00:02.000\ngeneral kenobi\n")),
])
def test_subtitle_cues_are_joined_without_numbers_timings_or_markup(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert read_subtitle(path) == "Hello there general kenobi"


@pytest.mark.parametrize("tokenizer", ["word", "minilm"])  # MiniLM gives "" its [CLS] and [SEP]
def test_empty_transcripts_mask_text_in_feature_tables_too(tmp_path, tokenizer):
    rows = [{"video_id": "v", "clip_id": str(i), "text": "" if i == 1 else f"word{i} good",
             "label": 0.5, "mode": ("train", "valid", "test")[i % 3]} for i in range(6)]
    pd.DataFrame(rows).to_csv(tmp_path / "label.csv", index=False)
    pd.DataFrame([{"video_id": "v", "clip_id": str(i), **{f"f{j}": float(i + j) for j in range(3)}}
                  for i in range(6)]).to_csv(tmp_path / "audio.csv", index=False)
    source = FeatureTableSource(str(tmp_path), tables={"audio": "audio.csv"}, tokenizer=tokenizer)
    prepared = prepare(source, tmp_path / "cache")
    assert prepared.missing == {"text": ["v$_$1"], "audio": []}


def test_scoring_prepares_each_clip_exactly_as_training_did(awkward_clips, awkward_prepared):
    source, prepared = awkward_prepared
    settings = preprocessing_settings(source, prepared.spec)
    preprocessor = Preprocessor(json.loads(json.dumps(settings)), prepared.path)
    table = pd.read_csv(awkward_clips / "label.csv", dtype=str, keep_default_na=False)
    rows = {r["id"]: r for split in prepared.splits.values() for r in split}
    for row in table.to_dict("records"):
        media = find_clip_media(awkward_clips, VIDEO_ID, row["clip_id"], row["media"])
        clip = Clip(id=make_id(VIDEO_ID, row["clip_id"]), video=str(media.video),
                    audio=str(media.audio), text=row["text"])
        scored = preprocessor.prepare(clip).row
        trained = rows[clip.id]
        for modality in ("text", "audio", "video"):
            assert scored[f"{modality}_present"] == trained[f"{modality}_present"], (clip.id, modality)
            if trained[f"{modality}_present"]:
                assert np.array_equal(np.asarray(scored[modality], dtype=np.float32),
                                      np.asarray(trained[modality], dtype=np.float32)), (clip.id, modality)


def test_a_missing_clip_file_is_named(awkward_clips, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(awkward_clips, root)
    clip_file(root, "c01").unlink()
    prepared = prepare(RawClipSource(str(root), frames=2, frame_size=8), tmp_path / "cache")
    lines = [p for p in prepared.problems if "c01" in p]
    assert len(lines) == 2 and all("no " in p and "file (looked for .mp4" in p for p in lines)


def tiny_speech_model(folder):
    """A randomly initialised CTC speech model whose output is always the letter "a"."""
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    folder.mkdir(parents=True)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "a": 5, "b": 6}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=False)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    torch.manual_seed(0)
    config = Wav2Vec2Config(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8),
                            num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, pad_token_id=0)
    model = Wav2Vec2ForCTC(config)
    with torch.no_grad():
        model.lm_head.bias.zero_()
        model.lm_head.bias[vocab["a"]] = 100.0
    model.save_pretrained(folder)
    return folder


def test_clips_without_any_transcript_are_transcribed_by_a_local_speech_model(awkward_clips, tmp_path):
    model = tiny_speech_model(tmp_path / "asr")
    source = RawClipSource(str(awkward_clips), frames=2, frame_size=8, asr=str(model))
    prepared = prepare(source, tmp_path / "cache")
    rows = {r["id"]: r for split in prepared.splits.values() for r in split}
    heard = rows[make_id(VIDEO_ID, "c12")]
    assert heard["transcript"] == "a" and heard["text_present"]
    assert prepared.notes[make_id(VIDEO_ID, "c12")]["transcript"] == "asr"
    assert rows[make_id(VIDEO_ID, "c11")]["transcript"] == AWKWARD_SUBTITLE_TEXT
    assert prepared.summary["transcript"] == {"label.csv": 12, "subtitle": 1, "asr": 1}
    assert prepared.summary["missing"]["text"] == 0
    with pytest.raises(ConfigError, match="asr: .*not a folder"):
        RawClipSource(str(awkward_clips), asr=str(tmp_path / "nowhere"))


@pytest.mark.parametrize(("codec", "name"), [("libx264", "gop.mp4"), ("mpeg4", "gop.avi"), ("libvpx", "gop.webm")])
def test_seeking_between_keyframes_gives_the_frames_a_full_decode_gives(tmp_path, codec, name, monkeypatch):
    import av

    from mmsent.data import media

    path = write_clip(tmp_path / name, codec, None, frames=60, gop=5)
    seeks = []
    original = av.container.InputContainer.seek

    def counting(self, *args, **kwargs):
        seeks.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(av.container.InputContainer, "seek", counting)
    sampled = decode_frames(path, 5, 16).frames
    assert seeks, "groups of pictures without a sampled frame are skipped"
    with av.open(str(path)) as container:
        every = {f.pts: f.to_ndarray(width=16, height=16, format="rgb24") for f in container.decode(video=0)}
    wanted = media.sample_times(sorted(every), 5)
    assert np.array_equal(sampled, np.stack([every[t] for t in wanted]))


def test_packets_without_timestamps_fall_back_to_counting_decoded_frames(awkward_clips, monkeypatch):
    from mmsent.data import media

    path = clip_file(awkward_clips, "c08")
    monkeypatch.setattr(media, "_frame_index", lambda container, stream: ([], []))
    frames = decode_frames(path, 4, 16).frames
    assert np.abs(brightness(frames) - levels([0, 4, 7, 11])).max() < 6
