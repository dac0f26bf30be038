"""Decoded camera frames: the claim-check reference together with its pixels.

Pure (OpenCV + numpy, no I/O clients), so estimator cores can take ``DecodedFrame`` values and
return :class:`Rejected` for a frame they cannot use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
from numpy.typing import NDArray

from schemas.base import Message
from schemas.estimates import BoundingBox, Detection
from schemas.frames import FrameRef

Image = NDArray[np.uint8]
"""An H x W x 3 BGR image (OpenCV's layout)."""


class FrameDecodeError(ValueError):
    """The stored object is not the frame its reference describes; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Rejected(NamedTuple):
    """A handler's verdict that a frame cannot be processed; the ref is dead-lettered."""

    reason: str


@dataclass(frozen=True)
class DecodedFrame:
    """A frame reference and its decoded BGR pixels (possibly decoded at reduced size)."""

    ref: FrameRef
    image: Image

    @property
    def scale(self) -> tuple[float, float]:
        """Factors from image pixels to the frame's full-resolution pixels (x, y)."""
        h, w = self.image.shape[:2]
        return self.ref.width / w, self.ref.height / h


def to_frame_pixels(detections: list[Detection], scale: tuple[float, float]) -> list[Detection]:
    """Detections on an image decoded at reduced size (``DecodedFrame.scale``), in the frame's
    full-size pixels: the pixels estimates are published in."""
    sx, sy = scale
    if sx == 1 and sy == 1:
        return detections
    return [
        d.model_copy(
            update={
                "bbox": BoundingBox(
                    x1=d.bbox.x1 * sx, y1=d.bbox.y1 * sy, x2=d.bbox.x2 * sx, y2=d.bbox.y2 * sy
                )
            }
        )
        for d in detections
    ]


def to_image_pixels(detections: list[Detection], scale: tuple[float, float]) -> list[Detection]:
    """Detections in the frame's full-size pixels, on an image decoded at ``scale``."""
    return to_frame_pixels(detections, (1 / scale[0], 1 / scale[1]))


REDUCED_DECODE = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}
"""OpenCV decode flag for each reduction factor."""


def decode_reduction(width: int, height: int, needed_px: int | None) -> int:
    """The largest JPEG decode reduction (1, 2 or 4) that keeps the long side >= ``needed_px``.

    A detector that resizes its input to ``needed_px`` loses nothing when the frame is decoded
    at a fraction of its size, and decoding and resizing fewer pixels is cheaper.
    """
    if needed_px is None:
        return 1
    long_side = max(width, height)
    return max(r for r in REDUCED_DECODE if r == 1 or long_side / r >= needed_px)


def decode_frame(
    ref: FrameRef, data: bytes, verify_sha256: bool = True, reduction: int = 1
) -> DecodedFrame:
    """Check ``data`` against ``ref`` (size, SHA-256) and decode it (at 1/``reduction`` size).

    Raises :class:`FrameDecodeError` naming the mismatch, so the caller can dead-letter the
    reference with a useful reason.
    """
    if len(data) != ref.size:
        raise FrameDecodeError(
            f"object {ref.bucket}/{ref.key} has {len(data)} bytes, the reference says {ref.size}"
        )
    if verify_sha256 and hashlib.sha256(data).hexdigest() != ref.sha256:
        raise FrameDecodeError(f"object {ref.bucket}/{ref.key} does not match its sha256")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), REDUCED_DECODE[reduction])
    if image is None:
        raise FrameDecodeError(f"object {ref.bucket}/{ref.key} is not a decodable image")
    return DecodedFrame(ref=ref, image=np.asarray(image, dtype=np.uint8))


FrameOutcome = Sequence[Message] | Rejected
"""What a handler makes of one frame: the messages to publish, or why it was rejected."""
