"""Where every camera's frames leave for the aggregator: encode, number, queue, send.

RTSP capture (:class:`~services.capture.service.CaptureService`) and browser cameras
(:mod:`services.dashboard.webrtc`) both hand decoded images to a :class:`FrameOutlet`, so a
frame from either reaches the aggregator on the same ZeroMQ transport, with the same header,
sequence numbering and metrics; nothing downstream can tell them apart.

The producer never waits for the network and the sender thread never waits for the camera:
they meet in a small newest-wins :class:`FrameQueue`, so an absent or slow aggregator costs
dropped (and counted) frames, never memory or a stalled camera connection.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

import cv2
import numpy as np
import numpy.typing as npt
from prometheus_client import Counter, Gauge

from schemas.facility import Camera
from services.runtime.decimation import SequenceNumbers
from services.runtime.frame_queue import FrameQueue
from services.runtime.frame_transport import FrameSender
from services.runtime.frame_wire import EncodedFrame, FrameHeader

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]
"""A decoded BGR frame."""

FRAMES_READ = Counter(
    "depotwatch_capture_frames_read_total", "Frames decoded from the stream", ["camera_id"]
)
FRAMES_IN = Counter(
    "depotwatch_capture_frames_in_total", "Frames kept by decimation and encoded", ["camera_id"]
)
FRAMES_OUT = Counter(
    "depotwatch_capture_frames_out_total", "Frames sent to the aggregator", ["camera_id"]
)
FRAMES_DROPPED = Counter(
    "depotwatch_capture_frames_dropped_total",
    "Kept frames never sent (queue full while the aggregator was away or slow)",
    ["camera_id", "reason"],
)
QUEUE_DEPTH = Gauge("depotwatch_capture_queue_depth", "Frames waiting to be sent", ["camera_id"])
LAST_FRAME = Gauge(
    "depotwatch_capture_last_frame_timestamp_seconds",
    "Unix time of the last frame read",
    ["camera_id"],
)


class FrameOutlet:
    """One camera's way to the aggregator: :meth:`put` an image, a thread sends it.

    ``reconnects`` is written by the owner (how often its source was reopened) and travels in
    every frame header.
    """

    def __init__(self, camera: Camera, queue_frames: int) -> None:
        self.camera = camera
        self.queue: FrameQueue[EncodedFrame] = FrameQueue(queue_frames)
        self.sequence = SequenceNumbers()
        self.reconnects = 0
        self._cid = camera.id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for reason in ("queue_full", "shutdown"):
            FRAMES_DROPPED.labels(self._cid, reason)
        QUEUE_DEPTH.labels(self._cid).set(0)

    # -- producer side -------------------------------------------------------------------
    def read(self) -> None:
        """Count one frame decoded from the source (kept or not)."""
        FRAMES_READ.labels(self._cid).inc()
        LAST_FRAME.labels(self._cid).set(time.time())

    def put(self, image: Image, captured_at: datetime | None = None) -> bool:
        """Encode a kept frame and queue it; False when encoding failed (logged)."""
        frame = self.encode(image, captured_at or datetime.now(UTC))
        if frame is None:
            return False
        FRAMES_IN.labels(self._cid).inc()
        dropped = self.queue.put(frame)
        if dropped:
            FRAMES_DROPPED.labels(self._cid, "queue_full").inc(len(dropped))
        QUEUE_DEPTH.labels(self._cid).set(len(self.queue))
        return True

    def encode(self, image: Image, captured_at: datetime) -> EncodedFrame | None:
        """The frame as it goes on the wire: resized to the configured size, JPEG, header."""
        cam = self.camera
        if image.shape[1] != cam.width or image.shape[0] != cam.height:
            # Calibration is in the configured resolution; keep pixels comparable.
            image = np.asarray(
                cv2.resize(image, (cam.width, cam.height), interpolation=cv2.INTER_AREA),
                dtype=np.uint8,
            )
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, cam.jpeg_quality])
        if not ok:
            log.error("JPEG encoding failed", extra={"camera_id": self._cid})
            return None
        header = FrameHeader(
            camera_id=cam.id,
            seq=self.sequence.take(),
            captured_at=captured_at,
            reconnects=self.reconnects,
            width=cam.width,
            height=cam.height,
        )
        return EncodedFrame(header=header, jpeg=buf.tobytes())

    # -- sender side ---------------------------------------------------------------------
    def start(self, endpoint: str, send_hwm: int) -> None:
        """Connect to the aggregator and start the sender thread.

        Raises ValueError (one line) at once when the endpoint is malformed.
        """
        sender = FrameSender(endpoint, send_hwm)
        self._thread = threading.Thread(
            target=self._send_loop, args=(sender,), name=f"send-{self._cid}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Hand what is queued to a reachable aggregator (briefly), then stop the sender."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def _send_loop(self, sender: FrameSender) -> None:
        try:
            while not self._stop.is_set():
                frame = self.queue.get(timeout=0.2)
                if frame is None:
                    continue
                if sender.try_send(frame):
                    FRAMES_OUT.labels(self._cid).inc()
                else:
                    # Aggregator away or busy: keep the frame at the head and retry soon; the
                    # producer keeps filling the queue and the oldest frames fall out.
                    dropped = self.queue.put_front(frame)
                    if dropped:
                        FRAMES_DROPPED.labels(self._cid, "queue_full").inc(len(dropped))
                    self._stop.wait(0.02)
                QUEUE_DEPTH.labels(self._cid).set(len(self.queue))
        finally:
            self._flush(sender, deadline=time.monotonic() + 1.0)
            left = self.queue.drain()
            if left:
                FRAMES_DROPPED.labels(self._cid, "shutdown").inc(len(left))
            QUEUE_DEPTH.labels(self._cid).set(0)
            sender.close()

    def _flush(self, sender: FrameSender, deadline: float) -> None:
        # Shutdown: hand what is queued to a reachable aggregator, but never wait long.
        while time.monotonic() < deadline:
            frame = self.queue.get(timeout=0)
            if frame is None:
                return
            if sender.try_send(frame):
                FRAMES_OUT.labels(self._cid).inc()
            else:
                self.queue.put_front(frame)
                time.sleep(0.02)
