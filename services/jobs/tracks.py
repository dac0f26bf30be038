"""Per-camera object tracks of a video job: Ultralytics' ByteTrack over the detector's boxes.

The detections are the ones the position estimates carry (class, box in frame pixels,
confidence), so tracking needs no second detection pass. Output is what users of YOLO+SORT
services expect: per camera, per track id, its class and its box in every frame it was seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import numpy as np

from schemas.estimates import Detection

CLASSES = ("head", "tail", "plate")
"""Classes tracked (their index is the tracker's class id)."""

# ByteTrack's own defaults (ultralytics/cfg/trackers/bytetrack.yaml), with a lost-track buffer
# in frames that suits 1-5 fps job streams.
TRACKER_ARGS = SimpleNamespace(
    tracker_type="bytetrack",
    track_high_thresh=0.25,
    track_low_thresh=0.1,
    new_track_thresh=0.25,
    track_buffer=10,
    match_thresh=0.8,
    fuse_score=True,
)


class _Boxes:
    """The Results-like view ByteTrack reads: ``conf``, ``cls``, ``xywh``, boolean indexing."""

    def __init__(self, xywh: np.ndarray, conf: np.ndarray, cls: np.ndarray) -> None:
        self.xywh, self.conf, self.cls = xywh, conf, cls

    def __len__(self) -> int:
        return len(self.conf)

    def __getitem__(self, mask: Any) -> _Boxes:
        return _Boxes(self.xywh[mask], self.conf[mask], self.cls[mask])


@dataclass
class ObjectTrack:
    """One tracked object of one camera."""

    camera_id: str
    track_id: int
    cls: str
    frames: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """One line of ``tracks.jsonl``."""
        return {
            "camera_id": self.camera_id,
            "track_id": self.track_id,
            "class": self.cls,
            "frames": self.frames,
        }


class CameraTracker:
    """ByteTrack for one camera; :meth:`update` once per frame of that camera."""

    def __init__(self, camera_id: str) -> None:
        from ultralytics.trackers.byte_tracker import BYTETracker

        self.camera_id = camera_id
        self._tracker = BYTETracker(TRACKER_ARGS)
        self.tracks: dict[int, ObjectTrack] = {}

    def update(self, seq: int, at: datetime, detections: list[Detection]) -> None:
        """Feed one frame's detections; tracked boxes are added to :attr:`tracks`."""
        known = [d for d in detections if d.cls in CLASSES]
        if known:
            xyxy = np.array([[d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2] for d in known], float)
            xywh = np.column_stack(
                [
                    (xyxy[:, 0] + xyxy[:, 2]) / 2,
                    (xyxy[:, 1] + xyxy[:, 3]) / 2,
                    xyxy[:, 2] - xyxy[:, 0],
                    xyxy[:, 3] - xyxy[:, 1],
                ]
            )
            conf = np.array([d.confidence for d in known], float)
            cls = np.array([CLASSES.index(d.cls) for d in known], float)
        else:
            xywh, conf, cls = np.zeros((0, 4)), np.zeros(0), np.zeros(0)
        rows = self._tracker.update(_Boxes(xywh, conf, cls))
        for row in rows:
            x1, y1, x2, y2, track_id, score, cls_id = (float(v) for v in row[:7])
            tid = int(track_id)
            track = self.tracks.setdefault(
                tid, ObjectTrack(self.camera_id, tid, CLASSES[int(cls_id)])
            )
            track.frames.append(
                {
                    "seq": seq,
                    "at": at.isoformat(),
                    "bbox": [round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1)],
                    "confidence": round(score, 3),
                }
            )
