"""The face front end: one box per clip, so the video encoder sees the speaker, not the room.

The detector is OpenCV's frontal-face Haar cascade, whose weights ship inside the
``opencv-python-headless`` wheel (the ``faces`` extra), so nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mmsent.errors import ConfigError

DETECTORS = ("haar",)
CASCADE_FILE = "haarcascade_frontalface_default.xml"


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ConfigError("data.source.init_args.face needs OpenCV: pip install 'mmsent[faces]' "
                          "(opencv-python-headless, whose wheel ships the face detector's weights)") from None
    return cv2


@dataclass
class FaceCrop:
    """A clip's frames cropped to its face.

    Attributes:
        frames (np.ndarray): ``uint8 (T, size, size, 3)``.
        found (bool): Whether a face was found (else the centre square was taken).
        box (tuple[int, int, int, int]): The crop ``(x, y, side, side)`` in the frames given.
    """

    frames: np.ndarray
    found: bool
    box: tuple[int, int, int, int]


@dataclass
class FaceCropper:
    """Finds the face of a clip and crops every frame to it.

    Args:
        detector (str): ``"haar"``: OpenCV's frontal-face Haar cascade.
        margin (float): Added on each side of the face box, as a fraction of its side.
        min_face (float): The smallest face searched for, as a fraction of the shorter side.
        detect_width (int): Frames are searched and cropped at most this wide, bounding the cost.
        scale_factor (float): The detector's step between searched face sizes.
        min_neighbors (int): Overlapping detections needed to accept a face.

    Raises:
        ConfigError: On an unknown detector or a bad setting, naming the key.
    """

    detector: str = "haar"
    margin: float = 0.25
    min_face: float = 0.1
    detect_width: int = 640
    scale_factor: float = 1.2
    min_neighbors: int = 5

    def __post_init__(self) -> None:
        where = "data.source.init_args.face"
        if self.detector not in DETECTORS:
            raise ConfigError(f"{where}.detector: {self.detector!r} is not one of {DETECTORS}")
        if not 0 <= self.margin <= 2:
            raise ConfigError(f"{where}.margin: {self.margin} is not in [0, 2]")
        if not 0 < self.min_face < 1:
            raise ConfigError(f"{where}.min_face: {self.min_face} is not in (0, 1)")
        if self.detect_width < 32:
            raise ConfigError(f"{where}.detect_width: {self.detect_width} is below 32 pixels")
        self._cascade = None

    @classmethod
    def from_settings(cls, settings: dict | None) -> FaceCropper | None:
        """A cropper from a ``face:`` setting (None or ``{}`` leaves faces off).

        Raises:
            ConfigError: On an unknown key, naming it.
        """
        if not settings:
            return None
        unknown = set(settings) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"data.source.init_args.face: unknown key(s) {sorted(unknown)}; "
                              f"expected some of {sorted(cls.__dataclass_fields__)}")
        return cls(**settings)

    def settings(self) -> dict:
        """dict: Every setting, for the cache fingerprint and the exported model."""
        return asdict(self)

    def __getstate__(self) -> dict:
        # Worker processes load the cascade themselves.
        return {**self.__dict__, "_cascade": None}

    def working_size(self, width: int, height: int, size: int) -> tuple[int, int]:
        """The even size, aspect kept, a frame is converted to for detection and cropping.

        Args:
            width (int): Source width.
            height (int): Source height.
            size (int): The encoder's frame size (the crop must not be smaller).

        Returns:
            tuple[int, int]: Width and height.
        """
        target = min(width, max(self.detect_width, 2 * size))
        scaled = max(2, round(height * target / width / 2) * 2)
        return max(2, target - target % 2), scaled

    def _load(self):
        if self._cascade is None:
            cv2 = _cv2()
            # One thread per preparation worker, as the decoders have.
            cv2.setNumThreads(1)
            path = Path(cv2.data.haarcascades) / CASCADE_FILE
            cascade = cv2.CascadeClassifier(str(path))
            if cascade.empty():
                raise ConfigError(f"{path}: OpenCV's face detector weights are missing or unreadable")
            self._cascade = cascade
        return self._cascade

    def detect(self, frame: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Returns every face the detector sees in an RGB ``frame`` ``uint8 (H, W, 3)``, as
        ``(x, y, width, height)`` boxes, largest first."""
        cv2 = _cv2()
        cascade = self._load()
        gray = cv2.equalizeHist(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
        smallest = max(16, int(self.min_face * min(gray.shape)))
        faces = cascade.detectMultiScale(gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                         minSize=(smallest, smallest))
        boxes = [tuple(int(v) for v in face) for face in faces]
        return sorted(boxes, key=lambda b: -b[2] * b[3])

    def track(self, detections: list[list[tuple[int, int, int, int]]]) -> list[tuple[int, int, int, int]]:
        """Returns the speaker's face through a clip, one box per frame where it was seen, from
        ``detections`` (per frame, its boxes).

        The face seen in most frames anchors it (a misfire shows in few); each other frame
        keeps the box nearest the last kept one within one face size, following drift.
        """
        def centre(box):
            return np.array([box[0] + box[2] / 2, box[1] + box[3] / 2])

        def near(box, other) -> bool:
            return bool(np.linalg.norm(centre(box) - centre(other)) <= max(other[2], other[3]))

        candidates = [(f, box) for f, boxes in enumerate(detections) for box in boxes]
        if not candidates:
            return []
        support = [sum(any(near(other, box) for other in boxes) for boxes in detections)
                   for _, box in candidates]
        start, anchor = candidates[int(np.argmax(support))]
        kept = {start: anchor}
        for order in (range(start + 1, len(detections)), range(start - 1, -1, -1)):
            last = anchor
            for f in order:
                close = [box for box in detections[f] if near(box, last)]
                if close:
                    last = min(close, key=lambda box: np.linalg.norm(centre(box) - centre(last)))
                    kept[f] = last
        return [kept[f] for f in sorted(kept)]

    def clip_box(self, detections: list[list[tuple[int, int, int, int]]], width: int,
                 height: int) -> tuple[tuple[int, int, int, int], bool]:
        """One square crop for the clip from its per-frame detections.

        Args:
            detections (list): Per frame, its boxes ``(x, y, w, h)``.
            width (int): Frame width.
            height (int): Frame height.

        Returns:
            tuple: ``((x, y, side, side), found)``: the square holding the :meth:`track`,
            widened by ``margin`` median face sizes, inside the frame; else the centre square.
        """
        limit = min(width, height)
        track = np.array(self.track(detections), dtype=np.float64)
        if len(track) == 0:
            return ((width - limit) // 2, (height - limit) // 2, limit, limit), False
        typical = np.median(np.maximum(track[:, 2], track[:, 3]))
        left, top = track[:, 0].min(), track[:, 1].min()
        right, bottom = (track[:, 0] + track[:, 2]).max(), (track[:, 1] + track[:, 3]).max()
        side = round(min(max(right - left, bottom - top) + 2 * self.margin * typical, limit))
        x = round(np.clip((left + right - side) / 2, 0, width - side))
        y = round(np.clip((top + bottom - side) / 2, 0, height - side))
        return (x, y, side, side), True

    def crop(self, frames: list[np.ndarray], size: int) -> FaceCrop:
        """Returns a clip's ``frames`` (``uint8 (H, W, 3)``) cropped to its face and scaled to
        ``size x size``, with whether a face was found and the box."""
        cv2 = _cv2()
        height, width = frames[0].shape[:2]
        box, found = self.clip_box([self.detect(f) for f in frames], width, height)
        x, y, side, _ = box
        out = np.stack([cv2.resize(np.ascontiguousarray(f[y:y + side, x:x + side]), (size, size),
                                   interpolation=cv2.INTER_AREA) for f in frames])
        return FaceCrop(out, found, box)
