"""The face front end: the crop holds the face, and scoring crops as training did."""

import json
import sys

import numpy as np
import pandas as pd
import pytest
from clips import write_clip

from mmsent.data import RawClipSource
from mmsent.data.cache import cache_key, prepare
from mmsent.data.faces import FaceCropper
from mmsent.data.media import decode_frames, read_sampled_frames, sample_times
from mmsent.errors import ConfigError
from mmsent.hub.preprocess import Clip, Preprocessor, preprocessing_settings

pytest.importorskip("cv2")
skimage_data = pytest.importorskip("skimage.data")

WIDTH, HEIGHT, FRAMES = 320, 240, 10
FACE = {"detector": "haar", "margin": 0.3}


PHOTO_FACE = (177, 66, 95, 95)  # where the face is in skimage's 512x512 astronaut


def astronaut_layout(index: int, count: int, path: int) -> tuple[float, int, int]:
    """The photograph's scale and top-left corner in frame ``index``: it drifts and
    grows as a speaker leans in (``path`` sets how far)."""
    step = index / max(count - 1, 1)
    return 0.5 + 0.1 * step, int(40 + (15 + 10 * path) * step), int(5 + 5 * step * path)


def true_face(index: int, count: int, path: int) -> tuple[int, int, int, int]:
    scale, x, y = astronaut_layout(index, count, path)
    fx, fy, fw, fh = PHOTO_FACE
    return int(x + fx * scale), int(y + fy * scale), int(np.ceil(fw * scale)), int(np.ceil(fh * scale))


def astronaut_pixels(path: int):
    """Frames of the astronaut photograph drifting and growing over a grey room."""
    import cv2

    photo = skimage_data.astronaut()

    def pixels(index: int, count: int) -> np.ndarray:
        scale, x, y = astronaut_layout(index, count, path)
        side = int(512 * scale)
        image = cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA)
        canvas = np.full((HEIGHT, WIDTH, 3), 90, dtype=np.uint8)
        canvas[y:y + min(side, HEIGHT - y), x:x + min(side, WIDTH - x)] = image[:HEIGHT - y, :WIDTH - x]
        return canvas

    return pixels


def plain_pixels(index: int, count: int) -> np.ndarray:
    return np.full((HEIGHT, WIDTH, 3), 30 + 10 * index, dtype=np.uint8)


@pytest.fixture(scope="module")
def face_clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    rows = []
    for index, split in enumerate(("train", "valid", "test")):
        write_clip(root / "Raw" / "astro" / f"{index}.mp4", "libx264", None, frames=FRAMES,
                   pixels=astronaut_pixels(index), size=(WIDTH, HEIGHT))
        rows.append({"video_id": "astro", "clip_id": str(index), "text": "a face in space",
                     "label": 1.0, "mode": split})
    write_clip(root / "Raw" / "room" / "0.mp4", "libx264", None, frames=FRAMES, pixels=plain_pixels,
               size=(WIDTH, HEIGHT))
    rows.append({"video_id": "room", "clip_id": "0", "text": "nobody here", "label": 0.0, "mode": "train"})
    pd.DataFrame(rows).to_csv(root / "label.csv", index=False)
    return root


def inside(box, crop) -> bool:
    x, y, w, h = box
    cx, cy, side, _ = crop
    return cx <= x and cy <= y and x + w <= cx + side and y + h <= cy + side


def overlap(box, other) -> float:
    x0, y0 = max(box[0], other[0]), max(box[1], other[1])
    x1, y1 = min(box[0] + box[2], other[0] + other[2]), min(box[1] + box[3], other[1] + other[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    return inter / (box[2] * box[3] + other[2] * other[3] - inter)


def test_the_crop_holds_the_detected_face_on_every_sampled_frame(face_clips):
    cropper = FaceCropper(**FACE)
    for index in range(3):
        path = face_clips / "Raw" / "astro" / f"{index}.mp4"
        decoded = decode_frames(path, 6, 32, cropper)
        assert decoded.face_found and decoded.frames.shape == (6, 32, 32, 3)
        frames = read_sampled_frames(path, 6, 32, cropper)
        shown = sample_times(list(range(FRAMES)), 6)  # constant rate: timestamps are indices
        for frame, at in zip(frames, shown, strict=True):
            face = true_face(at, FRAMES, index)
            assert inside(face, decoded.box), (at, face, decoded.box)
            seen = max(cropper.detect(frame), key=lambda box: overlap(box, face), default=None)
            assert seen is not None and overlap(seen, face) > 0.4, (at, seen, face)
            assert inside(seen, decoded.box), (at, seen, decoded.box)
        # The face fills much of the crop, unlike the whole frame shrunk to 32 pixels.
        assert decoded.box[2] < 0.75 * min(frames[0].shape[:2])


def test_training_and_scoring_crop_the_same_faces(face_clips, tmp_path):
    source = RawClipSource(str(face_clips), frames=6, frame_size=32, face=FACE)
    prepared = prepare(source, tmp_path)
    assert prepared.summary["face"] == {"found": 3, "centre crop": 1}
    settings = json.loads(json.dumps(preprocessing_settings(source, prepared.spec)))
    assert settings["video"]["face"] == FaceCropper(**FACE).settings()
    preprocessor = Preprocessor(settings, prepared.path)
    rows = {r["id"]: r for split in prepared.splits.values() for r in split}
    for clip_id, row in rows.items():
        video_id, clip = clip_id.split("$_$")
        scored = preprocessor.prepare(Clip(id=clip_id, video=str(face_clips / "Raw" / video_id / f"{clip}.mp4"),
                                           text=row["transcript"]))
        assert np.array_equal(np.asarray(scored.row["video"]), np.asarray(row["video"])), clip_id
        assert scored.notes["face"] == prepared.notes[clip_id]["face"]


def test_faces_are_part_of_the_cache_fingerprint_and_checked(face_clips):
    plain = RawClipSource(str(face_clips))
    faces = RawClipSource(str(face_clips), face=FACE)
    wider = RawClipSource(str(face_clips), face={**FACE, "margin": 0.5})
    assert len({cache_key(s, "mask") for s in (plain, faces, wider)}) == 3
    with pytest.raises(ConfigError, match="face: unknown key.*'margn'"):
        RawClipSource(str(face_clips), face={"margn": 0.2})
    with pytest.raises(ConfigError, match="face.detector: 'mtcnn'"):
        RawClipSource(str(face_clips), face={"detector": "mtcnn"})


def test_a_missing_opencv_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ConfigError, match=r"mmsent\[faces\]"):
        FaceCropper().detect(np.zeros((48, 64, 3), dtype=np.uint8))
