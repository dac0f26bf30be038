"""OpenCV/FFmpeg adapter: open a camera URL and read decoded frames, with timeouts.

RTSP is read over TCP (interleaved) unless ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` says otherwise:
lost UDP packets smear H.264 frames, and TCP also passes firewalls. ``file://`` sources are
paced to their own frame rate and loop at the end, so a recorded file behaves like a camera.
"""

from __future__ import annotations

import os
import time
from urllib.parse import unquote, urlparse

import cv2
import numpy as np

from schemas.facility import redact_url
from services.runtime.decimation import source_is_live
from services.runtime.frame_outlet import Image

# FFmpeg reads this when a capture is opened; set before the first open.
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")


class StreamError(RuntimeError):
    """The stream could not be opened or read; the message names the URL and the cause."""


class StreamReader:
    """One open camera stream. Not thread-safe: one reader thread owns it."""

    def __init__(
        self, url: str, open_timeout_s: float, read_timeout_s: float, loop_files: bool = True
    ) -> None:
        self.url = url
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.loop_files = loop_files
        self.live = source_is_live(url)
        self._cap: cv2.VideoCapture | None = None
        self._file_period = 0.0
        self._next_file_frame = 0.0

    def _target(self) -> str:
        if self.live:
            return self.url
        path = unquote(urlparse(self.url).path)
        if not os.path.isfile(path):
            raise StreamError(f"{self.url}: file {path} does not exist; fix the camera source")
        return path

    def open(self) -> None:
        """Open the stream; raises :class:`StreamError` saying why it failed."""
        self.close()
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(self.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(self.read_timeout_s * 1000),
        ]
        cap = cv2.VideoCapture(self._target(), cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            raise StreamError(
                f"{redact_url(self.url)}: cannot open stream (unreachable, refused or not a video)"
            )
        self._cap = cap
        if not self.live:
            fps = cap.get(cv2.CAP_PROP_FPS)
            # Files without a usable rate are played at a typical camera rate.
            self._file_period = 1.0 / fps if 0 < fps <= 240 else 1.0 / 25
            self._next_file_frame = time.monotonic()

    def grab(self) -> bool:
        """Take the next frame off the stream (decoded, not yet converted to BGR); False when
        the stream failed, timed out or ended. A camera sends more frames than are kept: only
        the kept ones need :meth:`retrieve`, which saves the colour conversion of the rest."""
        if self._cap is None:
            return False
        if not self.live:
            self._pace_file()
        ok = self._cap.grab()
        if not ok and not self.live and self.loop_files:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok = self._cap.grab()
        return bool(ok)

    def retrieve(self) -> Image | None:
        """The frame last grabbed, as BGR; None if it cannot be converted."""
        if self._cap is None:
            return None
        ok, frame = self._cap.retrieve()
        if not ok or frame is None:
            return None
        return np.asarray(frame, dtype=np.uint8)

    def _pace_file(self) -> None:
        now = time.monotonic()
        if self._next_file_frame > now:
            time.sleep(self._next_file_frame - now)
        # Fall behind by more than a frame (slow disk, busy CPU): skip ahead, don't burst.
        self._next_file_frame = max(self._next_file_frame + self._file_period, now)

    def close(self) -> None:
        """Release the stream (safe to call twice)."""
        if self._cap is not None:
            self._cap.release()
            self._cap = None
